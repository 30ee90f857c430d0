"""deepr sample"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import textwrap

from .arguments import add_server_options, comma_list, integer, number
from .errors import task_errors


def _stop_at_once(signum: int, frame: object) -> None:
    """Ctrl-C while text streams in: what was printed stays, the process ends with 130.
    KeyboardInterrupt raised wherever the main thread happens to be (inside grpc's stream,
    between a lock's acquire and release) left a traceback or a hang; the connection goes
    with the process instead, and the server ends the stream."""
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
        sys.stderr.write("deepr sample: interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _sample(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, _stop_at_once)  # before onnxruntime and grpc load, too
    from serving.tasks.text_generation import generate_in_one_call, sample_text

    base = args.model.removesuffix("_step").removesuffix("_generate")
    prompts = args.prompt
    # every prompt at every temperature, as the rows of one call
    rows = [(prompt, temperature) for prompt in prompts for temperature in args.temperature]
    if args.stream and len(rows) > 1:
        print(
            "deepr sample: error: --stream prints one text as it is made; give one --prompt and one --temperature",
            file=sys.stderr,
        )
        return 2

    def show(ch: str) -> None:
        sys.stdout.write(ch)
        sys.stdout.flush()

    settings = {
        "prompt": [p for p, _ in rows],
        "url": args.url,
        "local": args.local,
        "length": args.length,
        "temperature": [t for _, t in rows],
        "top_k": args.top_k,
        "seed": args.seed,
    }
    with task_errors(args.url):
        if not args.stream and args.graph == "loop":
            texts = generate_in_one_call(model=base + "_generate", **settings)
        else:
            texts = sample_text(
                model=base + "_step",
                on_char=show if args.stream else None,
                stream=args.stream,
                **settings,
            )
    if args.stream:
        print()
    elif len(rows) == 1:
        print(texts[0])
    else:
        headings = [f"T={t:g}" + (f" after {p!r}" if len(prompts) > 1 else "") for p, t in rows]
        print(side_by_side(headings, list(texts)))
    return 0


def side_by_side(headings: list[str], texts: list[str], width: int | None = None, gap: int = 3) -> str:
    """Texts in columns under their headings, as many columns as fit (at least 24 characters
    wide each), the rest in further bands below."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    per_band = max(1, min(len(texts), (width + gap) // (24 + gap)))
    column = (width + gap) // per_band - gap
    bands = []
    for start in range(0, len(texts), per_band):
        cells = [
            [heading[:column], "-" * min(column, len(heading))]
            + [line for part in text.split("\n") for line in (textwrap.wrap(part, column) or [""])]
            for heading, text in zip(headings[start : start + per_band], texts[start : start + per_band])
        ]
        height = max(map(len, cells))
        lines = [
            (" " * gap).join(cell[i].ljust(column) if i < len(cell) else " " * column for cell in cells).rstrip()
            for i in range(height)
        ]
        bands.append("\n".join(lines))
    return "\n\n".join(bands)


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
        help="loop: every text in one call (NAME_generate); step: one call per character (NAME_step)",
    )
    p.add_argument(
        "--prompt",
        required=True,
        action="append",
        help="text the model reads first (lower-cased; unknown characters dropped); repeat for several",
    )
    p.add_argument("--length", type=integer(1), default=400, help="characters to generate (default: %(default)s)")
    p.add_argument(
        "--temperature",
        type=comma_list(number(above=0)),
        default=[1.0],
        help="> 0, or several: 0.2,0.5,1.0,1.2 (one text each, side by side); low is conservative, "
        "high is inventive (default: 1.0)",
    )
    p.add_argument("--top-k", type=integer(1), help="sample only among the k likeliest characters")
    p.add_argument("--seed", type=integer(0), help="same seed, same text (for every row alone or together)")
    p.add_argument(
        "--stream", action="store_true", help="print characters as they are made; steps go over one gRPC stream"
    )
    add_server_options(p, "graph (loop or step, per --graph)")
    p.set_defaults(run=_sample)
