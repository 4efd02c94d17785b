"""Stopping another workflow, or waiting for it, until it has closed (its cleanup included)."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from domain.refs import WorkflowToStop


class WorkflowControlActivities:
    def __init__(self, client: Client):
        self._client = client

    async def _describe(self, handle: WorkflowHandle[Any, Any]) -> WorkflowExecutionDescription | None:
        try:
            return await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    @activity.defn
    async def cancel_and_wait(self, target: WorkflowToStop) -> str:
        """Request cancellation and wait until the workflow closes; returns how it ended."""
        handle = self._client.get_workflow_handle(target.workflow_id)
        description = await self._describe(handle)
        if description is None:
            return "not_found"
        if description.status is not None and description.status.name != "RUNNING":
            return description.status.name.lower()
        await handle.cancel()
        return await self._closed(handle)

    @activity.defn
    async def wait_until_closed(self, target: WorkflowToStop) -> str:
        """Wait, without interfering, until the workflow closes; returns how it ended."""
        handle = self._client.get_workflow_handle(target.workflow_id)
        if await self._describe(handle) is None:
            return "not_found"
        return await self._closed(handle)

    async def _closed(self, handle: WorkflowHandle[Any, Any]) -> str:
        while True:
            try:
                await asyncio.wait_for(handle.result(), timeout=5)
            except TimeoutError:
                activity.heartbeat("waiting for the workflow to close")
                continue
            except WorkflowFailureError:
                pass
            break
        status = (await handle.describe()).status
        return status.name.lower() if status else "unknown"
