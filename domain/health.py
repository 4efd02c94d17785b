"""Readiness: the platform database and Temporal both answer. Shared by the API and the worker."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client


async def readiness(pool: AsyncConnectionPool[Any], temporal: Client, timeout: float = 3.0) -> dict[str, str]:
    async def database() -> None:
        async with pool.connection(timeout=timeout) as conn:
            await conn.execute("SELECT 1")

    async def temporal_server() -> None:
        await temporal.service_client.check_health()

    checks = {"database": database, "temporal": temporal_server}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), timeout)
            results[name] = "ok"
        except Exception as err:  # noqa: BLE001 - reported, not raised: this is a probe
            results[name] = f"unavailable: {type(err).__name__}"
    return results
