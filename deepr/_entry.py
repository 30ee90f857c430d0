"""The `deepr` command's entry point, before the commands' modules load."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("deepr: interrupted\n")
    os._exit(130)


def run() -> int:
    """Ctrl-C while the commands' modules load (a second or more: numpy, grpc, onnxruntime)
    ends the process quietly with 130, not with a traceback from inside an import; once the
    command runs, deepr.cli.main hands SIGINT back to KeyboardInterrupt."""
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    from deepr.cli import main

    return main()
