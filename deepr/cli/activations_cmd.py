"""deepr activations"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_server_options, integer
from .errors import EXIT_USAGE, CLIError, task_errors


def _activations(args: argparse.Namespace) -> int:
    from serving.protocol.preprocessing import load_image
    from serving.tasks.activation_grid import activation_grid
    from serving.tasks.features import FeatureExtractor, LocalFeatureExtractor, ServedFeatureExtractor

    if not args.model and not args.local:
        raise CLIError("give --model NAME_features (served) or --local MODEL.onnx", EXIT_USAGE)
    layers = [layer for layer in (args.layers or "").split(",") if layer] or None
    with task_errors(args.url):
        picture = load_image(args.image)
        if args.local:
            extractor: FeatureExtractor = LocalFeatureExtractor(args.local)
        else:
            model = args.model if args.model.endswith("_features") else args.model + "_features"
            extractor = ServedFeatureExtractor(model, url=args.url)
        with extractor:
            maps = extractor([picture], layers=layers or extractor.layers[: args.first])
    args.out.mkdir(parents=True, exist_ok=True)
    for layer, batch in maps.items():
        if batch.ndim != 4:
            print(f"{layer}: shape {batch.shape[1:]} is not a feature map; skipped")
            continue
        path = args.out / f"{layer}.png"
        activation_grid(batch[0], columns=args.columns).save(path)
        print(f"{layer}: {batch.shape[1]} channels of {batch.shape[2]}x{batch.shape[3]} -> {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("activations", help="every channel of a convnet's layers for one picture, as PNG grids")
    p.add_argument("image", type=Path)
    p.add_argument("--model", help="served feature graph (NAME or NAME_features), from `deepr export NAME --features`")
    p.add_argument("--layers", help="comma-separated layers (default: the first --first layers)")
    p.add_argument(
        "--first", type=integer(1), default=8, help="how many layers when --layers is not given (default: %(default)s)"
    )
    p.add_argument("--columns", type=integer(1), default=16, help="channels per grid row (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=Path("activations"), help="folder for LAYER.png files (default: %(default)s)"
    )
    add_server_options(p, "feature")
    p.set_defaults(run=_activations)
