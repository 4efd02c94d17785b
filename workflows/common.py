"""What every tenantflow workflow shares: retry policies, progress reporting, failure reasons."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, TimeoutError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from domain.models import Progress
    from domain.org_entity import Parked

# Signals an operation run by the org entity sends its parent, so that the entity's validators
# know when a step waits for an operator's retry or abandon.
PARKED_SIGNAL = "operation_parked"
UNPARKED_SIGNAL = "operation_unparked"

# Transient faults (throttling, 423/429/5xx) back off up to 30 s; permanent ones are raised
# non-retryable by the activities and stop the retries at once.
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=30))
# A single call to an external API; the whole step (with its retries) gets schedule_to_close.
CALL_TIMEOUT = timedelta(seconds=60)
STEP_DEADLINE = timedelta(minutes=10)
# Cleanup must finish: it keeps retrying far longer than a forward step.
CLEANUP_DEADLINE = timedelta(hours=1)
# A waiting activity (instances, Neon operations, another workflow's cleanup) heartbeats while it
# waits: each attempt may take a whole step, and a worker lost mid-wait is noticed in 30 s.
WAITING: dict[str, Any] = {"start_to_close_timeout": STEP_DEADLINE, "heartbeat_timeout": CALL_TIMEOUT / 2}
# A cancelled activity that creates or powers something is waited for, so whatever runs next
# (compensation, a delete's cascade) sees everything it did.
FINISH_FIRST = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
_NO_ARG = object()


async def run_activity(method: Callable, arg: Any = _NO_ARG, summary: str = "", *,
                       deadline: timedelta = STEP_DEADLINE, **options: Any) -> Any:
    """An activity under the shared retry policy: by default one external call (``CALL_TIMEOUT``
    per attempt), every attempt within ``deadline``; ``**WAITING`` for one that waits."""
    options.setdefault("start_to_close_timeout", CALL_TIMEOUT)
    args = () if arg is _NO_ARG else (arg,)
    return await workflow.execute_activity_method(method, *args, summary=summary, retry_policy=RETRY,
                                                  schedule_to_close_timeout=deadline, **options)


class ProgressTracker:
    """Keeps the ``progress`` query answer and the UI's current details in step."""

    def __init__(self, operation: str, steps: list[str], status: str):
        self.steps = steps
        self.progress = Progress(operation=operation, step="starting", steps_done=0,
                                 steps_total=len(steps), status=status)
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
        self._publish(extra="**waiting for an operator**: fix the cause, then send the signal `retry` "
                            "(or `abandon` to stop here)")

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


class OperatorGate:
    """Parks a workflow on a failed step until an operator decides: ``retry`` or ``abandon``.

    The workflow exposes the decision as signals (usable from the Temporal UI and CLI) and calls
    :meth:`run_step`; a permanently failed step never makes the workflow vanish.
    """

    def __init__(self, tracker: ProgressTracker):
        self._tracker = tracker
        self._decision: str | None = None

    def decide(self, decision: str) -> None:
        if self._tracker.progress.waiting_for_operator:
            self._decision = decision

    async def run_step(self, step: str, action, on_parked=None):
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
                self._tracker.park(reason)
                workflow.logger.warning("step parked for an operator", extra={"step": step, "reason": reason})
                if on_parked is not None:
                    await on_parked(step, reason)
                self._decision = None
                await _tell_parent(PARKED_SIGNAL, Parked(step=step, reason=reason))
                await workflow.wait_condition(lambda: self._decision is not None)
                decision, self._decision = self._decision, None
                self._tracker.unpark()
                await _tell_parent(UNPARKED_SIGNAL)
                if decision == "abandon":
                    raise ApplicationError(f"abandoned by an operator at {reason}", type="TeardownAbandoned",
                                           non_retryable=True) from err


async def _tell_parent(signal: str, *args: object) -> None:
    """Signal the org entity that started this operation. Runs with no parent (every one started
    before the entity existed) send nothing, so their histories replay unchanged."""
    parent = workflow.info().parent
    if parent is not None:
        await workflow.get_external_workflow_handle(parent.workflow_id).signal(signal, args=list(args))
