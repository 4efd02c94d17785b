"""11. What the shared rate limits cost: requests per second of a cheap authenticated GET
(``GET /api/v1/keys`` with an org key: authentication, one list query) with the Postgres token
bucket in the path, against the same app whose bucket admits without asking anyone, in one run.

    python -m bench.ratelimit [--quick] [--seconds S] [--concurrency N]
"""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp
from aiohttp import web

from api.app import create_app
from api.ratelimit import RATE_LIMITS
from bench.common import Postgres, bench_settings, cli, parse, save, summary
from db.pool import open_pool
from devstack.procs import free_port
from tests.helpers import active_org_key


class AdmitAll:
    """The baseline: a bucket that never asks the database."""

    async def take(self, key: str, *, per_minute: float, burst: int) -> float:
        return 0.0

    async def sweep(self, *, idle_seconds: float) -> int:
        return 0


async def seed_key(database_url: str) -> str:
    pool = await open_pool(database_url, max_size=2)
    try:
        return await active_org_key(pool, f"bench-{secrets.token_hex(4)}")
    finally:
        await pool.close()


async def measure(url: str, key: str, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:

        async def client() -> None:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                async with session.get(f"{url}/api/v1/keys") as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                latencies.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": summary(latencies, 1000),
        "statuses": statuses,
    }


async def main() -> dict:
    parser = parse(__doc__ or "")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    pg = Postgres()
    try:
        settings = bench_settings(pg.url, api_port=free_port())
        key = await seed_key(pg.url)
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.api_port).start()
        url = f"http://127.0.0.1:{settings.api_port}"
        limits = runner.app[RATE_LIMITS]
        shared_store = limits.store
        results = {}
        try:
            await measure(url, key, 1.0, args.concurrency)  # warm-up: pools, caches
            # Alternate, twice each, so that drift on a shared machine hits both alike.
            for round_ in range(2):
                for name, store in (("without_limit", AdmitAll()), ("with_shared_limit", shared_store)):
                    limits.store = store  # type: ignore[assignment]
                    results[f"{name}_{round_}"] = await measure(url, key, seconds / 2, args.concurrency)
        finally:
            await runner.cleanup()
    finally:
        pg.stop()
    rate = {
        name: sum(results[f"{name}_{r}"]["requests_per_s"] for r in range(2)) / 2
        for name in ("without_limit", "with_shared_limit")
    }
    return save(
        "ratelimit",
        {
            "results": {
                "requests_per_s": rate,
                "ratio_with_to_without": round(rate["with_shared_limit"] / rate["without_limit"], 3),
                "concurrency": args.concurrency,
                "seconds_each": seconds,
                "runs": results,
            }
        },
    )


if __name__ == "__main__":
    cli(main)
