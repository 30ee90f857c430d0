"""The `deepr` command line. Each subcommand lives in its own module and imports
PyTorch only if it needs it, so client commands start fast."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import threading
from typing import NoReturn, Sequence

from . import (
    activations_cmd,
    bench_cmd,
    classify_cmd,
    dream_cmd,
    filters_cmd,
    gradcam_cmd,
    import_cmd,
    repository_cmd,
    sample_cmd,
    serve_cmd,
    style_cmd,
    zoo_cmds,
)
from .errors import CLIError

__all__ = ["main"]

_OWN_LOGGERS = ("deepr", "zoo", "exporters", "serving")


class _Parser(argparse.ArgumentParser):
    """argparse, but an unknown option is named before anything else: with `--modle x` argparse
    would first say that --model is required, blaming the user for the wrong thing."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        unknown = self._unknown_options()
        if unknown:
            known = [o for o in self._option_string_actions if o.startswith("--")]
            hints = []
            for option in unknown:
                close = difflib.get_close_matches(option, known, n=1)
                hints.append(f"{option}" + (f" (did you mean {close[0]}?)" if close else ""))
            message = f"unknown option {', '.join(hints)}"
        super().error(message)

    def _unknown_options(self) -> list[str]:
        given = getattr(self, "_given", [])
        if self._subparsers is not None:  # the top parser: its subcommand's parser names them
            return []
        return [
            token.split("=", 1)[0]
            for token in given
            if token.startswith("--") and token != "--" and token.split("=", 1)[0] not in self._option_string_actions
        ]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="deepr", description="Train, export and serve the Learn deepR model zoo.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (the server logs every request)")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("DEEPR_LOG_FORMAT", "text"),
        help="log lines as text or as one JSON object each, with request fields (env DEEPR_LOG_FORMAT; default text)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (
        zoo_cmds,
        import_cmd,
        serve_cmd,
        classify_cmd,
        repository_cmd,
        gradcam_cmd,
        activations_cmd,
        filters_cmd,
        dream_cmd,
        style_cmd,
        sample_cmd,
        bench_cmd,
    ):
        module.add_commands(sub)
    return parser


_ZOO_PACKAGES = {"torch", "torchvision", "onnxscript", "sklearn", "skimage", "tqdm"}
"""What `pip install deepr` leaves out and `deepr[zoo]` brings: training and exporting."""


def main(argv: Sequence[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():  # Ctrl-C is KeyboardInterrupt again (see deepr._entry)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        from serving.server.logs import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler])
    if not args.verbose:  # deepr's own progress at INFO; other libraries' chatter only when it matters
        for name in _OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        return args.run(args) or 0
    except CLIError as exc:
        print(f"deepr {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in _ZOO_PACKAGES:
            raise
        print(
            f"deepr {args.command}: error: this needs the model zoo's packages ({exc}): pip install 'deepr[zoo]'. "
            "The runtime alone serves, asks and embeds models already exported.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"deepr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped reading (deepr models | head): nothing went wrong here
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 0
