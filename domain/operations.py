"""Every workflow the platform starts: its id, how a start behaves when a run with that id exists,
the search attributes and summary operators see in the Temporal UI, and the ``progress`` every
operation answers.

Ids are business keys (``org:<org id>``, ``ws-provision:<workspace id>``), so a repeated request
attaches to the run it already started instead of starting a second one. Whoever starts a
workflow (the API, the org entity, the worker's schedule, the tools) takes its options from here
and starts it with :func:`start_or_attach` (or :func:`with_start` for an Update-with-Start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from domain.validate_org_network import OrgNetwork

# Custom search attributes: the local stack registers them; see deploy/README.md for clusters.
ORG_SLUG = SearchAttributeKey.for_keyword("TenantflowOrgSlug")
WORKSPACE_ID = SearchAttributeKey.for_keyword("TenantflowWorkspaceId")
OPERATION = SearchAttributeKey.for_keyword("TenantflowOperation")
SEARCH_ATTRIBUTES = {ORG_SLUG.name: "Keyword", WORKSPACE_ID.name: "Keyword", OPERATION.name: "Keyword"}

# Every operation workflow answers this query with a ``Progress``.
PROGRESS_QUERY = "progress"


class Progress(BaseModel):
    """Live progress of a workflow, answered by its ``progress`` query."""

    operation: str
    step: str
    steps_done: int
    steps_total: int
    status: str
    failure_reason: str | None = None
    # A teardown step failed for good and waits for an operator's ``retry`` or ``abandon``.
    waiting_for_operator: bool = False


class Operation(StrEnum):
    """What the org entity runs, one at a time, each as a child workflow."""

    onboard = "onboard"
    suspend = "suspend"
    resume = "resume"
    delete = "delete"
    # A run the per-operation design started before the entity existed: waited for, then read back.
    adopt = "adopt"


# -- ids ------------------------------------------------------------------------------------------

# The child workflow id of each operation (the ids operators already know from the runbook).
_OPERATION_WORKFLOW_IDS = {
    Operation.onboard: "org-onboard:{org_id}",
    Operation.suspend: "org-suspend:{org_id}",
    Operation.resume: "org-resume:{org_id}",
    Operation.delete: "org-delete:{org_id}",
}
# The schedule that starts reconciliation, and the id the server suffixes with each run's time.
RECONCILE_SCHEDULE_ID = "tenantflow-reconcile"
RECONCILE_WORKFLOW_ID = "reconcile"


def org_workflow_id(org_id: str) -> str:
    """The org's entity workflow, for its whole life."""
    return f"org:{org_id}"


def operation_workflow_id(operation: Operation, org_id: str) -> str:
    return _OPERATION_WORKFLOW_IDS[operation].format(org_id=org_id)


def network_check_workflow_id(slug: str, network: OrgNetwork) -> str:
    """One per slug and network: identical requests at the same time share one check."""
    digest = hashlib.sha256(network.model_dump_json().encode()).hexdigest()[:12]
    return f"org-validate:{slug}:{digest}"


def orphan_deletion_workflow_id(cloud_id: str) -> str:
    """An operator's deletion of one orphan: a repeat attaches, so it is never deleted twice."""
    return f"reconcile-delete-orphan:{cloud_id}"


def provision_workflow_id(workspace_id: str) -> str:
    return f"ws-provision:{workspace_id}"


def deprovision_workflow_id(workspace_id: str) -> str:
    return f"ws-deprovision:{workspace_id}"


# -- start options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """How one workflow starts: everything but its type, its input and the task queue."""

    id: str
    summary: str
    search_attributes: TypedSearchAttributes
    # A repeated start attaches to the run that has the id.
    id_conflict_policy: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.USE_EXISTING
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.ALLOW_DUPLICATE
    # The run ends (timed out) by then at the latest; None: never.
    execution_timeout: timedelta | None = None


def _attributes(*pairs: tuple[SearchAttributeKey[str], str]) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(key, value) for key, value in pairs])


def org_entity_start(org_id: str, slug: str, plan: str) -> Start:
    return Start(
        id=org_workflow_id(org_id),
        summary=f"Org {slug} ({plan}): its whole life",
        search_attributes=_attributes((ORG_SLUG, slug), (OPERATION, "org")),
        # A closed entity stays closed (its org was deleted); only a failed or terminated one may
        # be started again.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
    )


def operation_start(operation: Operation, org_id: str, slug: str) -> Start:
    """An operation the org entity runs as its child."""
    return Start(
        id=operation_workflow_id(operation, org_id),
        summary=f"{operation.value.capitalize()} org {slug}",
        search_attributes=_attributes(
            (ORG_SLUG, slug), (OPERATION, "hard-delete" if operation == Operation.delete else operation.value)
        ),
    )


def network_check_start(slug: str, network: OrgNetwork, timeout: timedelta) -> Start:
    """The API's check of an org's network before it accepts the org; it waits ``timeout`` for the
    answer, and a run nobody waits for any more ends then too (no worker, EC2 unreachable)."""
    return Start(
        id=network_check_workflow_id(slug, network),
        summary=f"Check {network.vpc_id} and {len(network.subnet_ids)} subnets for org {slug}",
        search_attributes=_attributes((ORG_SLUG, slug), (OPERATION, "validate-network")),
        execution_timeout=timeout,
    )


def provision_start(org_slug: str, workspace_id: str, name: str, instance_type: str) -> Start:
    return Start(
        id=provision_workflow_id(workspace_id),
        summary=f"Provision workspace {name} ({instance_type}) for {org_slug}",
        search_attributes=_attributes((ORG_SLUG, org_slug), (WORKSPACE_ID, workspace_id), (OPERATION, "provision")),
    )


def deprovision_start(org_slug: str, workspace_id: str, name: str) -> Start:
    return Start(
        id=deprovision_workflow_id(workspace_id),
        summary=f"Deprovision workspace {name} of {org_slug}",
        search_attributes=_attributes((ORG_SLUG, org_slug), (WORKSPACE_ID, workspace_id), (OPERATION, "deprovision")),
    )


def reconcile_start(*, delete: bool) -> Start:
    """The runs the reconcile schedule starts (the server appends the scheduled time to the id)."""
    return Start(
        id=RECONCILE_WORKFLOW_ID,
        summary="Reconcile cloud resources against the ledger" + (" (deleting orphans)" if delete else " (dry run)"),
        search_attributes=_attributes((OPERATION, "reconcile")),
    )


def orphan_deletion_start(kind: str, cloud_id: str) -> Start:
    return Start(
        id=orphan_deletion_workflow_id(cloud_id),
        summary=f"Delete the orphaned {kind} {cloud_id}, named by an operator",
        search_attributes=_attributes((OPERATION, "reconcile-delete-orphan")),
    )


# -- starting -------------------------------------------------------------------------------------

SelfT = TypeVar("SelfT")
ArgT = TypeVar("ArgT")
ResultT = TypeVar("ResultT")


async def start_or_attach(
    client: Client, run: Callable[[SelfT, ArgT], Awaitable[ResultT]], arg: ArgT, start: Start, *, task_queue: str
) -> WorkflowHandle[SelfT, ResultT] | None:
    """Start the workflow, or attach to the run that has its id. None when that id's run has
    closed and may not start again (``id_reuse_policy``)."""
    try:
        return await client.start_workflow(
            run,
            arg,
            id=start.id,
            task_queue=task_queue,
            id_conflict_policy=start.id_conflict_policy,
            id_reuse_policy=start.id_reuse_policy,
            static_summary=start.summary,
            search_attributes=start.search_attributes,
            execution_timeout=start.execution_timeout,
        )
    except WorkflowAlreadyStartedError:
        return None


def with_start(
    run: Callable[[SelfT, ArgT], Awaitable[ResultT]], arg: ArgT, start: Start, *, task_queue: str
) -> WithStartWorkflowOperation[SelfT, ResultT]:
    """The start half of an Update-with-Start: the update goes to the run that has the id, which
    is started first when there is none."""
    return WithStartWorkflowOperation(
        run,
        arg,
        id=start.id,
        task_queue=task_queue,
        id_conflict_policy=start.id_conflict_policy,
        id_reuse_policy=start.id_reuse_policy,
        static_summary=start.summary,
        search_attributes=start.search_attributes,
        execution_timeout=start.execution_timeout,
    )
