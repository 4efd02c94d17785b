"""Stopping another workflow and waiting until it has closed (its cleanup included)."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError, RPCStatusCode

from domain.models import WorkflowToStop


class WorkflowControlActivities:
    def __init__(self, client: Client):
        self._client = client

    @activity.defn
    async def cancel_and_wait(self, target: WorkflowToStop) -> str:
        """Request cancellation and wait until the workflow closes; returns how it ended."""
        handle = self._client.get_workflow_handle(target.workflow_id)
        try:
            description = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return "not_found"
            raise
        if description.status is not None and description.status.name != "RUNNING":
            return description.status.name.lower()
        await handle.cancel()
        while True:
            try:
                await asyncio.wait_for(handle.result(), timeout=5)
            except asyncio.TimeoutError:
                activity.heartbeat("waiting for the workflow to close")
                continue
            except WorkflowFailureError:
                pass
            break
        return (await handle.describe()).status.name.lower()
