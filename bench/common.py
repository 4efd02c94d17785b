"""Shared helpers: servers started in-process (as tests/conftest.py does), statistics, results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("TENANTFLOW_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def binary(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float], scale: float = 1.0) -> dict:
    """median / p99 / mean / n of ``values`` (multiplied by ``scale``, e.g. 1000 for ms)."""
    v = [x * scale for x in values]
    return {
        "median": round(statistics.median(v), 3) if v else None,
        "p99": round(pct(v, 99), 3) if v else None,
        "mean": round(statistics.fmean(v), 3) if v else None,
        "min": round(min(v), 3) if v else None,
        "max": round(max(v), 3) if v else None,
        "n": len(v),
    }


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
    }


def rss_mb(pid: int | None = None) -> float:
    return psutil.Process(pid or os.getpid()).memory_info().rss / 2**20


@contextlib.asynccontextmanager
async def temporal_env():
    """A fresh Temporal dev server (in-memory), as the tests start it."""
    from domain.operations import SEARCH_ATTRIBUTES

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=binary("temporal"),
        search_attributes=[SearchAttributeKey.for_keyword(n) for n in SEARCH_ATTRIBUTES],
        dev_server_log_level="error",
    )
    try:
        yield env
    finally:
        await env.shutdown()


def make_worker(client: Client, task_queue: str, activities: list, **options: Any) -> Worker:
    """The product's worker configuration (worker.build_worker) plus the baseline workflows."""
    from bench.baseline import BaselineEntityWorkflow, BaselineWorkflow
    from worker import WORKFLOWS

    return Worker(
        client,
        task_queue=task_queue,
        workflows=[*WORKFLOWS, BaselineWorkflow, BaselineEntityWorkflow],
        activities=activities,
        graceful_shutdown_timeout=timedelta(seconds=2),
        **options,
    )


def new_queue() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def new_org_id() -> str:
    return f"org_{secrets.token_hex(6)}"


class Postgres:
    """The embedded PostgreSQL of the devstack, in a temporary directory."""

    def __init__(self) -> None:
        from devstack.postgres import ensure_database, start_postgres
        from devstack.procs import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="tf-bench-pg-"))
        self.server = start_postgres(self.dir, free_port())
        self.url = ensure_database(self.server, "tenantflow_bench")

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_settings(database_url: str, **extra: Any):
    from domain.settings import Settings

    return Settings(
        database_url=database_url,
        provision_secret=f"tfp_bench_{secrets.token_urlsafe(16)}",
        aws_endpoint_url="http://127.0.0.1:9",
        platform_cidr="10.0.0.0/16",
        neon_api_key="unused",
        neon_base_url="http://127.0.0.1:9/api/v2/",
        neon_project_id="bench",
        # The pollers are one credential: the limiter would otherwise dominate what is measured.
        rate_limit_per_minute=10_000_000.0,
        rate_limit_burst=1_000_000,
        log_level="WARNING",
        **{"audit_hmac_key": secrets.token_urlsafe(32), **extra},
    )


def save(name: str, result: dict) -> dict:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def goal(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "MISSED")


def parse(description: str, quick_default: bool = False):
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", default=quick_default, help="small smoke-run sizes")
    return parser


async def timed(coro) -> float:
    t = time.perf_counter()
    await coro
    return time.perf_counter() - t


def run(main) -> None:
    asyncio.run(main())


def cli(main) -> None:
    """Run a benchmark's ``main()`` and print its results."""
    result = asyncio.run(main())
    print(json.dumps(result.get("results", result), indent=1, default=str))
