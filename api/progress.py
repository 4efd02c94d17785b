"""Live progress of a running workflow, with at most one progress query in flight per workflow.

Clients poll the same org or workspace in tight loops. Every poll that arrives while a query of
that workflow is in flight awaits the same query instead of sending its own, so the load on the
Temporal server and worker stays flat in the number of pollers, and one uncached run never gets
concurrent queries (the SDK drops those instead of replaying once for all of them). The answer a
poll gets is at most one query round trip old.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import structlog
from prometheus_client import Counter
from temporalio.client import Client

from domain.operations import PROGRESS_QUERY, Progress

log = structlog.get_logger("tenantflow.api")


class ProgressQueries:
    def __init__(self, client: Client, timeout_seconds: float, polls: Counter):
        """``polls``: a counter labelled ``outcome``: ``sent`` (a new query), ``joined`` (shared
        one in flight) or ``unavailable`` (answered from the record instead)."""
        self._client = client
        self._timeout = timeout_seconds
        self._polls = polls
        self._in_flight: dict[str, asyncio.Task[Progress]] = {}

    async def get(self, workflow_id: str) -> Progress | None:
        """The workflow's answer to its ``progress`` query (every tenantflow operation has one);
        None when it cannot answer within the timeout (no worker, closed run, ...): the database
        record is then the caller's answer."""
        task = self._in_flight.get(workflow_id)
        if task is None:
            task = asyncio.create_task(self._query(workflow_id))
            self._in_flight[workflow_id] = task
            task.add_done_callback(partial(self._forget, workflow_id))
            self._polls.labels("sent").inc()
        else:
            self._polls.labels("joined").inc()
        try:
            # shield: a poller that gives up (or disconnects) must not cancel the others' query.
            return await asyncio.wait_for(asyncio.shield(task), self._timeout)
        except (TimeoutError, Exception) as err:  # noqa: BLE001 - the record is the fallback
            log.info("progress query unavailable", workflow_id=workflow_id, error=type(err).__name__)
            self._polls.labels("unavailable").inc()
            return None

    async def _query(self, workflow_id: str) -> Progress:
        handle = self._client.get_workflow_handle(workflow_id)
        progress: Progress = await handle.query(
            PROGRESS_QUERY, result_type=Progress, rpc_timeout=timedelta(seconds=self._timeout)
        )
        return progress

    def _forget(self, workflow_id: str, task: asyncio.Task[Progress]) -> None:
        if self._in_flight.get(workflow_id) is task:
            del self._in_flight[workflow_id]
        if not task.cancelled():
            task.exception()  # retrieved here too, for when every poller already gave up
