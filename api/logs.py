"""Structured logs: one JSON object a line, with the request id, tenant, user and stream id."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from flask import g, has_request_context

_CONTEXT_FIELDS = ("request_id", "tenant_id", "user_id", "stream_id")


class ContextFilter(logging.Filter):
    """Copy the request's identifiers onto every record logged while it runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            for field in _CONTEXT_FIELDS:
                if not hasattr(record, field):
                    setattr(record, field, g.get(field))
        return True


def _clean(value: Any) -> Any:
    # Log lines must stay one line: control characters from clients are escaped by json.dumps,
    # and in text mode we replace them so a crafted value cannot forge a log line.
    if isinstance(value, str):
        return value.replace("\r", "\\r").replace("\n", "\\n").replace("\x00", "\\0")
    return value


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]  # typeshed's Formatter.converter is narrower than the stdlib's own use

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in _CONTEXT_FIELDS + ("event", "status", "duration_ms", "method", "path"):
            value = getattr(record, field, None)
            if value is not None:
                payload[field] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.msg = _clean(record.getMessage())
        record.args = ()
        ids = " ".join(
            f"{field}={getattr(record, field)}"
            for field in _CONTEXT_FIELDS
            if getattr(record, field, None)
        )
        return super().format(record) + (f" [{ids}]" if ids else "")


def configure_logging(level: str, fmt: str) -> None:
    """Install one handler on the ``streamgate`` logger tree (idempotent)."""
    root = logging.getLogger("streamgate")
    root.setLevel(level.upper())
    root.propagate = False
    for handler in list(root.handlers):
        if getattr(handler, "_streamgate", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._streamgate = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root.addHandler(handler)
