"""9. Evicted round trip: ``POST /api/v1/orgs/{slug}/suspend`` until its 202 when the org's entity
is not in the worker's cache, so the Update's workflow task replays the entity's whole history
first, by history size; against the cached round trip of the same command on the same entities in
the same run.

Entities of active orgs (records in the database, entity started as the API starts one, with a
high ``history_limit`` so they do not continue as new) are grown to about 10, 100 and 1,000 history
events with suspend/resume cycles (and a quota Update or two to top up). Each repetition restarts
the in-process worker (a new worker caches nothing; the old one's sticky queue is released on
shutdown), warms it with one command to an entity of its own, then per size: suspend (evicted,
timed), resume (cached, timed), suspend (cached, timed), each waited on until settled (recorded,
and the entity idle).

    python -m bench.evicted [--quick] [--reps N] [--sizes 10,100,1000]
"""

from __future__ import annotations

import asyncio
import secrets

from bench.commands import SETTLED
from bench.common import cli, parse, save, summary
from bench.stack import ApiStack
from bench.workloads import insert_active_org, start_org_entity
from domain.org_entity import QuotaCommand, ResumeCommand, SuspendCommand
from workflows.org import OrgWorkflow

HISTORY_LIMIT = 1_000_000


async def history_length(handle) -> int:
    return (await handle.describe()).history_length


class Entity:
    def __init__(self, st: ApiStack, row: dict, handle) -> None:
        self.st, self.row, self.handle = st, row, handle

    @classmethod
    async def new(cls, st: ApiStack) -> Entity:
        row = await insert_active_org(st.pool, f"ev-{secrets.token_hex(4)}")
        handle = await start_org_entity(st.client, st.settings.task_queue, row, history_limit=HISTORY_LIMIT)
        return cls(st, row, handle)

    async def grow(self, target: int) -> int:
        """Bare Updates (no API) until the history has about ``target`` events."""
        cycle = 50  # events a suspend/resume cycle adds; learnt from the first one
        while (n := await history_length(self.handle)) < target:
            if target - n >= cycle:
                for update, arg in ((OrgWorkflow.suspend, SuspendCommand()), (OrgWorkflow.resume, ResumeCommand())):
                    await self.handle.execute_update(update, arg)
                    await self.st.wait_settled(self.row["id"], SETTLED[update.__name__])
                cycle = await history_length(self.handle) - n
            else:
                await self.handle.execute_update(OrgWorkflow.set_quota, QuotaCommand(max_workspaces=10 + n))
        return n

    async def command(self, name: str) -> float:
        elapsed = await self.st.command(self.row["slug"], name)
        await self.st.wait_settled(self.row["id"], SETTLED[name])
        return elapsed


async def measure(sizes: list[int], reps: int) -> dict:
    async with ApiStack(ext=0.01) as st:
        entities = {(rep, size): await Entity.new(st) for rep in range(reps) for size in sizes}
        warmers = [await Entity.new(st) for _ in range(reps)]
        sem = asyncio.Semaphore(3)

        async def grow(entity: Entity, size: int) -> None:
            async with sem:
                await entity.grow(size)

        await asyncio.gather(*(grow(e, size) for (_, size), e in entities.items()))
        rows: list[dict] = []
        for rep in range(reps):
            await st.stop_worker()
            await st.start_worker()
            await warmers[rep].command("suspend")  # the new worker's first activations, discarded
            for size in sizes if rep % 2 == 0 else sizes[::-1]:
                e = entities[(rep, size)]
                events = await history_length(e.handle)
                rows.append(
                    {
                        "target": size,
                        "events": events,
                        "evicted_suspend": await e.command("suspend"),
                        "cached_resume": await e.command("resume"),
                        "cached_suspend": await e.command("suspend"),
                    }
                )
        continued = [
            e.row["slug"] for e in entities.values() if (await e.handle.describe()).run_id != e.handle.result_run_id
        ]
    out: dict = {"by_size": {}, "entities_that_continued_as_new": continued}
    cached_all = [r["cached_suspend"] for r in rows] + [r["cached_resume"] for r in rows]
    out["cached_ms_all_sizes"] = summary(cached_all, 1000)
    for size in sizes:
        mine = [r for r in rows if r["target"] == size]
        evicted = summary([r["evicted_suspend"] for r in mine], 1000)
        cached = summary([r["cached_suspend"] for r in mine], 1000)
        out["by_size"][f"~{size}"] = {
            "history_events": sorted({r["events"] for r in mine}),
            "evicted_suspend_ms": evicted,
            "cached_suspend_ms": cached,
            "cached_resume_ms": summary([r["cached_resume"] for r in mine], 1000),
            "ratio_median_evicted_to_cached": round(evicted["median"] / cached["median"], 3),
        }
    out["samples"] = [{k: (round(v * 1000, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    return out


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--reps", type=int, default=None, help="worker restarts (one evicted command per size each)")
    p.add_argument("--sizes", default=None, help="history sizes (events), comma-separated (default 10,100,1000)")
    a = p.parse_args(argv)
    sizes = [int(x) for x in (a.sizes or ("10,100,300" if a.quick else "10,100,1000")).split(",")]
    reps = a.reps or (1 if a.quick else 5)
    return save(
        "evicted",
        {
            "params": {"sizes": sizes, "reps": reps, "history_limit": HISTORY_LIMIT},
            "results": await measure(sizes, reps),
        },
    )


if __name__ == "__main__":
    cli(main)
