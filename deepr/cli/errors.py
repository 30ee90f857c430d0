"""CLIError: a failure the user can fix, printed as one line with an exit code."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["CLIError", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_NOTHING_FOUND", "task_errors"]

EXIT_FAILURE = 1  # the work failed (server error, training or export failure)
EXIT_USAGE = 2  # the input was wrong (unknown model, unreadable file); argparse uses 2 too
EXIT_NOTHING_FOUND = 3  # the work was done, but a picture held nothing to classify (no digit on the page)


class CLIError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def task_errors(url: str) -> Iterator[None]:
    """How a client command's failures become exits, as the README's table says: what the
    user asked for that the server does not have or take (an unknown model, a tensor of the
    wrong shape: NOT_FOUND, INVALID_ARGUMENT) and the user's own input (a missing file, a
    value out of range) exit 2; a server that fails or cannot be reached exits 1. Both name
    the server."""
    import grpc

    from serving.client import InferenceServerError

    try:
        yield
    except InferenceServerError as exc:
        asked_wrong = exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
        raise CLIError(f"{exc} (server {url})", EXIT_USAGE if asked_wrong else EXIT_FAILURE) from None
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc), EXIT_USAGE) from None
