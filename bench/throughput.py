"""4. Throughput: N concurrent onboardings (stand-ins for the external calls) against the trivial
baseline workflow with the same activities and latencies at the same N, on a fresh dev server
per repetition (closed workflows slow the in-memory server), order alternated.

    python -m bench.throughput [--quick] [--sizes 10,100,500] [--reps N]
"""

from __future__ import annotations

import asyncio
import time

from bench.common import cli, goal, make_worker, new_queue, parse, save, summary, temporal_env
from bench.standins import StandIns
from bench.workloads import run_one

GOAL = 0.7


async def batch(client, tq, kind: str, n: int, ext: float, db: float) -> tuple[float, list[float]]:
    lat: list[float] = []

    async def one() -> None:
        t = time.perf_counter()
        await run_one(client, tq, kind, ext, db)
        lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0), lat


async def measure(sizes: list[int], reps: int, ext: float, db: float) -> dict:
    out = {}
    for n in sizes:
        rates: dict[str, list[float]] = {"onboard": [], "baseline-onboard": []}
        lats: dict[str, list[float]] = {"onboard": [], "baseline-onboard": []}
        for rep in range(reps if n <= 100 else 1):  # N=500: one repetition (minutes each)
            async with temporal_env() as env:
                tq = new_queue()
                async with make_worker(env.client, tq, StandIns(env.client, ext=ext, db=db).activities()):
                    for kind in ("onboard", "baseline-onboard"):  # warm-up
                        await run_one(env.client, tq, kind, ext, db)
                    order = ["onboard", "baseline-onboard"] if rep % 2 == 0 else ["baseline-onboard", "onboard"]
                    for kind in order:
                        rate, lat = await batch(env.client, tq, kind, n, ext, db)
                        rates[kind].append(rate)
                        lats[kind].extend(lat)
        real, base = summary(rates["onboard"]), summary(rates["baseline-onboard"])
        ratio = real["median"] / base["median"]
        out[f"N={n}"] = {
            "n": n,
            "onboard_wf_per_s": real,
            "baseline_wf_per_s": base,
            "ratio_median": round(ratio, 3),
            "onboard_latency_ms": summary(lats["onboard"], 1000),
            "baseline_latency_ms": summary(lats["baseline-onboard"], 1000),
            "goal": f"ratio >= {GOAL} at N=100",
            "status": goal(ratio >= GOAL) if n == 100 else "n/a",
        }
    return out


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--sizes", default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--ext", type=float, default=0.05)
    p.add_argument("--db", type=float, default=0.005)
    a = p.parse_args(argv)
    sizes = [int(x) for x in (a.sizes or ("10" if a.quick else "10,100,500")).split(",")]
    reps = a.reps or (1 if a.quick else 3)
    res = await measure(sizes, reps, a.ext, a.db)
    return save(
        "throughput",
        {
            "params": {
                "sizes": sizes,
                "reps": reps,
                "ext_latency_s": a.ext,
                "db_latency_s": a.db,
                "activities_per_workflow": 8,
            },
            "results": res,
        },
    )


if __name__ == "__main__":
    cli(main)
