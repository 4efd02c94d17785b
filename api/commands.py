"""The API's side of the org entity (``OrgWorkflow``): start or attach to it, send it commands.

Every command is an Update-with-Start: an org that existed before its entity did gets one on its
first command (adopting the status its record has), and a command to an org that already has one
attaches to it. A refusal by the entity's validator becomes a 409 that names the org's state and
the operation in progress.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

import structlog
from aiohttp import web
from temporalio.client import (
    Client,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.workflow import UpdateMethodMultiParam

from api.errors import ApiError
from api.state import SETTINGS, TEMPORAL
from domain.operations import Start, org_entity_start, start_or_attach, with_start
from domain.org_entity import OrgSnapshot, OrgWorkflowInput, legacy_run_id
from domain.status import OrgStatus
from workflows.org import REFUSED, OrgWorkflow

log = structlog.get_logger("tenantflow.api")
CommandT = TypeVar("CommandT")
# What a refused command answers, by command.
REFUSAL_CODES = {
    "suspend": "ORG_NOT_ACTIVE",
    "resume": "ORG_NOT_SUSPENDED",
    "delete": "DELETE_IN_PROGRESS",
    "retry": "NOTHING_PARKED",
    "abandon": "NOTHING_PARKED",
    "set_quota": "ORG_DELETING",
}


def entity_input(row: dict[str, Any], *, new: bool) -> OrgWorkflowInput:
    status = OrgStatus(row["status"])
    return OrgWorkflowInput(
        org_id=row["id"],
        slug=row["slug"],
        name=row["name"],
        plan=row["plan"],
        vpc_id=row["vpc_id"],
        subnet_ids=row["subnet_ids"],
        neon_mode=row["neon_mode"],
        adopt_status=None if new else status,
        adopt_workflow_id=None if new else legacy_run_id(status, row["id"]),
    )


def _entity_start(row: dict[str, Any]) -> Start:
    return org_entity_start(row["id"], row["slug"], row["plan"])


async def start_entity(client: Client, row: dict[str, Any], task_queue: str, *, new: bool) -> None:
    """Start the org's entity (which onboards a new org), or attach to the one that runs (a
    completed one means the org was deleted, and its record says so)."""
    await start_or_attach(
        client, OrgWorkflow.run, entity_input(row, new=new), _entity_start(row), task_queue=task_queue
    )


async def send_command(
    request: web.Request,
    row: dict[str, Any],
    update: UpdateMethodMultiParam[[OrgWorkflow, CommandT], OrgSnapshot],
    command: CommandT,
) -> OrgSnapshot:
    """Run ``update`` on the org's entity (starting it if the org has none yet); returns the
    entity's state once the command is accepted and its new status recorded."""
    settings = request.app[SETTINGS]
    name = getattr(update, "__name__", "command")
    operation = with_start(
        OrgWorkflow.run, entity_input(row, new=False), _entity_start(row), task_queue=settings.task_queue
    )
    try:
        snapshot: OrgSnapshot = await request.app[TEMPORAL].execute_update_with_start_workflow(
            update,
            command,
            start_workflow_operation=operation,
            rpc_timeout=timedelta(seconds=settings.command_timeout_seconds),
        )
        return snapshot
    except WorkflowUpdateFailedError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type == REFUSED:
            state = cause.details[0] if cause.details else None
            raise ApiError(409, REFUSAL_CODES.get(name, "COMMAND_REFUSED"), cause.message, org=state) from None
        # Accepted, but recording it failed for good (the database refused the change, say).
        log.error("org command failed", org_slug=row["slug"], command=name, error=str(cause or err))
        raise ApiError(
            503,
            "UNAVAILABLE",
            f"{name} of '{row['slug']}' could not be recorded; retry shortly",
            headers={"Retry-After": "5"},
        ) from None
    except WorkflowAlreadyStartedError:
        raise ApiError(409, "ORG_DELETED", f"org '{row['slug']}' has been deleted") from None
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        raise ApiError(
            503,
            "UNAVAILABLE",
            "the org's workflow did not answer in time (is a worker running?); retry shortly",
            headers={"Retry-After": "5"},
        ) from None
