"""structlog JSON logging for every process, with secrets scrubbed before anything is written.

Standard-library loggers (temporalio's, aiohttp's, the workflow logger) go through the same JSON
renderer, and the Temporal context they carry is flattened into ``workflow_id``/``run_id`` keys.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
import temporalio.activity
import temporalio.workflow
from structlog.typing import Processor

_SECRET_KEYS = re.compile(r"(secret|token|password|authorization|api_key|apikey|dsn|database_url|uri)", re.I)
# Values that look like credentials even under an innocent key.
_SECRET_VALUES = re.compile(
    r"(Bearer\s+\S+|tfk_[A-Za-z0-9_\-]+|tfr_[A-Za-z0-9_\-]+|tfw_[A-Za-z0-9_\-]+|postgres(ql)?://[^@\s]*@)"
)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUES.sub("[REDACTED]", value)
    if isinstance(value, dict):
        return {k: ("[REDACTED]" if _SECRET_KEYS.search(str(k)) else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    scrubbed: MutableMapping[str, Any] = _scrub(event_dict)
    return scrubbed


def flatten_temporal_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Lift the ids temporalio attaches to stdlib records (as extras) into top-level keys."""
    for attr in ("temporal_workflow", "temporal_activity"):
        ctx = event_dict.pop(attr, None)
        if isinstance(ctx, dict):
            for key in ("workflow_id", "run_id", "workflow_type", "activity_type", "activity_id", "attempt"):
                if ctx.get(key) is not None:
                    event_dict.setdefault(key, ctx[key])
            if ctx.get("workflow_run_id"):
                event_dict.setdefault("run_id", ctx["workflow_run_id"])
    return event_dict


_configured = False


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    global _configured
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer_chain: list[Processor] = [
        flatten_temporal_context,
        structlog.processors.format_exc_info,
        redact_secrets,
        structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer_chain],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_tenantflow", False):
            root.removeHandler(old)
    handler._tenantflow = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The ids travel as JSON keys; appending them to every message as well is noise.
    temporalio.workflow.logger.workflow_info_on_message = False
    temporalio.activity.logger.activity_info_on_message = False
    for noisy in ("botocore", "urllib3", "aiohttp.access", "temporalio.bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _configured = True


def get_logger(name: str = "tenantflow") -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
