"""deepr classify"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_invert_option, add_server_options, ignored_picture_options, integer
from .errors import EXIT_NOTHING_FOUND, task_errors


def _classify(args: argparse.Namespace) -> int:
    from serving.client import InferenceClient
    from serving.protocol.preprocessing import load_image
    from serving.tasks.classify import answers_logits, classify, served_preprocessing

    invert = args.invert or "auto"
    with task_errors(args.url):
        images = [load_image(path) for path in args.images]  # read every file before asking the server
        with InferenceClient(args.url) as client:
            preprocess = served_preprocessing(args.model, client=client)
            for note in ignored_picture_options(args, args.model, preprocess):
                print(note, file=sys.stderr)
            if answers_logits(client.model_config(args.model)):
                print(f"note: {args.model} answers logits; the scores shown are their softmax", file=sys.stderr)
            results = classify(images, args.model, top_k=args.top_k, client=client, invert=invert, framing=args.framing)
    width = max(len(str(p)) for p in args.images)
    framed = preprocess.framing is not None and args.framing == "auto"
    empty = 0
    for path, image, predictions in zip(args.images, images, results):
        ranked = "  ".join(f"{p.label or p.index} ({p.score:.4f})" for p in predictions)
        inverted = "  [inverted: dark on light]" if preprocess.inverts(image, invert) else ""
        if framed and preprocess.placement(image, invert) is None:
            empty += 1
            print(
                f"{str(path):<{width}}  no digit found (a blank page, or only lines, a box or noise); best guess: {ranked}"
            )
            continue
        print(f"{str(path):<{width}}  {ranked}{inverted}")
    return EXIT_NOTHING_FOUND if empty else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "classify",
        help="top-k classes of images from a served classifier",
        description="Top-k classes of images from a served classifier. For a digit model (framed as MNIST), a page "
        "with no digit on it is said to be one, and the exit status is then 3.",
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument("--model", required=True, help="served model name, e.g. mnist_convnet")
    p.add_argument("--top-k", type=integer(1), default=3, help="classes per image (default: %(default)s)")
    add_invert_option(p)
    add_server_options(p)
    p.set_defaults(run=_classify)
