"""Structured logs: one JSON object per line, with the request's fields when it has them."""

from __future__ import annotations

import json
import logging
import time

__all__ = ["JsonFormatter", "REQUEST_FIELDS"]

REQUEST_FIELDS = ("request_id", "model", "version", "status", "duration_ms", "batch")
"""Fields the server attaches to request log records (logging's `extra`)."""


class JsonFormatter(logging.Formatter):
    """`{"time": ..., "level": ..., "logger": ..., "message": ..., "request_id": ...}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in REQUEST_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
