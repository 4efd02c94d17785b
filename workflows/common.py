"""What every tenantflow workflow shares: retry policies, progress reporting, failure reasons."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar, overload

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, TimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.workflow_control import WorkflowControlActivities
    from domain.operations import PROGRESS_QUERY, Progress, provision_workflow_id
    from domain.org_entity import Parked
    from domain.refs import WorkflowToStop

# Signals an operation run by the org entity sends its parent, so that the entity's validators
# know when a step waits for an operator's retry or abandon.
PARKED_SIGNAL = "operation_parked"
UNPARKED_SIGNAL = "operation_unparked"

# Transient faults (throttling, 423/429/5xx) back off up to 30 s; permanent ones are raised
# non-retryable by the activities and stop the retries at once.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(seconds=30)
)
# A single call to an external API; the whole step (with its retries) gets schedule_to_close.
CALL_TIMEOUT = timedelta(seconds=60)
STEP_DEADLINE = timedelta(minutes=10)
# Cleanup must finish: it keeps retrying far longer than a forward step.
CLEANUP_DEADLINE = timedelta(hours=1)
# A waiting activity (instances, Neon operations, another workflow's cleanup) heartbeats while it
# waits: each attempt may take a whole step, and a worker lost mid-wait is noticed in 30 s.
WAIT_ATTEMPT_TIMEOUT = STEP_DEADLINE
WAIT_HEARTBEAT_TIMEOUT = CALL_TIMEOUT / 2
# A cancelled activity that creates or powers something is waited for, so whatever runs next
# (compensation, a delete's cascade) sees everything it did.
FINISH_FIRST = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
_NO_ARG: Any = object()

ActivitySelf = TypeVar("ActivitySelf")
Arg = TypeVar("Arg")
Result = TypeVar("Result")


@overload
async def run_activity(
    method: Callable[[ActivitySelf], Awaitable[Result]],
    /,
    *,
    summary: str,
    deadline: timedelta = ...,
    waits: bool = ...,
    attempt_timeout: timedelta | None = ...,
    cancellation_type: ActivityCancellationType = ...,
) -> Result: ...


@overload
async def run_activity(
    method: Callable[[ActivitySelf, Arg], Awaitable[Result]],
    arg: Arg,
    /,
    summary: str,
    *,
    deadline: timedelta = ...,
    waits: bool = ...,
    attempt_timeout: timedelta | None = ...,
    cancellation_type: ActivityCancellationType = ...,
) -> Result: ...


async def run_activity(
    method: Callable[..., Awaitable[Any]],
    arg: Any = _NO_ARG,
    /,
    summary: str = "",
    *,
    deadline: timedelta = STEP_DEADLINE,
    waits: bool = False,
    attempt_timeout: timedelta | None = None,
    cancellation_type: ActivityCancellationType = ActivityCancellationType.TRY_CANCEL,
) -> Any:
    """An activity method under the shared retry policy; its result has the method's type.

    Every attempt gets ``attempt_timeout`` (default: one external call, ``CALL_TIMEOUT``), every
    attempt together ``deadline``. An activity that ``waits`` (for instances, Neon operations,
    another workflow) gets a whole step per attempt and heartbeats."""
    if attempt_timeout is None:
        attempt_timeout = WAIT_ATTEMPT_TIMEOUT if waits else CALL_TIMEOUT
    args = [] if arg is _NO_ARG else [arg]
    return await workflow.execute_activity_method(
        method,
        args=args,
        summary=summary,
        retry_policy=RETRY,
        schedule_to_close_timeout=deadline,
        start_to_close_timeout=attempt_timeout,
        heartbeat_timeout=WAIT_HEARTBEAT_TIMEOUT if waits else None,
        cancellation_type=cancellation_type,
    )


class ProgressTracker:
    """Keeps the ``progress`` query answer and the UI's current details in step."""

    def __init__(self, operation: str, steps: list[str], status: str):
        self.steps = steps
        self.progress = Progress(
            operation=operation, step="starting", steps_done=0, steps_total=len(steps), status=status
        )
        self._publish()

    def enter(self, step: str) -> None:
        self.progress.step = step
        self.progress.steps_done = self.steps.index(step) if step in self.steps else self.progress.steps_done
        self._publish()

    def finish(self, status: str, failure_reason: str | None = None, step: str = "done") -> None:
        self.progress.status = status
        self.progress.failure_reason = failure_reason
        if failure_reason is None:
            self.progress.steps_done = self.progress.steps_total
        self.progress.step = step
        self._publish()

    def note(self, text: str) -> None:
        self._publish(extra=text)

    def park(self, reason: str) -> None:
        self.progress.failure_reason = reason
        self.progress.waiting_for_operator = True
        self._publish(
            extra="**waiting for an operator**: fix the cause, then send the signal `retry` (or `abandon` to stop here)"
        )

    def unpark(self) -> None:
        self.progress.failure_reason = None
        self.progress.waiting_for_operator = False
        self._publish()

    def _publish(self, extra: str | None = None) -> None:
        p = self.progress
        lines = [
            f"**{p.operation}**: {p.status}",
            f"step: `{p.step}` ({p.steps_done}/{p.steps_total})",
        ]
        if p.failure_reason:
            lines.append(f"failure: {p.failure_reason}")
        if extra:
            lines.append(extra)
        workflow.set_current_details("\n\n".join(lines))


def stop_if_cancelled() -> None:
    """A step that was waited for after a cancellation (``FINISH_FIRST``) returns normally: stop
    here rather than go on with an operation that was cancelled (an org being deleted)."""
    if workflow.cancellation_reason() is not None:
        raise asyncio.CancelledError()


def _root_cause(err: BaseException) -> BaseException:
    cause: BaseException = err
    while isinstance(cause, (ActivityError, ChildWorkflowError)) and cause.cause is not None:
        cause = cause.cause
    return cause


def root_message(err: BaseException) -> str:
    """The message of what really failed inside activity and child-workflow wrappers."""
    cause = _root_cause(err)
    return cause.message if isinstance(cause, ApplicationError) else f"{type(cause).__name__}: {cause}"


def failure_reason(step: str, err: BaseException) -> str:
    """A one-line, operator-readable reason: the step and the root cause's type and message."""
    cause = _root_cause(err)
    if isinstance(cause, ApplicationError):
        kind = cause.type or "ApplicationError"
        return f"{step}: {kind}: {cause.message}"
    if isinstance(cause, TimeoutError):
        return f"{step}: timed out ({cause.type.name if cause.type else 'timeout'})"
    return f"{step}: {type(cause).__name__}: {cause}"


async def cancel_provisioning(workspace_id: str) -> str:
    """Cancel a workspace's provisioning and wait until its cleanup finished (how it ended)."""
    return await run_activity(
        WorkflowControlActivities.cancel_and_wait,
        WorkflowToStop(workflow_id=provision_workflow_id(workspace_id)),
        f"cancel provisioning of {workspace_id}",
        waits=True,
    )


class Tracked:
    """A workflow whose progress operators follow: the ``progress`` query and the UI's details."""

    def __init__(self, operation: str, steps: list[str], status: str):
        self._tracker = ProgressTracker(operation, steps, status)

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Progress:
        return self._tracker.progress


class Gated(Tracked):
    """A teardown an operator decides on when a step fails for good: the ``retry`` and ``abandon``
    signals (from the Temporal UI or CLI, or the org entity), and ``run_step`` to run a step
    behind the gate."""

    def __init__(self, operation: str, steps: list[str], status: str):
        super().__init__(operation, steps, status)
        self._gate = OperatorGate(self._tracker)

    @workflow.signal
    def retry(self) -> None:
        """Run the parked step again (after fixing its cause)."""
        self._gate.decide("retry")

    @workflow.signal
    def abandon(self) -> None:
        """Stop on the parked step; the workflow fails and can be re-run later."""
        self._gate.decide("abandon")


# The error an operation ends with when an operator abandons its parked step.
ABANDONED_ERROR_TYPE = "TeardownAbandoned"


class OperatorGate:
    """Parks a workflow on a failed step until an operator decides: ``retry`` or ``abandon``.

    The workflow exposes the decision as signals (usable from the Temporal UI and CLI) and calls
    :meth:`run_step`; a permanently failed step never makes the workflow vanish.
    """

    def __init__(self, tracker: ProgressTracker):
        self._tracker = tracker
        self._decision: str | None = None
        # From the step's failure until the decision: a decision the org's workflow forwards as
        # soon as it hears of the park may arrive before the progress shows it.
        self._awaiting = False

    def decide(self, decision: str) -> None:
        if self._awaiting:
            self._decision = decision

    async def run_step(
        self,
        step: str,
        action: Callable[[], Awaitable[Result]],
        on_parked: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> Result:
        while True:
            self._tracker.enter(step)
            try:
                result = await action()
                stop_if_cancelled()
                return result
            except ActivityError as err:
                if workflow.cancellation_reason() is not None:
                    # Cancelled (a delete preempts this operation): not a failure to park on.
                    raise asyncio.CancelledError() from err
                reason = failure_reason(step, err)
                workflow.logger.warning("step parked for an operator", extra={"step": step, "reason": reason})
                self._decision, self._awaiting = None, True
                if on_parked is not None:
                    await on_parked(step, reason)
                await _tell_parent(PARKED_SIGNAL, Parked(step=step, reason=reason))
                # Shown as parked only once the org's workflow has the signal in its history, so a
                # retry or abandon sent on seeing it is never refused as "nothing parked".
                self._tracker.park(reason)
                await workflow.wait_condition(lambda: self._decision is not None)
                decision, self._decision, self._awaiting = self._decision, None, False
                self._tracker.unpark()
                await _tell_parent(UNPARKED_SIGNAL)
                if decision == "abandon":
                    raise ApplicationError(
                        f"abandoned by an operator at {reason}", type=ABANDONED_ERROR_TYPE, non_retryable=True
                    ) from err


async def _tell_parent(signal: str, *args: object) -> None:
    """Signal the org entity that started this operation. Runs with no parent (every one started
    before the entity existed) send nothing, so their histories replay unchanged."""
    parent = workflow.info().parent
    if parent is not None:
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(signal, args=list(args))
