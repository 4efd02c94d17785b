"""JSON-lines logging to stdout, with tokens scrubbed from every line before it is written."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

# Token-shaped values are redacted wherever they appear; exact values registered at run time too,
# in case a token ever stops following the prefix convention.
_TOKEN_SHAPES = re.compile(r"(Bearer\s+\S+|tf[rwkp]_[A-Za-z0-9_\-]+)")
_known_secrets: set[str] = set()


def add_secret(value: str) -> None:
    if value:
        _known_secrets.add(value)


def scrub(_logger: Any, _method: str, rendered: str) -> str:
    for secret in _known_secrets:
        rendered = rendered.replace(secret, "[REDACTED]")
    return _TOKEN_SHAPES.sub("[REDACTED]", rendered)


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    shared: list = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
            scrub,  # on the rendered line, so nothing (not even a traceback) escapes it
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str = "agent") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
