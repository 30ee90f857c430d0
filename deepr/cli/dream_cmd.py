"""deepr dream"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_server_options, integer, number
from .errors import EXIT_USAGE, CLIError, task_errors


def _dream(args: argparse.Namespace) -> int:
    from serving.tasks.dream import LocalDreamLoss, ServedDreamLoss, coefficients_from, dream

    if not args.model and not args.local:
        raise CLIError("give --model inception_v3_dream (served) or --local MODEL.onnx", EXIT_USAGE)
    with task_errors(args.url):
        with LocalDreamLoss(args.local) if args.local else ServedDreamLoss(args.model, url=args.url) as loss:
            result = dream(
                loss,
                args.image,
                coefficients=coefficients_from(args.coefficients, loss.layers),
                octaves=args.octaves,
                octave_scale=args.octave_scale,
                steps=args.steps,
                step=args.step,
                max_loss=args.max_loss,
            )
    for shape, history in zip(result.shapes, result.losses):
        print(f"octave {shape[1]}x{shape[0]}: loss {history[0]:.4g} -> {history[-1]:.4g} in {len(history) - 1} steps")
    result.picture.save(args.out)
    print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dream", help="DeepDream on a picture, from an exported InceptionV3 dream graph")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="served dream graph, from `deepr export inception_v3 --dream` (inception_v3_dream)")
    p.add_argument("--coefficients", help="layer weights, e.g. mixed2=0.2,mixed3=3,mixed4=2,mixed5=1.5 (the default)")
    p.add_argument(
        "--octaves", type=integer(1), default=3, help="picture sizes, each octave-scale smaller (default: %(default)s)"
    )
    p.add_argument(
        "--octave-scale", type=number(minimum=1), default=1.4, help="size ratio between octaves (default: %(default)s)"
    )
    p.add_argument("--steps", type=integer(1), default=20, help="ascent steps per octave (default: %(default)s)")
    p.add_argument(
        "--step", type=number(above=0), default=0.01, help="step size per unit mean gradient (default: %(default)s)"
    )
    p.add_argument(
        "--max-loss",
        type=number(above=0),
        default=10.0,
        help="stop an octave's ascent above this loss (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("dream.png"), help="the dreamt picture (default: %(default)s)")
    add_server_options(p, "dream")
    p.set_defaults(run=_dream)
