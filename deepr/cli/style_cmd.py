"""deepr style"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_server_options, integer
from .errors import EXIT_USAGE, CLIError, task_errors


def _style(args: argparse.Namespace) -> int:
    from serving.protocol.preprocessing import load_image
    from serving.tasks.style import LocalStyleLoss, ServedStyleLoss, transfer_style

    if not args.model and not args.local:
        raise CLIError("give --model vgg19_style (served) or --local MODEL.onnx", EXIT_USAGE)
    with task_errors(args.url):
        content, style = load_image(args.content), load_image(args.style_picture)
        with LocalStyleLoss(args.local) if args.local else ServedStyleLoss(args.model, url=args.url) as loss:
            result = transfer_style(
                loss,
                content,
                style,
                iterations=args.iterations,
                on_iteration=lambda i, value: print(
                    f"iteration {i + 1}/{args.iterations}: loss {value:.6g}", flush=True
                ),
            )
    result.picture.save(args.out)
    print(f"loss {result.losses[0]:.6g} -> {result.losses[-1]:.6g}; wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("style", help="neural style transfer: L-BFGS on an exported VGG19 style-loss graph")
    p.add_argument("content", type=Path, help="the picture whose content is kept")
    p.add_argument("style_picture", type=Path, metavar="style", help="the picture whose style is taken")
    p.add_argument("--model", help="served style graph, from `deepr export vgg19 --style` (vgg19_style)")
    p.add_argument(
        "--iterations", type=integer(1), default=20, help="L-BFGS runs of 20 evaluations each (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, default=Path("styled.png"), help="the generated picture (default: %(default)s)")
    add_server_options(p, "style")
    p.set_defaults(run=_style)
