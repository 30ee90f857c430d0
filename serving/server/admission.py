"""How many inference requests the server holds at once, and what the rest are told."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from serving.protocol.errors import Overloaded

__all__ = ["InflightLimit"]

logger = logging.getLogger(__name__)


class InflightLimit:
    """Admits up to `limit` requests at a time; the next one is refused at once with
    RESOURCE_EXHAUSTED, so that a burst is answered quickly instead of piling up in memory
    and time. Refusals are logged once per `log_interval` seconds with how many there were.
    Used from the event loop thread only, so plain counters suffice."""

    def __init__(self, limit: int, log_interval: float = 10.0) -> None:
        self.limit = limit
        self.inflight = 0
        self.admitted = 0
        """Requests admitted so far: the memory trimmer watches it for new work."""
        self._log_interval = log_interval
        self._refused_since_log = 0
        self._next_log = 0.0

    @contextlib.contextmanager
    def admit(self, what: str) -> Iterator[None]:
        if self.inflight >= self.limit:
            self._refuse()
            raise Overloaded(
                f"{what}: the server holds {self.inflight} inference requests, its limit (--max-inflight "
                f"{self.limit}); retry after a backoff, or send fewer at once"
            )
        self.inflight += 1
        self.admitted += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def _refuse(self) -> None:
        self._refused_since_log += 1
        now = time.monotonic()
        if now >= self._next_log:
            logger.warning(
                "overloaded: refused %d inference request(s) with RESOURCE_EXHAUSTED since the last such "
                "line (%d in flight, --max-inflight %d); the next %g s of refusals are counted in "
                "nv_inference_request_failure, not logged",
                self._refused_since_log,
                self.inflight,
                self.limit,
                self._log_interval,
            )
            self._refused_since_log = 0
            self._next_log = now + self._log_interval
