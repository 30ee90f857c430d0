"""deepr classify"""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_server_options, integer
from .errors import task_errors


def _classify(args: argparse.Namespace) -> int:
    from serving.protocol.preprocessing import load_image
    from serving.tasks.classify import classify

    with task_errors(args.url):
        images = [load_image(path) for path in args.images]  # read every file before asking the server
        results = classify(images, args.model, url=args.url, top_k=args.top_k)
    width = max(len(str(p)) for p in args.images)
    for path, predictions in zip(args.images, results):
        ranked = "  ".join(f"{p.label or p.index} ({p.score:.4f})" for p in predictions)
        print(f"{str(path):<{width}}  {ranked}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="top-k classes of images from a served classifier")
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, help="served model name, e.g. mnist_convnet")
    p.add_argument("--top-k", type=integer(1), default=3, help="classes per image (default: %(default)s)")
    add_server_options(p)
    p.set_defaults(run=_classify)
