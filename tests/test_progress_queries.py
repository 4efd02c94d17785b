"""api.progress.ProgressQueries: concurrent status polls share one Temporal query per workflow,
against the real dev server and a real worker (with and without a workflow cache)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from api.observability import create_metrics
from api.progress import ProgressQueries
from domain.operations import Progress


@activity.defn
async def hold() -> None:
    """Stands in for a long external call (the worker's shutdown cancels it)."""
    await asyncio.sleep(600)


@workflow.defn(sandboxed=False)
class ParkedWorkflow:
    """Parked in a long activity, like an onboarding waiting on a slow Neon operation."""

    def __init__(self) -> None:
        self.step = "parked"

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(hold, start_to_close_timeout=timedelta(minutes=15))

    @workflow.signal
    def advance(self, step: str) -> None:
        self.step = step

    @workflow.query
    def progress(self) -> Progress:
        return Progress(operation="test", step=self.step, steps_done=1, steps_total=2, status="running")


class CountedQueries(ProgressQueries):
    def __init__(self, dev_env, timeout_seconds: float):
        self.metrics = create_metrics()
        super().__init__(dev_env.client, timeout_seconds, self.metrics["progress_polls"])

    def polls(self, outcome: str) -> int:
        return int(
            self.metrics["registry"].get_sample_value("tenantflow_api_progress_polls_total", {"outcome": outcome}) or 0
        )

    @property
    def sent(self) -> int:
        return self.polls("sent")


def parked_worker(dev_env, task_queue: str, **options) -> Worker:
    return Worker(
        dev_env.client,
        task_queue=task_queue,
        workflows=[ParkedWorkflow],
        activities=[hold],
        workflow_runner=UnsandboxedWorkflowRunner(),
        **options,
    )


async def start_parked(dev_env, task_queue: str):
    return await dev_env.client.start_workflow(
        ParkedWorkflow.run, id=f"parked-{uuid.uuid4().hex[:8]}", task_queue=task_queue
    )


async def test_concurrent_polls_share_one_query_and_later_polls_see_new_state(dev_env, task_queue):
    queries = CountedQueries(dev_env, timeout_seconds=5)
    async with parked_worker(dev_env, task_queue):
        handle = await start_parked(dev_env, task_queue)
        answers = await asyncio.gather(*(queries.get(handle.id) for _ in range(50)))
        assert [a.step if a else None for a in answers] == ["parked"] * 50
        assert queries.sent == 1 and queries.polls("joined") == 49

        await handle.signal(ParkedWorkflow.advance, "second")
        # A poll after the shared query finished asks again: it never gets an answer older than itself.
        answer = await queries.get(handle.id)
        assert answer is not None and answer.step == "second"
        assert queries.sent == 2
        await handle.terminate("test done")


async def test_concurrent_polls_of_an_uncached_run_all_get_answers(dev_env, task_queue):
    """With no workflow cache every query replays the history; concurrent queries of one such run
    are dropped by the SDK (temporalio 1.x: "leftover buffered tasks when evicting run") and time
    out, so sharing one query is what keeps them answered."""
    queries = CountedQueries(dev_env, timeout_seconds=5)
    async with parked_worker(dev_env, task_queue, max_cached_workflows=0):
        handle = await start_parked(dev_env, task_queue)
        for _ in range(3):
            answers = await asyncio.gather(*(queries.get(handle.id) for _ in range(10)))
            assert all(a is not None and a.step == "parked" for a in answers), answers
        assert queries.sent == 3
        await handle.terminate("test done")


async def test_a_poller_that_gives_up_does_not_cancel_the_shared_query(dev_env, task_queue):
    queries = CountedQueries(dev_env, timeout_seconds=5)
    async with parked_worker(dev_env, task_queue):
        handle = await start_parked(dev_env, task_queue)
        quitter = asyncio.create_task(queries.get(handle.id))
        stayer = asyncio.create_task(queries.get(handle.id))
        await asyncio.sleep(0)
        quitter.cancel()
        answer = await stayer
        assert quitter.cancelled()
        assert answer is not None and answer.step == "parked"
        assert queries.sent == 1
        await handle.terminate("test done")


async def test_no_worker_answers_none_within_the_timeout_and_forgets_the_query(dev_env, task_queue):
    queries = CountedQueries(dev_env, timeout_seconds=0.5)
    handle = await start_parked(dev_env, task_queue)  # no worker polls this task queue
    loop = asyncio.get_running_loop()
    started = loop.time()
    answers = await asyncio.gather(*(queries.get(handle.id) for _ in range(5)))
    assert answers == [None] * 5 and queries.polls("unavailable") == 5
    assert loop.time() - started < 3
    # The shared query's own RPC deadline (0.5 s) passes too, and then it is forgotten; the
    # deadline is enforced by the SDK's core, which may be late on a loaded machine.
    for _ in range(100):
        if not queries._in_flight:
            break
        await asyncio.sleep(0.05)
    assert not queries._in_flight
    await handle.terminate("test done")
