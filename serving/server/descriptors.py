"""Open files: every connection holds one, and a process past its limit cannot accept, open a
model file or reach a sibling worker, whatever its connection caps say.

Most systems start a process with a soft limit of 1,024 and a hard one far higher; a server
raises its soft limit to the hard one (as nginx's worker_rlimit_nofile and Triton's
containers do). What remains is shared out: the caps on the gRPC and HTTP ports are fitted
under it, leaving room for the models' files, the metrics port and the workers' sockets.
"""

from __future__ import annotations

import dataclasses
import logging
import resource

from serving.server.settings import ServerSettings

__all__ = ["RESERVED_DESCRIPTORS", "raise_open_files_limit", "fit_connection_caps"]

logger = logging.getLogger(__name__)

RESERVED_DESCRIPTORS = 256
"""Descriptors kept apart from client connections: model and config files, shared memory
regions being read, log files, the metrics port's connections, sibling sockets."""
_MOST = 1 << 20
"""Soft limit asked for where the hard one is unlimited (Linux's default nr_open)."""


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _MOST if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # a container's own ceiling below the hard limit
            logger.info("open files: the soft limit stays %d (raising it to %d failed: %s)", soft, wanted, exc)
            return soft
        logger.debug("open files: soft limit raised from %d to %d", soft, wanted)
        soft = wanted
    return soft


def fit_connection_caps(settings: ServerSettings, soft_limit: int) -> ServerSettings:
    """`settings` with max_connections lowered, and a warning, where the caps of the gRPC and
    HTTP ports together would pass the open-files limit (0, no cap, is fitted too)."""
    ports = 2 if settings.http_port >= 0 else 1
    room = max(1, (soft_limit - RESERVED_DESCRIPTORS) // ports)
    if settings.max_connections and settings.max_connections <= room:
        return settings
    asked = f"--max-connections {settings.max_connections}" if settings.max_connections else "no connection cap"
    logger.warning(
        "%s cannot hold: this process may open %d files (ulimit -n; its hard limit too), room for %d connections "
        "on each of %d ports beside %d for the rest. Connections are capped at %d per port; raise the hard limit "
        "(ulimit -Hn, LimitNOFILE=) for more",
        asked,
        soft_limit,
        room,
        ports,
        RESERVED_DESCRIPTORS,
        room,
    )
    return dataclasses.replace(settings, max_connections=room)
