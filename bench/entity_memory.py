"""8. Memory per parked org entity: RSS of the memory benchmark's worker process (real workflows,
stand-in activities, default cache of 1,000 workflows) with N ``OrgWorkflow`` entities of active
orgs parked idle, waiting for commands (started as the API starts one for an org that existed
before its entity: adopting the record's status, so no activity runs), against the same worker
idle after a warm-up (an onboarding, its baseline and one entity).

    python -m bench.entity_memory [--quick] [--entities N]
"""

from __future__ import annotations

import secrets

from bench.common import cli, parse, save
from bench.memory import measure
from bench.workloads import org_row, start_org_entity
from domain.status import OrgStatus
from workflows.org import OrgWorkflow


async def start(client, tq: str):
    return await start_org_entity(client, tq, org_row(f"m{secrets.token_hex(5)}"))


async def parked(handle) -> bool:
    state = await handle.query(OrgWorkflow.state)
    return state.status == OrgStatus.active and state.operation is None and not state.queued


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--entities", type=int, default=None)
    a = p.parse_args(argv)
    n = a.entities or (100 if a.quick else 1000)
    res = await measure(n, start, parked, warm_up_kind=True)
    return save("entity_memory", {"params": {"entities": n, "max_cached_workflows": 1000}, "results": res})


if __name__ == "__main__":
    cli(main)
