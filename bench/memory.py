"""5. Memory: RSS of a worker process (real workflows, stand-in activities, default cache of
1,000 workflows) with N provisioning workflows parked at wait_registration, against the same
worker idle (after a warm-up workflow of each kind). API RSS under 50 pollers: bench.polling.

    python -m bench.memory [--quick] [--workflows N]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil

from bench.common import ROOT, cli, goal, new_queue, parse, save, temporal_env
from bench.workloads import run_one, start_provision
from workflows.provision_workspace import ProvisionWorkspaceWorkflow

GOAL_MB_PER_1000 = 150.0


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def settled_rss(pid: int, seconds: float = 3.0) -> float:
    samples = []
    for _ in range(int(seconds / 0.25)):
        samples.append(rss(pid))
        await asyncio.sleep(0.25)
    return sorted(samples)[len(samples) // 2]


async def provision_parked(handle) -> bool:
    return (await handle.query(ProvisionWorkspaceWorkflow.progress)).step == "wait_registration"


async def wait_parked(handles: list, parked, n: int, timeout: float = 600) -> int:
    """Until ``parked(handle)`` holds for all ``handles`` (or the timeout); how many do."""
    count, deadline = 0, time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        count = sum([await parked(h) for h in handles])
        if count >= n:
            break
        await asyncio.sleep(1)
    return count


async def measure(n: int, start=start_provision, parked=provision_parked, warm_up_kind: bool = False) -> dict:
    """Worker RSS with ``n`` workflows started by ``start(client, task_queue)`` until ``parked(handle)``
    says each waits, against the same worker idle after a warm-up (one workflow of the measured
    kind too when ``warm_up_kind``)."""
    async with temporal_env() as env:
        tq = new_queue()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.worker_proc",
                "--address",
                env.client.service_client.config.target_host,
                "--task-queue",
                tq,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"ready"
            cold = await settled_rss(proc.pid, 2)
            for kind in ("onboard", "baseline-onboard"):
                await run_one(env.client, tq, kind, 0.01, 0.0)
            if warm_up_kind:
                await wait_parked([await start(env.client, tq)], parked, 1)
            warm = await settled_rss(proc.pid)
            sem = asyncio.Semaphore(50)

            async def start_one():
                async with sem:
                    return await start(env.client, tq)

            t0 = time.perf_counter()
            handles = await asyncio.gather(*(start_one() for _ in range(n)))
            n_parked = await wait_parked(handles, parked, n)
            park_s = time.perf_counter() - t0
            loaded = await settled_rss(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)
    delta = loaded - warm
    per_1000 = delta * 1000 / n
    return {
        "workflows_parked": n_parked,
        "seconds_to_park_all": round(park_s, 1),
        "worker_rss_mb": {"started": round(cold, 1), "idle_warm": round(warm, 1), "with_parked": round(loaded, 1)},
        "delta_mb": round(delta, 1),
        "delta_mb_per_1000": round(per_1000, 1),
        "kib_per_workflow": round(delta * 1024 / n, 1),
        "note": "quick runs park fewer workflows and scale the delta to 1,000" if n != 1000 else "",
    }


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--workflows", type=int, default=None)
    a = p.parse_args(argv)
    n = a.workflows or (100 if a.quick else 1000)
    res = await measure(n)
    res.update(
        goal=f"<= {GOAL_MB_PER_1000} MB above idle per 1,000", status=goal(res["delta_mb_per_1000"] <= GOAL_MB_PER_1000)
    )
    return save("memory", {"params": {"workflows": n, "max_cached_workflows": 1000}, "results": res})


if __name__ == "__main__":
    cli(main)
