"""deepr filters"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_server_options, integer, number
from .errors import EXIT_USAGE, CLIError, task_errors


def _filters(args: argparse.Namespace) -> int:
    from serving.tasks.filters import FilterGradients, LocalFilterGradients, ServedFilterGradients, ascend, filter_grid

    if not args.model and not args.local:
        raise CLIError("give --model NAME_filters (served) or --local MODEL.onnx", EXIT_USAGE)
    with task_errors(args.url):
        if args.local:
            gradients: FilterGradients = LocalFilterGradients(args.local)
        else:
            model = args.model if args.model.endswith("_filters") else args.model + "_filters"
            gradients = ServedFilterGradients(model, url=args.url)
        with gradients:
            layers = [layer for layer in (args.layers or "").split(",") if layer] or gradients.layers
            args.out.mkdir(parents=True, exist_ok=True)
            for layer in layers:
                result = ascend(gradients, layer, range(args.filters), steps=args.steps, step=args.step, seed=args.seed)
                path = args.out / f"{layer}.png"
                filter_grid(result.pictures, columns=args.columns).save(path)
                gains = result.losses[-1] - result.losses[0]
                print(
                    f"{layer}: filters 0..{args.filters - 1}, mean activation {result.losses[0].mean():.4g} -> "
                    f"{result.losses[-1].mean():.4g} (rose for {(gains > 0).sum()} of {args.filters}) -> {path}"
                )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filters", help="filter patterns by gradient ascent in input space, as PNG grids per layer")
    p.add_argument("--model", help="served filter graph (NAME or NAME_filters), from `deepr export NAME --filters`")
    p.add_argument("--layers", help="comma-separated layers (default: every layer of the graph)")
    p.add_argument(
        "--filters", type=integer(1), default=64, help="filters per layer, from 0 (default: %(default)s, an 8x8 grid)"
    )
    p.add_argument("--steps", type=integer(1), default=40, help="ascent steps (default: %(default)s)")
    p.add_argument(
        "--step",
        type=number(above=0),
        default=0.05,
        help="step size in input units per unit-RMS gradient (default: %(default)s)",
    )
    p.add_argument("--seed", type=integer(0), default=0, help="seed of the starting noise (default: %(default)s)")
    p.add_argument("--columns", type=integer(1), default=8, help="patterns per grid row (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, default=Path("filters"), help="folder for LAYER.png files (default: %(default)s)"
    )
    add_server_options(p, "filter")
    p.set_defaults(run=_filters)
