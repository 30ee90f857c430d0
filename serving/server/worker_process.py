"""A worker's bond to its parent: it dies with it and leaves nothing behind.

The parent restarts workers, coordinates their changes and serves the metrics; without it,
workers would go on holding the ports with nothing to restart them, and a new `deepr serve`
would find the ports taken. So each worker asks the kernel for SIGHUP when its parent dies
(Linux's PR_SET_PDEATHSIG, whatever killed the parent, SIGKILL included: the parent "hung
up"), drains on it as on SIGTERM, and removes the sockets' folder, which the parent would
have, once the last worker has left it. A signal of its own tells that death apart from a
SIGTERM sent to one worker, after which the parent starts it again and needs its socket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from serving.server.settings import ServerSettings

__all__ = ["follow_parent", "parent_hung_up", "orphaned", "leave_sockets", "PARENT_GONE"]

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
PARENT_GONE = signal.SIGHUP
"""What the kernel sends a worker when its parent dies."""
_orphaned = False


def follow_parent(parent: int) -> None:
    """Have this process receive PARENT_GONE when process `parent` (its parent) ends; exit
    now if it has already. Until the server's event loop takes the signal over (to drain),
    it ends the process at once: nothing is served yet."""
    signal.signal(PARENT_GONE, _exit_before_serving)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, PARENT_GONE, 0, 0, 0) != 0:
            logger.warning("could not ask to end with the parent: %s", os.strerror(ctypes.get_errno()))
    if parent and os.getppid() != parent:  # it died before the request above was made
        logger.warning("the parent (pid %d) is gone before this worker started: exiting", parent)
        raise SystemExit(0)


def _exit_before_serving(signum: int, frame: FrameType | None) -> None:
    parent_hung_up()
    logger.warning("the parent is gone while this worker was starting: exiting")
    raise SystemExit(0)


def parent_hung_up() -> None:
    """Note that the parent is gone (PARENT_GONE arrived)."""
    global _orphaned
    _orphaned = True


def orphaned() -> bool:
    return _orphaned


def _unix_path(address: str) -> Path | None:
    return Path(address[len("unix:") :]) if address.startswith("unix:") else None


def leave_sockets(settings: ServerSettings) -> None:
    """Remove this worker's socket; and when the parent is gone, its socket and the folder
    too (once the last worker has left it)."""
    sockets = settings.worker_sockets.split(",")
    mine = _unix_path(sockets[settings.worker_index]) if 0 <= settings.worker_index < len(sockets) else None
    if mine is None:
        return
    mine.unlink(missing_ok=True)
    if not orphaned():
        return
    supervisor = _unix_path(settings.worker_supervisor)
    if supervisor is not None:
        supervisor.unlink(missing_ok=True)
    try:
        mine.parent.rmdir()  # fails while a sibling's socket is still there: that sibling removes it
    except OSError:
        pass
