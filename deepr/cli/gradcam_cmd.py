"""deepr gradcam"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_invert_option, add_server_options, ignored_picture_options, integer, number
from .errors import EXIT_USAGE, CLIError, task_errors


def _out_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}") for i in range(count)]


def _gradcam(args: argparse.Namespace) -> int:
    from serving.protocol.preprocessing import load_image
    from serving.tasks.gradcam import LocalGradCAM, ServedGradCAM, overlay

    invert = args.invert or "auto"
    with task_errors(args.url):
        pictures = [load_image(path) for path in args.images]
        model = (
            str(args.local)
            if args.local
            else args.model
            if args.model.endswith("_gradcam")
            else args.model + "_gradcam"
        )
        with LocalGradCAM(args.local) if args.local else ServedGradCAM(model, url=args.url) as cam:
            for note in ignored_picture_options(args, model, cam.preprocess):
                print(note, file=sys.stderr)
            results = cam(pictures, args.class_index, invert, args.framing)
    for path, picture, result, out in zip(args.images, pictures, results, _out_paths(args.out, len(pictures))):
        overlay(picture, result.heatmap, alpha=args.alpha).save(out)
        print(f"{path}: class {result.class_index} ({result.label}) score {result.score:.4f} -> {out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM heatmaps over pictures, from a served (or local) Grad-CAM graph")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--model", help="served model (NAME or NAME_gradcam), exported with `deepr export NAME --gradcam`")
    p.add_argument(
        "--class", dest="class_index", type=integer(0), help="class index to explain (default: each image's top class)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("heatmap.png"), help="overlay PNG (several images: NAME_0.png, ...)"
    )
    p.add_argument(
        "--alpha",
        type=number(minimum=0, maximum=1),
        default=0.8,
        help="heatmap opacity where the heat peaks; it fades with the square of the heat (default: %(default)s)",
    )
    add_invert_option(p)
    add_server_options(p, "Grad-CAM")
    p.set_defaults(run=_run_checked)


def _run_checked(args: argparse.Namespace) -> int:
    if not args.model and not args.local:
        raise CLIError("give --model NAME (served) or --local MODEL.onnx", EXIT_USAGE)
    return _gradcam(args)
