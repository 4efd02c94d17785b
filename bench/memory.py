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


async def measure(n: int) -> dict:
    async with temporal_env() as env:
        tq = new_queue()
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker_proc", "--address",
                                 env.client.service_client.config.target_host, "--task-queue", tq],
                                cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"ready"
            cold = await settled_rss(proc.pid, 2)
            for kind in ("onboard", "baseline-onboard"):
                await run_one(env.client, tq, kind, 0.01, 0.0)
            warm = await settled_rss(proc.pid)
            sem = asyncio.Semaphore(50)

            async def start():
                async with sem:
                    return await start_provision(env.client, tq)

            t0 = time.perf_counter()
            handles = await asyncio.gather(*(start() for _ in range(n)))
            parked = 0
            deadline = time.perf_counter() + 600
            while parked < n and time.perf_counter() < deadline:
                parked = 0
                for h in handles:
                    if (await h.query(ProvisionWorkspaceWorkflow.progress)).step == "wait_registration":
                        parked += 1
                if parked < n:
                    await asyncio.sleep(1)
            park_s = time.perf_counter() - t0
            loaded = await settled_rss(proc.pid)
        finally:
            proc.terminate()
            proc.wait(15)
    delta = loaded - warm
    per_1000 = delta * 1000 / n
    return {"workflows_parked": parked, "seconds_to_park_all": round(park_s, 1),
            "worker_rss_mb": {"started": round(cold, 1), "idle_warm": round(warm, 1), "with_parked": round(loaded, 1)},
            "delta_mb": round(delta, 1), "delta_mb_per_1000": round(per_1000, 1),
            "kib_per_workflow": round(delta * 1024 / n, 1),
            "goal": f"<= {GOAL_MB_PER_1000} MB above idle per 1,000", "status": goal(per_1000 <= GOAL_MB_PER_1000),
            "note": "quick runs park fewer workflows and scale the delta to 1,000" if n != 1000 else ""}


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--workflows", type=int, default=None)
    a = p.parse_args(argv)
    n = a.workflows or (100 if a.quick else 1000)
    return save("memory", {"params": {"workflows": n, "max_cached_workflows": 1000}, "results": await measure(n)})


if __name__ == "__main__":
    cli(main)
