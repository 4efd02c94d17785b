"""The API's side of the org entity (``OrgWorkflow``): start or attach to it, send it commands.

Every command is an Update-with-Start: an org that existed before its entity did gets one on its
first command (adopting the status its record has), and a command to an org that already has one
attaches to it. A refusal by the entity's validator becomes a 409 that names the org's state and
the operation in progress.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from api.errors import ApiError
from api.state import SETTINGS, TEMPORAL
from domain.models import OrgStatus
from domain.org_entity import Operation, OrgSnapshot, OrgWorkflowInput, operation_workflow_id, org_workflow_id
from domain.temporal import OPERATION, ORG_SLUG
from workflows.org import REFUSED, OrgWorkflow

log = structlog.get_logger("tenantflow.api")
# What a refused command answers, by command.
REFUSAL_CODES = {"suspend": "ORG_NOT_ACTIVE", "resume": "ORG_NOT_SUSPENDED", "delete": "DELETE_IN_PROGRESS",
                 "retry": "NOTHING_PARKED", "abandon": "NOTHING_PARKED", "set_quota": "ORG_DELETING"}
# A run from before the entity existed that an adopting entity waits for.
_LEGACY_RUNS = {OrgStatus.provisioning: Operation.onboard, OrgStatus.deleting: Operation.delete}


def entity_input(row: dict, *, new: bool) -> OrgWorkflowInput:
    status = OrgStatus(row["status"])
    legacy = _LEGACY_RUNS.get(status)
    return OrgWorkflowInput(
        org_id=row["id"], slug=row["slug"], name=row["name"], plan=row["plan"], vpc_id=row["vpc_id"],
        subnet_ids=row["subnet_ids"], neon_mode=row["neon_mode"],
        adopt_status=None if new else status,
        adopt_workflow_id=operation_workflow_id(legacy, row["id"]) if legacy and not new else None)


def _start_options(row: dict) -> dict[str, Any]:
    return {
        "id": org_workflow_id(row["id"]),
        # A second POST, or a command, attaches to the running entity. A closed one stays closed
        # (its org was deleted); only a failed or terminated entity may be started again.
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "id_reuse_policy": WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        "static_summary": f"Org {row['slug']} ({row['plan']}): its whole life",
        "search_attributes": TypedSearchAttributes([SearchAttributePair(ORG_SLUG, row["slug"]),
                                                    SearchAttributePair(OPERATION, "org")]),
    }


async def start_entity(client: Client, row: dict, task_queue: str, *, new: bool) -> None:
    """Start the org's entity (which onboards a new org), or attach to the one that runs."""
    try:
        await client.start_workflow(OrgWorkflow.run, entity_input(row, new=new), task_queue=task_queue,
                                    **_start_options(row))
    except WorkflowAlreadyStartedError:
        pass  # it completed: the org was deleted, and its record says so


async def send_command(request: web.Request, row: dict, update: Any, command: Any) -> OrgSnapshot:
    """Run ``update`` on the org's entity (starting it if the org has none yet); returns the
    entity's state once the command is accepted and its new status recorded."""
    settings = request.app[SETTINGS]
    name = update.__name__
    operation = WithStartWorkflowOperation(OrgWorkflow.run, entity_input(row, new=False),
                                           task_queue=settings.task_queue, **_start_options(row))
    try:
        return await request.app[TEMPORAL].execute_update_with_start_workflow(
            update, command, start_workflow_operation=operation,
            rpc_timeout=timedelta(seconds=settings.command_timeout_seconds))
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == REFUSED:
            state = cause.details[0] if cause.details else None
            raise ApiError(409, REFUSAL_CODES.get(name, "COMMAND_REFUSED"), cause.message, org=state) from None
        # Accepted, but recording it failed for good (the database refused the change, say).
        log.error("org command failed", org_slug=row["slug"], command=name, error=str(cause or err))
        raise ApiError(503, "UNAVAILABLE", f"{name} of '{row['slug']}' could not be recorded; retry shortly",
                       headers={"Retry-After": "5"}) from None
    except WorkflowAlreadyStartedError:
        raise ApiError(409, "ORG_DELETED", f"org '{row['slug']}' has been deleted") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise ApiError(503, "UNAVAILABLE", "the org's workflow did not answer in time (is a worker running?); "
                                           "retry shortly", headers={"Retry-After": "5"}) from None
