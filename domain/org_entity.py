"""The org's life as one state machine: its states, the commands operators send, and which command
each state allows. Pure (no I/O): the ``OrgWorkflow`` entity runs it, its Update validators ask it,
and the API uses it to explain a refusal.

    provisioning --ok--> active --suspend--> suspending --> suspended --resume--> resuming --> active
         |
         +--fails--> failed --retry--> provisioning
    any state but deleted --delete--> deleting --> deleted (the entity ends)

One operation runs at a time, as a child workflow. ``delete`` preempts the operation in progress
(it is cancelled and its compensation finishes first); every other command waits for a stable state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from domain.operations import Operation, operation_workflow_id
from domain.resources import NeonMode, Tier
from domain.status import OrgStatus

Plan = Literal["free", "starter", "pro", "enterprise"]

# While an operation runs, the org is in its transitional status; what a successful one leaves.
RUNNING_STATUS = {
    Operation.onboard: OrgStatus.provisioning,
    Operation.suspend: OrgStatus.suspending,
    Operation.resume: OrgStatus.resuming,
    Operation.delete: OrgStatus.deleting,
}
DONE_STATUS = {
    Operation.onboard: OrgStatus.active,
    Operation.suspend: OrgStatus.suspended,
    Operation.resume: OrgStatus.active,
    Operation.delete: OrgStatus.deleted,
}
# What an operation that failed or was abandoned leaves: never a state that lets the tenant in
# without an operator's decision.
FAILED_STATUS = {
    Operation.onboard: OrgStatus.failed,
    Operation.suspend: OrgStatus.suspended,
    Operation.resume: OrgStatus.suspended,
    Operation.delete: OrgStatus.deleting,
}


# A run from before the entity existed that an adopting entity waits for, by the org's status.
LEGACY_RUNS = {OrgStatus.provisioning: Operation.onboard, OrgStatus.deleting: Operation.delete}


def legacy_run_id(status: OrgStatus, org_id: str) -> str | None:
    """The workflow id of an operation started before the org entity existed (which recorded
    none on the org): found from the org's status."""
    operation = LEGACY_RUNS.get(status)
    return operation_workflow_id(operation, org_id) if operation else None


class Command(BaseModel):
    """An accepted request for an operation, queued until the entity runs it."""

    operation: Operation
    actor: str = "operator"
    reason: str | None = None
    stop_instances: bool = False
    # adopt: the run to wait for.
    workflow_id: str | None = None
    # Its status was recorded when it was accepted (an Update); else when it starts.
    recorded: bool = False


class SuspendCommand(BaseModel):
    actor: str = "operator"
    reason: str | None = None
    stop_instances: bool = False


class ResumeCommand(BaseModel):
    actor: str = "operator"


class DeleteCommand(BaseModel):
    actor: str = "operator"


class DecisionCommand(BaseModel):
    """retry / abandon of a parked step (retry also re-runs a failed onboarding)."""

    actor: str = "operator"


class Quotas(BaseModel):
    """An org's quota and billing controls (None: unchanged)."""

    model_config = ConfigDict(extra="forbid")

    max_workspaces: Annotated[int, Field(strict=True, ge=0, le=10_000)] | None = None
    max_tier: Tier | None = None
    billing_plan: Plan | None = None


class QuotaCommand(Quotas):
    actor: str = "operator"


class QuotaChange(QuotaCommand):
    """What the entity asks its quota activity to write."""

    org_id: str


class Abandoned(BaseModel):
    """An operation an operator stopped on its parked step: who, when, where and why it had parked."""

    operation: Operation
    step: str
    by: str
    at: datetime
    reason: str


class OrgTransition(BaseModel):
    """A status change of the org entity: applied only while the status is one of ``only_from``.
    ``operation``, ``failure_reason``, ``status_reason`` and ``abandoned`` are written as given
    (None clears them)."""

    org_id: str
    status: OrgStatus
    only_from: list[OrgStatus]
    actor: str
    operation: Operation | None = None
    workflow_id: str | None = None
    failure_reason: str | None = None
    status_reason: str | None = None
    abandoned: Abandoned | None = None


class Parked(BaseModel):
    """A step of the running operation failed for good and waits for ``retry`` or ``abandon``."""

    step: str
    reason: str


class Running(BaseModel):
    operation: Operation
    workflow_id: str
    parked: Parked | None = None


class OrgState(BaseModel):
    """Everything the entity knows; carried across continue-as-new."""

    status: OrgStatus
    running: Running | None = None
    queue: list[Command] = []
    # Why the last operation ended badly (failed onboarding, an abandoned step).
    failure_reason: str | None = None


class OrgWorkflowInput(BaseModel):
    """Who the org is (what its operations need) and where its life resumes."""

    org_id: str
    slug: str
    name: str
    plan: str
    vpc_id: str
    subnet_ids: list[str]
    neon_mode: NeonMode
    # Set when the entity continues as new; else it starts from ``adopt_status``: None for a new
    # org (onboarding first), or the status of an org that existed before its entity did.
    state: OrgState | None = None
    adopt_status: OrgStatus | None = None
    adopt_workflow_id: str | None = None
    # Continue as new after this many history events even if Temporal does not suggest it yet:
    # an entity evicted from the worker's cache replays its history on its next command (about
    # 0.3 ms per event here, bench/evicted.py), and entities never end.
    history_limit: int = 1_000


class OrgSnapshot(BaseModel):
    """What an accepted command answers, what the ``state`` query shows and a 409 carries."""

    org_id: str
    slug: str
    status: OrgStatus
    operation: Operation | None = None
    workflow_id: str | None = None
    parked: Parked | None = None
    queued: list[Operation] = []
    failure_reason: str | None = None


class OrgEntityResult(BaseModel):
    org_id: str
    slug: str
    status: OrgStatus


def refusal(state: OrgState, request: str) -> str | None:
    """Why ``request`` (suspend, resume, delete, retry, abandon, quota) is not allowed now, or None."""
    status, running = state.status, state.running
    pending = running.operation if running else (state.queue[0].operation if state.queue else None)
    busy = f"{pending.value} is in progress" if pending else None
    if status == OrgStatus.deleted:
        return "the org is deleted"
    if request == "delete":
        if pending == Operation.delete:
            return "a deletion is already in progress"
        return None
    if request == "quota":
        return "the org is being deleted" if status == OrgStatus.deleting else None
    if request in ("retry", "abandon"):
        if running is not None and running.parked is not None:
            return None
        if request == "retry" and status == OrgStatus.failed and running is None:
            return None
        return f"nothing is waiting for an operator ({busy or 'the org is ' + status.value})"
    if busy:
        return busy
    if request == "suspend":
        if status == OrgStatus.suspended:
            return "the org is already suspended"
        return None if status == OrgStatus.active else f"only an active org can be suspended; it is {status.value}"
    if request == "resume":
        return None if status == OrgStatus.suspended else f"only a suspended org can be resumed; it is {status.value}"
    raise ValueError(f"unknown request {request!r}")
