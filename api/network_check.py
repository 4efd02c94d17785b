"""An org's VPC and subnets checked against EC2 before the org is accepted. The API holds no cloud
credentials: the worker answers (``ValidateOrgNetworkWorkflow``), and the API waits for it."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from aiohttp import web
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError

from api.errors import ApiError
from api.state import SETTINGS, TEMPORAL
from domain.operations import network_check_start, start_or_attach
from domain.validate_org_network import OrgNetwork
from workflows.common import root_message
from workflows.validate_org_network import ValidateOrgNetworkWorkflow

log = structlog.get_logger("tenantflow.api")


def _unchecked(reason: str) -> ApiError:
    return ApiError(
        503,
        "UNAVAILABLE",
        f"the org's network could not be checked: {reason}; nothing was created, retry shortly",
        headers={"Retry-After": "5"},
    )


async def require_valid_network(request: web.Request, slug: str, network: OrgNetwork) -> None:
    """Returns when the VPC exists and every subnet exists inside it; otherwise 400
    ``INVALID_NETWORK`` naming each wrong id, or 503 when no answer came within
    ``command_timeout_seconds`` (no worker, EC2 unreachable)."""
    settings = request.app[SETTINGS]
    wait = settings.command_timeout_seconds
    start = network_check_start(slug, network, timedelta(seconds=wait))
    handle = await start_or_attach(
        request.app[TEMPORAL], ValidateOrgNetworkWorkflow.run, network, start, task_queue=settings.task_queue
    )
    if handle is None:  # unreachable with the start's reuse policy; never a silent pass
        raise _unchecked(f"its check {start.id} could not start")
    try:
        verdict = await asyncio.wait_for(handle.result(), wait)
    except (TimeoutError, WorkflowFailureError) as err:
        cause = err.cause if isinstance(err, WorkflowFailureError) else None
        if cause is None or isinstance(cause, WorkflowTimeoutError):
            reason = await _why_unanswered(request.app[TEMPORAL], settings.task_queue, wait, start.id)
        else:
            reason = root_message(cause)
        log.warning("org network unchecked", org_slug=slug, workflow_id=start.id, reason=reason)
        raise _unchecked(reason) from None
    if not verdict.valid:
        log.info("org network refused", org_slug=slug, workflow_id=start.id, problems=verdict.problems)
        raise ApiError(400, "INVALID_NETWORK", "; ".join(verdict.problems))


async def _why_unanswered(client: Client, task_queue: str, wait: float, workflow_id: str) -> str:
    """Tells "no worker" from "a worker that could not answer" (EC2 unreachable, throttled): the
    operator fixes different things."""
    try:
        queue = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
    except RPCError:
        return f"no answer within {wait:g} s (is a worker running, can it reach EC2?)"
    if not queue.pollers:
        return f"no answer within {wait:g} s: no worker polls task queue {task_queue!r} (start one: python worker.py)"
    return f"no answer within {wait:g} s from the worker: can it reach EC2? (the check is workflow {workflow_id})"
