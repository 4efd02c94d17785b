"""OrgWorkflow: one workflow per org (``org:<org id>``) for the org's whole life.

Commands are Updates. A validator refuses a command the org's state does not allow (the refusal is
never written to history, and the API answers 409 at once); an accepted command records the org's
new status before its Update returns, so the API's 202 already means "suspending" (and every key of
the org refused) for every request from then on. Operations run one at a time as child workflows
(``org-onboard:``, ``org-suspend:``, ``org-resume:``, ``org-delete:``), which operators find, query,
signal and reset in the Temporal UI as before. ``delete`` preempts: it cancels the operation in
progress, waits until its compensation finished, then runs the cascade. The history stays short:
the entity continues as new when Temporal suggests it, carrying its state and queued commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.lifecycle import OrgLifecycleActivities
    from activities.workflow_control import WorkflowControlActivities
    from domain.hard_delete_org import HardDeleteOrgInput
    from domain.onboard_org import OnboardOrgInput
    from domain.operations import Operation, operation_start, operation_workflow_id
    from domain.org_entity import (
        DONE_STATUS,
        FAILED_STATUS,
        RUNNING_STATUS,
        Abandoned,
        Command,
        DecisionCommand,
        DeleteCommand,
        OrgEntityResult,
        OrgSnapshot,
        OrgState,
        OrgTransition,
        OrgWorkflowInput,
        Parked,
        QuotaChange,
        QuotaCommand,
        ResumeCommand,
        Running,
        SuspendCommand,
        refusal,
    )
    from domain.refs import OrgRef, WorkflowToStop
    from domain.status import OrgStatus
    from domain.suspend_org import ResumeOrgInput, SuspendOrgInput
    from workflows.common import (
        ABANDONED_ERROR_TYPE,
        CLEANUP_DEADLINE,
        PARKED_SIGNAL,
        UNPARKED_SIGNAL,
        root_message,
        run_activity,
    )
    from workflows.hard_delete_org import HardDeleteOrgWorkflow
    from workflows.onboard_org import OnboardOrgWorkflow
    from workflows.suspend_org import ResumeOrgWorkflow, SuspendOrgWorkflow

REFUSED = "CommandRefused"
_EVERY_STATUS_BUT_DELETED: list[OrgStatus] = [s for s in OrgStatus if s != OrgStatus.deleted]
# Where each operation may start from (its transitional status included, for a re-run).
_STARTS_FROM: dict[Operation, list[OrgStatus]] = {
    Operation.onboard: [OrgStatus.provisioning, OrgStatus.failed],
    Operation.suspend: [OrgStatus.active, OrgStatus.suspending],
    Operation.resume: [OrgStatus.suspended, OrgStatus.resuming],
    Operation.delete: _EVERY_STATUS_BUT_DELETED,
}


@workflow.defn
class OrgWorkflow:
    @workflow.init
    def __init__(self, inp: OrgWorkflowInput) -> None:
        self._inp = inp
        self._state = inp.state or self._initial_state(inp)
        # Status writes happen in the order commands were accepted.
        self._writes = asyncio.Lock()
        self._operation: asyncio.Task[None] | None = None
        self._abandoned: Abandoned | None = None
        # The step the running operation parked on last: named when a signal abandons it.
        self._last_parked: Parked | None = None

    @staticmethod
    def _initial_state(inp: OrgWorkflowInput) -> OrgState:
        if inp.adopt_status is None:
            return OrgState(status=OrgStatus.provisioning, queue=[Command(operation=Operation.onboard)])
        if inp.adopt_workflow_id:  # a run from before the entity existed may still be going
            return OrgState(
                status=inp.adopt_status, queue=[Command(operation=Operation.adopt, workflow_id=inp.adopt_workflow_id)]
            )
        return OrgState(status=inp.adopt_status)

    # -- what operators see ---------------------------------------------------------------------

    @workflow.query
    def state(self) -> OrgSnapshot:
        return self._snapshot()

    def _snapshot(self) -> OrgSnapshot:
        s, running = self._state, self._state.running
        return OrgSnapshot(
            org_id=self._inp.org_id,
            slug=self._inp.slug,
            status=s.status,
            operation=running.operation if running else None,
            workflow_id=running.workflow_id if running else None,
            parked=running.parked if running else None,
            queued=[c.operation for c in s.queue],
            failure_reason=s.failure_reason,
        )

    def _refuse_if_not_allowed(self, request: str) -> None:
        reason = refusal(self._state, request)
        if reason is not None:
            raise ApplicationError(
                f"{request} refused: {reason}",
                self._snapshot().model_dump(mode="json"),
                type=REFUSED,
                non_retryable=True,
            )

    # -- commands -------------------------------------------------------------------------------

    @workflow.update
    async def suspend(self, cmd: SuspendCommand) -> OrgSnapshot:
        return await self._accept(
            Command(operation=Operation.suspend, actor=cmd.actor, reason=cmd.reason, stop_instances=cmd.stop_instances)
        )

    @suspend.validator
    def _validate_suspend(self, cmd: SuspendCommand) -> None:
        self._refuse_if_not_allowed("suspend")

    @workflow.update
    async def resume(self, cmd: ResumeCommand) -> OrgSnapshot:
        return await self._accept(Command(operation=Operation.resume, actor=cmd.actor))

    @resume.validator
    def _validate_resume(self, cmd: ResumeCommand) -> None:
        self._refuse_if_not_allowed("resume")

    @workflow.update
    async def delete(self, cmd: DeleteCommand) -> OrgSnapshot:
        # Preempts: whatever was queued is moot, and the running operation is cancelled (its
        # compensation finishes before the cascade starts, see run()).
        self._state.queue.clear()
        if self._operation is not None:
            self._operation.cancel()
        return await self._accept(Command(operation=Operation.delete, actor=cmd.actor))

    @delete.validator
    def _validate_delete(self, cmd: DeleteCommand) -> None:
        self._refuse_if_not_allowed("delete")

    @workflow.update
    async def retry(self, cmd: DecisionCommand) -> OrgSnapshot:
        """Run a parked step again, or onboarding again after it failed."""
        running = self._state.running
        if running is not None and running.parked is not None:
            await self._decide(running, "retry")
            return self._snapshot()
        return await self._accept(Command(operation=Operation.onboard, actor=cmd.actor))

    @retry.validator
    def _validate_retry(self, cmd: DecisionCommand) -> None:
        self._refuse_if_not_allowed("retry")

    @workflow.update
    async def abandon(self, cmd: DecisionCommand) -> OrgSnapshot:
        """Stop the running operation on its parked step."""
        running = self._state.running
        assert running is not None and running.parked is not None
        self._abandoned = Abandoned(
            operation=running.operation,
            step=running.parked.step,
            by=cmd.actor,
            at=workflow.now(),
            reason=running.parked.reason,
        )
        await self._decide(running, "abandon")
        return self._snapshot()

    @abandon.validator
    def _validate_abandon(self, cmd: DecisionCommand) -> None:
        self._refuse_if_not_allowed("abandon")

    @workflow.update
    async def set_quota(self, cmd: QuotaCommand) -> OrgSnapshot:
        async with self._writes:
            await run_activity(
                OrgLifecycleActivities.set_org_quota,
                QuotaChange(org_id=self._inp.org_id, **cmd.model_dump()),
                "set quotas",
            )
        return self._snapshot()

    @set_quota.validator
    def _validate_quota(self, cmd: QuotaCommand) -> None:
        self._refuse_if_not_allowed("quota")

    @workflow.signal(name=PARKED_SIGNAL)
    def operation_parked(self, parked: Parked) -> None:
        self._last_parked = parked
        if self._state.running is not None:
            self._state.running.parked = parked

    @workflow.signal(name=UNPARKED_SIGNAL)
    def operation_unparked(self) -> None:
        if self._state.running is not None:
            self._state.running.parked = None

    async def _accept(self, cmd: Command) -> OrgSnapshot:
        """Queue the command and record the org's new status before the Update returns; answers
        the state as accepted. The state changes synchronously, so the next command's validator
        already sees it (and the operation may even be over by the time the record is written)."""
        status = RUNNING_STATUS[cmd.operation]
        self._state.status, self._state.failure_reason = status, None
        self._state.queue.append(cmd.model_copy(update={"recorded": True}))
        accepted = self._snapshot()
        await self._write(
            status, _STARTS_FROM[cmd.operation], operation=cmd.operation, actor=cmd.actor, status_reason=cmd.reason
        )
        return accepted

    async def _decide(self, running: Running, decision: str) -> None:
        running.parked = None  # a second decision is refused from now on
        await workflow.get_external_workflow_handle(running.workflow_id).signal(decision)

    async def _write(
        self,
        status: OrgStatus,
        only_from: list[OrgStatus],
        *,
        actor: str,
        operation: Operation | None = None,
        failure_reason: str | None = None,
        status_reason: str | None = None,
        abandoned: Abandoned | None = None,
    ) -> None:
        change = OrgTransition(
            org_id=self._inp.org_id,
            status=status,
            only_from=only_from,
            actor=actor,
            operation=operation.value if operation else None,
            workflow_id=operation_workflow_id(operation, self._inp.org_id)
            if operation and operation != Operation.adopt
            else None,
            failure_reason=failure_reason,
            status_reason=status_reason,
            abandoned=abandoned,
        )
        async with self._writes:
            await run_activity(
                OrgLifecycleActivities.transition_org, change, f"org -> {status.value}", deadline=CLEANUP_DEADLINE
            )

    # -- the life -------------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: OrgWorkflowInput) -> OrgEntityResult:
        while self._state.status != OrgStatus.deleted:
            await workflow.wait_condition(lambda: bool(self._state.queue) or self._history_is_long())
            if not self._state.queue:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._state.queue:
                    workflow.continue_as_new(inp.model_copy(update={"state": self._state}))
                continue
            cmd = self._state.queue.pop(0)
            self._operation = asyncio.create_task(self._run_operation(cmd))
            # Waited for, not awaited: a delete cancels this task, and that must not cancel run().
            await workflow.wait([self._operation])
            self._operation = None
        await workflow.wait_condition(workflow.all_handlers_finished)
        return OrgEntityResult(org_id=inp.org_id, slug=inp.slug, status=OrgStatus.deleted)

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._inp.history_limit

    async def _run_operation(self, cmd: Command) -> None:
        if cmd.operation == Operation.adopt:
            await self._adopt(cmd)
            return
        workflow_id = operation_workflow_id(cmd.operation, self._inp.org_id)
        self._state.running = Running(operation=cmd.operation, workflow_id=workflow_id)
        self._abandoned = None
        workflow.set_current_details(f"**{cmd.operation.value}** running as `{workflow_id}`")
        try:
            if not cmd.recorded:
                await self._write(
                    RUNNING_STATUS[cmd.operation], _STARTS_FROM[cmd.operation], actor=cmd.actor, operation=cmd.operation
                )
            await self._run_child(cmd)
        except asyncio.CancelledError:
            # Preempted by a delete, which recorded the org's status itself; the child's
            # compensation has finished (children are waited on when cancelled).
            workflow.logger.info(
                "operation preempted", extra={"org_slug": self._inp.slug, "operation": cmd.operation.value}
            )
            self._state.running = None
            return
        except ChildWorkflowError as err:
            abandoned = self._abandoned or self._abandoned_by_signal(cmd, err)
            reason = f"abandoned by {abandoned.by}: {abandoned.reason}" if abandoned else _operation_failure(err)
            await self._finish(cmd, FAILED_STATUS[cmd.operation], reason, abandoned)
            return
        await self._finish(cmd, DONE_STATUS[cmd.operation], None)

    def _abandoned_by_signal(self, cmd: Command, err: ChildWorkflowError) -> Abandoned | None:
        """An operation abandoned by the `abandon` signal sent straight to it (the Temporal CLI or
        UI, as the runbook allows) is as visible as one abandoned through the API."""
        cause = err.cause
        if not (isinstance(cause, ApplicationError) and cause.type == ABANDONED_ERROR_TYPE):
            return None
        parked = self._last_parked
        return Abandoned(
            operation=cmd.operation,
            step=parked.step if parked else "unknown",
            by=f"signal to {operation_workflow_id(cmd.operation, self._inp.org_id)}",
            at=workflow.now(),
            reason=parked.reason if parked else cause.message,
        )

    async def _finish(
        self, cmd: Command, status: OrgStatus, reason: str | None, abandoned: Abandoned | None = None
    ) -> None:
        self._state.running = None
        if self._state.status != RUNNING_STATUS[cmd.operation]:
            return  # a delete took over while the operation ended
        self._state.status, self._state.failure_reason = status, reason
        workflow.set_current_details(f"**{status.value}**" + (f"\n\n{reason}" if reason else ""))
        if status != OrgStatus.deleted:  # the cascade purged the row
            # Onboarding records its own outcome first: from there too, so the operation is cleared.
            await self._write(
                status,
                [RUNNING_STATUS[cmd.operation], status],
                actor="workflow",
                failure_reason=reason,
                status_reason=cmd.reason if status == OrgStatus.suspended else None,
                abandoned=abandoned,
            )

    async def _run_child(self, cmd: Command) -> None:
        """The operation's child workflow, until it ends."""
        start = operation_start(cmd.operation, self._inp.org_id, self._inp.slug)
        run, arg = self._child(cmd)
        await workflow.execute_child_workflow(
            run, arg, id=start.id, static_summary=start.summary, search_attributes=start.search_attributes
        )

    def _child(self, cmd: Command) -> tuple[Callable[[Any, Any], Awaitable[Any]], BaseModel]:
        i = self._inp
        if cmd.operation == Operation.onboard:
            return OnboardOrgWorkflow.run, OnboardOrgInput(
                org_id=i.org_id,
                slug=i.slug,
                name=i.name,
                plan=i.plan,
                vpc_id=i.vpc_id,
                subnet_ids=i.subnet_ids,
                neon_mode=i.neon_mode,
            )
        if cmd.operation == Operation.suspend:
            return SuspendOrgWorkflow.run, SuspendOrgInput(
                org_id=i.org_id, slug=i.slug, reason=cmd.reason, stop_instances=cmd.stop_instances
            )
        if cmd.operation == Operation.resume:
            return ResumeOrgWorkflow.run, ResumeOrgInput(org_id=i.org_id, slug=i.slug)
        return HardDeleteOrgWorkflow.run, HardDeleteOrgInput(
            org_id=i.org_id, slug=i.slug, vpc_id=i.vpc_id, neon_mode=i.neon_mode
        )

    async def _adopt(self, cmd: Command) -> None:
        """Wait for a run started before this entity existed, then take the org's status from its
        record: onboarding that never finished runs again; a purged org is deleted."""
        assert cmd.workflow_id is not None
        await run_activity(
            WorkflowControlActivities.wait_until_closed,
            WorkflowToStop(workflow_id=cmd.workflow_id),
            f"wait for {cmd.workflow_id}",
            deadline=CLEANUP_DEADLINE,
            waits=True,
        )
        status = await run_activity(
            OrgLifecycleActivities.read_org_status,
            OrgRef(org_id=self._inp.org_id, slug=self._inp.slug),
            "read the org's status",
        )
        if status is None:
            self._state.status = OrgStatus.deleted
        elif status == OrgStatus.provisioning:
            self._state.queue.insert(0, Command(operation=Operation.onboard))
        else:
            self._state.status = OrgStatus(status)


def _operation_failure(err: ChildWorkflowError) -> str:
    """Why an operation failed: the reason it recorded itself (its failure's first detail), else
    what failed inside it."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], str):
        return cause.details[0]
    return root_message(err)
