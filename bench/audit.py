"""11. Audited writes per second with 50 orgs writing at once: the old single global advisory lock
(every audited write in the platform waited on ``pg_advisory_xact_lock(7_233_002)``) against the
per-org chains (a lock per org's chain). Each write is one transaction, as the repositories make
them: the org row's update and its audit record, committed. Both arms run in one process against
one embedded PostgreSQL (fsync on, as the local stack runs it), alternated in rounds so that load
on the machine weighs on both alike; the figure is the ratio of their rates.

    python -m bench.audit [--quick] [--orgs 50] [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import asyncio
import secrets
import time

from bench.common import Postgres, cli, parse, save

_OLD_GLOBAL_LOCK = 7_233_002


async def _writer(pool, org_id: str, global_lock: bool, stop_at: float) -> int:
    from db import audit

    done = 0
    while time.perf_counter() < stop_at:
        async with pool.connection() as conn, conn.transaction():
            if global_lock:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_OLD_GLOBAL_LOCK,))
            await conn.execute("UPDATE orgs SET updated_at = now() WHERE id = %s", (org_id,))
            await audit.append(conn, actor="bench", action="org.touch", outcome="ok", org_id=org_id, org_slug=org_id)
        done += 1
    return done


async def _arm(pool, orgs: list[str], global_lock: bool, seconds: float) -> float:
    stop_at = time.perf_counter() + seconds
    start = time.perf_counter()
    counts = await asyncio.gather(*(_writer(pool, org, global_lock, stop_at) for org in orgs))
    return sum(counts) / (time.perf_counter() - start)


async def main() -> dict:
    parser = parse(__doc__ or "")
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1

    from db import audit
    from db.pool import open_pool

    audit.configure(secrets.token_urlsafe(32))
    pg = await asyncio.to_thread(Postgres)
    try:
        pool = await open_pool(pg.url, min_size=args.orgs, max_size=args.orgs)
        orgs = [f"org_{secrets.token_hex(6)}" for _ in range(args.orgs)]
        async with pool.connection() as conn:
            for org in orgs:
                await conn.execute(
                    "INSERT INTO orgs (id, slug, name, plan, vpc_id, subnet_ids, status, neon_mode, request_hash) "
                    "VALUES (%s, %s, 'bench', 'pro', 'vpc-0', '{}', 'active', 'branch', 'x')",
                    (org, org),
                )
        rates: dict[str, list[float]] = {"global_lock": [], "per_org": []}
        await _arm(pool, orgs, False, 1.0)  # warm-up: connections, plans, the first record of each chain
        for _ in range(args.rounds):
            rates["global_lock"].append(await _arm(pool, orgs, True, args.seconds))
            rates["per_org"].append(await _arm(pool, orgs, False, args.seconds))
        async with pool.connection() as conn:
            check = await audit.verify_chain(conn)
        await pool.close()
    finally:
        pg.stop()
    best = {arm: round(max(values), 1) for arm, values in rates.items()}
    return save(
        "audit",
        {
            "orgs": args.orgs,
            "seconds_per_arm": args.seconds,
            "rounds": args.rounds,
            "results": {
                "writes_per_second": best,
                "every_round": {arm: [round(v, 1) for v in values] for arm, values in rates.items()},
                "per_org_over_global_lock": round(best["per_org"] / best["global_lock"], 2),
                "chain_verified": check.valid,
                "records": check.records,
            },
        },
    )


if __name__ == "__main__":
    cli(main)
