"""deepr sample"""

from __future__ import annotations

import argparse
import sys

from .arguments import add_server_options, integer, number
from .errors import task_errors


def _sample(args: argparse.Namespace) -> int:
    from serving.tasks.text_generation import generate_in_one_call, sample_text

    base = args.model.removesuffix("_step").removesuffix("_generate")
    one_call = not args.stream and args.graph == "loop"

    def show(ch: str) -> None:
        sys.stdout.write(ch)
        sys.stdout.flush()

    with task_errors(args.url):
        if one_call:
            text = generate_in_one_call(
                args.prompt,
                model=base + "_generate",
                url=args.url,
                local=args.local,
                length=args.length,
                temperature=args.temperature,
                top_k=args.top_k,
                seed=args.seed,
            )
        else:
            text = sample_text(
                args.prompt,
                model=base + "_step",
                url=args.url,
                local=args.local,
                length=args.length,
                temperature=args.temperature,
                top_k=args.top_k,
                seed=args.seed,
                on_char=show if args.stream else None,
                stream=args.stream,
            )
    print("" if args.stream else text)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate text from a character model (loop or step graph), with temperature")
    p.add_argument(
        "--model",
        default="char_lstm",
        help="served model: NAME (uses NAME_generate or NAME_step; default: %(default)s)",
    )
    p.add_argument(
        "--graph",
        choices=("loop", "step"),
        default="loop",
        help="loop: the whole text in one call (NAME_generate); step: one call per character (NAME_step)",
    )
    p.add_argument(
        "--prompt", required=True, help="text the model reads first (lower-cased; unknown characters dropped)"
    )
    p.add_argument("--length", type=integer(1), default=400, help="characters to generate (default: %(default)s)")
    p.add_argument(
        "--temperature",
        type=number(above=0),
        default=1.0,
        help="> 0; low is conservative, high is inventive (default: %(default)s)",
    )
    p.add_argument("--top-k", type=integer(1), help="sample only among the k likeliest characters")
    p.add_argument("--seed", type=integer(0), help="same seed, same text")
    p.add_argument(
        "--stream", action="store_true", help="print characters as they are made; steps go over one gRPC stream"
    )
    add_server_options(p, "graph (loop or step, per --graph)")
    p.set_defaults(run=_sample)
