"""1. Orchestration overhead: onboarding and provisioning end to end (external calls replaced by
fixed-latency stand-ins) against a trivial workflow running the same activities with the same
latencies on the same server and worker. One workflow at a time (idle latency).

    python -m bench.overhead [--quick] [--ext 0.05] [--db 0.005] [--reps N]
"""

from __future__ import annotations

import time

from bench.common import cli, goal, make_worker, new_queue, parse, save, summary, temporal_env
from bench.standins import StandIns
from bench.workloads import run_one

GOAL = 1.3


async def measure(reps: int, ext: float, db: float) -> dict:
    async with temporal_env() as env:
        tq = new_queue()
        standins = StandIns(env.client, ext=ext, db=db)
        async with make_worker(env.client, tq, standins.activities()):
            kinds = ["onboard", "baseline-onboard", "provision", "baseline-provision"]
            for kind in kinds * (1 if reps < 10 else 2):  # warm-up: sandbox imports, caches
                await run_one(env.client, tq, kind, ext, db)
            times: dict[str, list[float]] = {k: [] for k in kinds}
            for i in range(reps):
                # Interleaved, order alternated, so drift on the shared machine hits both sides.
                for kind in kinds if i % 2 == 0 else kinds[::-1]:
                    t = time.perf_counter()
                    await run_one(env.client, tq, kind, ext, db)
                    times[kind].append(time.perf_counter() - t)
    out = {}
    for wf in ("onboard", "provision"):
        real, base = summary(times[wf], 1000), summary(times[f"baseline-{wf}"], 1000)
        ratio_med = real["median"] / base["median"]
        ratio_p99 = real["p99"] / base["p99"]
        out[wf] = {
            "real_ms": real,
            "baseline_ms": base,
            "ratio_median": round(ratio_med, 3),
            "ratio_p99": round(ratio_p99, 3),
            "goal": f"ratio <= {GOAL}",
            "status": goal(ratio_med <= GOAL),
        }
    return out


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--ext", type=float, default=0.05, help="stand-in latency of an external call (s)")
    p.add_argument("--db", type=float, default=0.005, help="stand-in latency of a database write (s)")
    p.add_argument("--reps", type=int, default=None)
    a = p.parse_args(argv)
    reps = a.reps or (3 if a.quick else 30)
    res = await measure(reps, a.ext, a.db)
    return save(
        "overhead",
        {
            "params": {
                "reps": reps,
                "ext_latency_s": a.ext,
                "db_latency_s": a.db,
                "activities": {"onboard": 8, "provision": "5 + registration signal"},
            },
            "results": res,
        },
    )


if __name__ == "__main__":
    cli(main)
