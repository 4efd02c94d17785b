"""The Temporal Schedule that runs ReconcileWorkflow; created or brought up to date at worker start."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from activities.reconcile import ReconcileInput
from domain.settings import Settings
from domain.temporal import OPERATION
from workflows.reconcile import ReconcileWorkflow

RECONCILE_SCHEDULE_ID = "tenantflow-reconcile"


def reconcile_schedule(settings: Settings, task_queue: str) -> Schedule:
    inp = ReconcileInput(delete=settings.reconcile_delete_enabled, max_deletes=settings.reconcile_max_deletes,
                         max_delete_fraction=settings.reconcile_max_delete_fraction)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflow.run, inp,
            # The server appends the scheduled time, so every run has its own id: reconcile-<time>.
            id="reconcile",
            task_queue=task_queue,
            static_summary="Reconcile cloud resources against the ledger"
                           + (" (deleting orphans)" if inp.delete else " (dry run)"),
            typed_search_attributes=TypedSearchAttributes([SearchAttributePair(OPERATION, "reconcile")]),
        ),
        spec=ScheduleSpec(intervals=[
            ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))]),
        # A run still deleting (waiting on draining instances) is never doubled up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(client: Client, settings: Settings, *, task_queue: str | None = None,
                                    schedule_id: str = RECONCILE_SCHEDULE_ID) -> None:
    """Create the schedule, or update it to the current settings; safe from every worker start."""
    wanted = reconcile_schedule(settings, task_queue or settings.task_queue)
    try:
        await client.create_schedule(schedule_id, wanted)
    except ScheduleAlreadyRunningError:
        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            # Keep the state, so that a pause set by an operator survives a worker restart.
            return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=current.description.schedule.state))

        await client.get_schedule_handle(schedule_id).update(update)
