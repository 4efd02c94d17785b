"""7. Org entity commands: ``POST /api/v1/orgs/{slug}/suspend`` (and ``/resume``) until its 202 -
an Update-with-Start of the org's ``OrgWorkflow`` whose validator checks the state and whose handler
records the new status with the real ``transition_org`` activity before it answers - against a bare
``handle.execute_update`` (no start, no validator, no HTTP) of ``BaselineEntityWorkflow``, whose
Update runs the same ``transition_org`` (same database write, on a row of its own). Same server,
worker and database. Each cycle: suspend, wait until settled (the child workflow finished, the
org is recorded suspended and the entity is idle), resume, wait until settled; a bare update
before or after each command, alternated. A third arm sends the same Update-with-Start from this
process (no HTTP, auth or record lookup), to split the API's cost from Temporal's.

    python -m bench.commands [--quick] [--cycles N]
"""

from __future__ import annotations

import secrets
import time
from datetime import timedelta

from bench.baseline import BaselineEntityWorkflow
from bench.common import cli, goal, parse, save, summary
from bench.stack import ApiStack
from bench.workloads import insert_active_org
from domain.operations import Operation, operation_workflow_id, org_entity_start, org_workflow_id, with_start
from domain.org_entity import OrgTransition, ResumeCommand, SuspendCommand
from domain.status import OrgStatus
from workflows.org import OrgWorkflow

GOAL = 1.5
SETTLED = {"suspend": OrgStatus.suspended.value, "resume": OrgStatus.active.value}


def ratios(measured: dict, base: dict) -> dict:
    return {
        "ratio_median": round(measured["median"] / base["median"], 3),
        "ratio_p99": round(measured["p99"] / base["p99"], 3),
    }


class Arms:
    """The three ways of sending a command, each timed into its own list."""

    def __init__(self, st: ApiStack, org: dict, base_row: dict, baseline) -> None:
        self.st, self.org, self.base_row, self.baseline = st, org, base_row, baseline
        self.times: dict[str, list[float]] = {
            "api_suspend": [],
            "api_resume": [],
            "direct_suspend": [],
            "direct_resume": [],
            "bare": [],
        }
        self._bare_status = OrgStatus.resuming

    async def api(self, name: str, record: bool) -> None:
        elapsed = await self.st.command(self.org["slug"], name)
        await self.st.wait_settled(self.org["id"], SETTLED[name])
        if record:
            self.times[f"api_{name}"].append(elapsed)

    async def direct(self, name: str, record: bool) -> None:
        """The API's own call (api.commands.send_command), from this process."""
        from api.commands import entity_input

        row = await self._row()
        operation = with_start(
            OrgWorkflow.run,
            entity_input(row, new=False),
            org_entity_start(row["id"], row["slug"], row["plan"]),
            task_queue=self.st.settings.task_queue,
        )
        update, arg = (
            (OrgWorkflow.suspend, SuspendCommand()) if name == "suspend" else (OrgWorkflow.resume, ResumeCommand())
        )
        t = time.perf_counter()
        await self.st.client.execute_update_with_start_workflow(
            update, arg, start_workflow_operation=operation, rpc_timeout=timedelta(seconds=30)
        )
        elapsed = time.perf_counter() - t
        await self.st.wait_settled(self.org["id"], SETTLED[name])
        if record:
            self.times[f"direct_{name}"].append(elapsed)

    async def _row(self) -> dict:
        from db.orgs import OrgRepo

        return await OrgRepo(self.st.pool).get(self.org["id"])

    async def bare(self, record: bool) -> None:
        # The entity's write, alternating like suspend/resume: status, operation and its workflow id.
        self._bare_status = OrgStatus.suspending if self._bare_status == OrgStatus.resuming else OrgStatus.resuming
        op = Operation.suspend if self._bare_status == OrgStatus.suspending else Operation.resume
        change = OrgTransition(
            org_id=self.base_row["id"],
            status=self._bare_status,
            only_from=list(OrgStatus),
            actor="operator",
            operation=op.value,
            workflow_id=operation_workflow_id(op, self.base_row["id"]),
        )
        t = time.perf_counter()
        await self.baseline.execute_update(BaselineEntityWorkflow.command, change)
        if record:
            self.times["bare"].append(time.perf_counter() - t)

    async def cycle(self, i: int, record: bool) -> None:
        """API suspend/resume, direct suspend/resume, four bare updates; order alternated."""
        steps = [
            lambda: self.api("suspend", record),
            lambda: self.bare(record),
            lambda: self.api("resume", record),
            lambda: self.bare(record),
            lambda: self.direct("suspend", record),
            lambda: self.bare(record),
            lambda: self.direct("resume", record),
            lambda: self.bare(record),
        ]
        if i % 2:  # each bare update before its command instead of after it
            steps = [s for pair in zip(steps[1::2], steps[0::2], strict=False) for s in pair]
        for step in steps:
            await step()


async def measure(cycles: int, warmup: int) -> dict:
    async with ApiStack(ext=0.01) as st:
        slug = f"cmd-{secrets.token_hex(3)}"
        org = await st.create_org(slug)
        await st.wait_settled(org["id"], OrgStatus.active.value)
        base_row = await insert_active_org(st.pool)
        baseline = await st.client.start_workflow(
            BaselineEntityWorkflow.run, id=f"baseline-entity-{secrets.token_hex(4)}", task_queue=st.settings.task_queue
        )
        arms = Arms(st, org, base_row, baseline)
        t0 = time.perf_counter()
        for i in range(warmup + cycles):
            await arms.cycle(i, record=i >= warmup)
        seconds = time.perf_counter() - t0
        entity_id = org_workflow_id(org["id"])
        history = (await st.client.get_workflow_handle(entity_id).describe()).history_length
        runs = len([w async for w in st.client.list_workflows(f"WorkflowId = '{entity_id}'")])
    t = arms.times
    bare = summary(t["bare"], 1000)
    api_all = summary(t["api_suspend"] + t["api_resume"], 1000)
    direct_all = summary(t["direct_suspend"] + t["direct_resume"], 1000)
    out = {
        "api_ms": {
            "suspend": summary(t["api_suspend"], 1000),
            "resume": summary(t["api_resume"], 1000),
            "all": api_all,
        },
        "direct_update_with_start_ms": {
            "suspend": summary(t["direct_suspend"], 1000),
            "resume": summary(t["direct_resume"], 1000),
            "all": direct_all,
        },
        "bare_update_ms": bare,
        **ratios(api_all, bare),
        "direct_vs_bare": ratios(direct_all, bare),
        "api_vs_direct": ratios(api_all, direct_all),
        "entity": {"runs": runs, "history_length_of_last_run": history},
        "seconds": round(seconds, 1),
    }
    out["goal"] = f"API p99 <= {GOAL}x bare update p99"
    out["status"] = goal(out["ratio_p99"] <= GOAL)
    return out


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--cycles", type=int, default=None, help="suspend/resume cycles per arm")
    a = p.parse_args(argv)
    cycles = a.cycles or (8 if a.quick else 100)
    warmup = 2
    return save(
        "commands",
        {
            "params": {
                "cycles": cycles,
                "warmup_cycles": warmup,
                "samples_per_arm": {"api": 2 * cycles, "direct": 2 * cycles, "bare": 4 * cycles},
            },
            "results": await measure(cycles, warmup),
        },
    )


if __name__ == "__main__":
    cli(main)
