"""Turning external failures into Temporal's retry decisions.

Transient failures raise retryable errors (Temporal backs off and tries again); permanent ones
raise non-retryable ``ApplicationError``s whose type and message end up on the org record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError


def permanent(error_type: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=error_type, non_retryable=True)


def transient(error_type: str, message: str, *, retry_after: float | None = None) -> ApplicationError:
    delay = timedelta(seconds=retry_after) if retry_after else None
    return ApplicationError(message, type=error_type, non_retryable=False, next_retry_delay=delay)


def actor() -> str:
    """Who an audit record names when an activity writes it: the workflow it runs for."""
    try:
        info = activity.info()
    except RuntimeError:
        return "system"
    return f"workflow:{info.workflow_id}"


async def call_in_thread(
    classify: Callable[[Exception], Exception], fn: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> Any:
    """A blocking client call off the event loop, its failure re-raised as ``classify`` maps it."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - classified and re-raised
        mapped = classify(err)
        if mapped is err:
            # Unrecognised: re-raised as it is. `raise err from err` would make the error its own
            # cause, and Temporal's failure converter follows causes until RecursionError.
            raise
        raise mapped from err
