"""2. Status polling: ``GET /api/v1/orgs/{slug}`` of a provisioning org whose workflow is parked
(in a long stand-in create_database, so the API runs the live progress query) under 1, 10 and 50
concurrent pollers, against a bare Temporal query of the same workflow from the same process.
Also: polls of a completed org (answered from the database), and of the parked org when the
worker caches no workflows (each query replays the history). API RSS is sampled under load.

    python -m bench.polling [--quick] [--seconds S]
"""

from __future__ import annotations

import asyncio
import secrets
import time

import psutil

from bench.common import cli, goal, parse, save, summary
from bench.stack import ApiStack
from workflows.onboard_org import OnboardOrgWorkflow

GOAL = 1.5


async def load(concurrency: int, seconds: float, call) -> dict:
    """``concurrency`` closed-loop pollers for ``seconds``; ``call`` returns True when the answer is right."""
    lat: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def poller() -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            try:
                ok = await call()
                if not ok:
                    errors["wrong_or_fallback"] = errors.get("wrong_or_fallback", 0) + 1
            except Exception as err:  # noqa: BLE001 - counted
                errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                continue
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(poller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {
        "latency_ms": summary(lat, 1000),
        "requests_per_s": round(len(lat) / elapsed, 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


async def sample_rss(pid: int, stop: asyncio.Event, into: list[float]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        into.append(proc.memory_info().rss / 2**20)
        await asyncio.sleep(0.2)


async def measure(seconds: float, levels: list[int], uncached_levels=(1, 10)) -> dict:
    async with ApiStack(park=lambda slug: slug.startswith("park")) as st:
        done, parked = f"done-{secrets.token_hex(3)}", f"park-{secrets.token_hex(3)}"
        await st.create_org(done)
        await st.wait_org(done, lambda o: o["status"] == "active")
        org = await st.create_org(parked)
        org = await st.wait_org(parked, lambda o: (o.get("progress") or {}).get("step") == "create_database")
        handle = st.client.get_workflow_handle(
            org["workflow_id"] if org.get("workflow_id") else f"org-onboard:{org['id']}"
        )
        done_org = await st.get_org(done)
        done_handle = st.client.get_workflow_handle(done_org["workflow_id"] or f"org-onboard:{done_org['id']}")

        async def api_parked() -> bool:
            async with st.http.get(f"/api/v1/orgs/{parked}", headers=st.op) as r:
                body = await r.json()
                return r.status == 200 and (body.get("progress") or {}).get("step") == "create_database"

        async def api_done() -> bool:
            async with st.http.get(f"/api/v1/orgs/{done}", headers=st.op) as r:
                body = await r.json()
                return r.status == 200 and body["status"] == "active"

        async def bare() -> bool:
            return (await handle.query(OnboardOrgWorkflow.progress)).step == "create_database"

        async def bare_done() -> bool:
            return (await done_handle.query(OnboardOrgWorkflow.progress)).status == "active"

        api_rss_idle = psutil.Process(st.api.pid).memory_info().rss / 2**20
        for c in (1, 10):  # warm-up
            await load(c, 1.0, api_parked)
            await load(c, 1.0, bare)
        out: dict = {"parked": {}}
        rss: list[float] = []
        for i, c in enumerate(levels):
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(st.api.pid, stop, rss)) if c == max(levels) else None
            pair = {}
            for name in ("api", "bare") if i % 2 == 0 else ("bare", "api"):
                before = await st.progress_polls()
                pair[name] = await load(c, seconds, api_parked if name == "api" else bare)
                if name == "api":
                    pair[name]["progress_lookups"] = delta(before, await st.progress_polls())
            stop.set()
            if sampler:
                await sampler
            ratio = pair["api"]["latency_ms"]["p99"] / pair["bare"]["latency_ms"]["p99"]
            out["parked"][f"pollers={c}"] = {
                "api": pair["api"],
                "bare_query": pair["bare"],
                "ratio_p99": round(ratio, 3),
                "ratio_median": round(pair["api"]["latency_ms"]["median"] / pair["bare"]["latency_ms"]["median"], 3),
            }
        top = out["parked"][f"pollers={max(levels)}"]
        top["goal"] = f"API p99 <= {GOAL}x bare p99 at {max(levels)} pollers, zero errors"
        top["status"] = goal(top["ratio_p99"] <= GOAL and top["api"]["errors"] == 0)
        out["api_rss_mb"] = {
            "idle": round(api_rss_idle, 1),
            "under_max_pollers_peak": round(max(rss), 1) if rss else None,
            "under_max_pollers_median": round(sorted(rss)[len(rss) // 2], 1) if rss else None,
        }
        c = max(levels)
        out["completed_org"] = {
            f"pollers={c}": {"api": await load(c, seconds, api_done)},
            "pollers=10": {"bare_query_of_closed_workflow": await load(10, seconds, bare_done)},
        }
    # Uncached: a worker that keeps no workflow in its cache replays the history on every query
    # (a stack of its own: restarting a worker leaves queries on the old sticky queue for a while).
    async with ApiStack(park=lambda slug: slug.startswith("park"), max_cached_workflows=0) as st:
        parked = f"park-{secrets.token_hex(3)}"
        org = await st.create_org(parked)
        await st.wait_org(parked, lambda o: (o.get("progress") or {}).get("step") == "create_database")
        handle = st.client.get_workflow_handle(f"org-onboard:{org['id']}")
        await load(10, 1.0, api_parked)
        # Sequential polls replay fine; concurrent queries of one uncached run are dropped by the
        # SDK core ("leftover buffered tasks when evicting run") and time out (the bare side shows
        # it); the API sends one query per workflow at a time, so its pollers are not dropped.
        out["uncached_parked"] = {}
        for c in uncached_levels:
            before = await st.progress_polls()
            api = await load(c, seconds, api_parked)
            api["progress_lookups"] = delta(before, await st.progress_polls())
            out["uncached_parked"][f"pollers={c}"] = {"api": api, "bare_query": await load(c, seconds, bare)}
    return out


async def main(argv=None) -> dict:
    p = parse(__doc__)
    p.add_argument("--seconds", type=float, default=None, help="duration of each load phase")
    a = p.parse_args(argv)
    seconds = a.seconds or (1.0 if a.quick else 8.0)
    # Quick runs skip the 10-poller uncached phase: its dropped queries each wait out a 30 s timeout.
    res = await measure(seconds, [1, 10, 50], (1,) if a.quick else (1, 10))
    return save(
        "polling",
        {
            "params": {"seconds_per_phase": seconds, "levels": [1, 10, 50], "progress_query_timeout_s": 2.0},
            "results": res,
        },
    )


if __name__ == "__main__":
    cli(main)
