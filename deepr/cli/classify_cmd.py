"""deepr classify"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.client import DEFAULT_URL

from .errors import EXIT_USAGE, CLIError


def _classify(args: argparse.Namespace) -> int:
    from serving.client import InferenceServerError
    from serving.protocol.preprocessing import load_image
    from serving.tasks.classify import classify

    try:
        images = [load_image(path) for path in args.images]  # read every file before asking the server
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    try:
        results = classify(images, args.model, url=args.url, top_k=args.top_k)
    except InferenceServerError as exc:
        raise CLIError(f"{exc} (server {args.url})") from None
    except ValueError as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
    width = max(len(str(p)) for p in args.images)
    for path, predictions in zip(args.images, results):
        ranked = "  ".join(f"{p.label or p.index} ({p.score:.4f})" for p in predictions)
        print(f"{str(path):<{width}}  {ranked}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="top-k classes of images from a served classifier")
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, help="served model name, e.g. mnist_convnet")
    p.add_argument("--top-k", type=int, default=3, help="classes per image (default: %(default)s)")
    p.add_argument("--url", default=DEFAULT_URL, help="server address (default: %(default)s)")
    p.set_defaults(run=_classify)
