"""How many inference requests the server holds at once, and what the rest are told."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from .errors import Overloaded

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
        self.refused = 0

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
    

    def idle_for(self) -> float:
        """Seconds since the last request left (0 while one is in flight)."""
        return 0.0 if self.inflight else time.monotonic() - self._last_left

    def _refuse(self) -> None:
        self.refused += 1
        self._refused_since_log += 1
        now = time.monotonic()
        if now >= self._next_log:
            logger.warning("overloaded: refused %d inference request(s) with RESOURCE_EXHAUSTED since the last such "
                           "line (%d in flight, --max-inflight %d); the next %g s of refusals are counted in "
                           "nv_inference_request_failure, not logged", self._refused_since_log, self.inflight,
                           self.limit, self._log_interval)
            self._refused_since_log = 0
            self._next_log = now + self._log_interval
