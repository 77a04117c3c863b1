"""Server logging: human-readable lines or one JSON object per line, to stderr or a file.

Request lines carry their data as `extra={"fields": {...}}`, so both formats render the
same keys (id, method, route, status, tokens, duration_ms)."""

import json
import logging
import sys
import time

from rfc.runtime.server.config import LogConfig

log = logging.getLogger("rfc.server")


class HumanFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(config: LogConfig) -> None:
    """Called once, at the edge: installs the one handler on the root logger (waitress logs too)."""
    handler = logging.FileHandler(config.file, encoding="utf-8") if config.file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())


def log_request(
    method: str, route: str, status: int, request_id: int | None, tokens: int | None, seconds: float
) -> None:
    log.info(
        "request",
        extra={
            "fields": {
                "id": request_id if request_id is not None else "-",
                "method": method,
                "route": route,
                "status": status,
                "tokens": tokens if tokens is not None else 0,
                "duration_ms": round(seconds * 1000, 1),
            }
        },
    )
