"""The product as the benchmarks that go through the API need it: embedded Postgres, a fresh
Temporal dev server, the real API as its own process (``python -m api``, so its RSS is its own)
and an in-process worker with the real workflows and database activities and stand-ins for the
external calls."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, Postgres, bench_settings, make_worker, new_queue, temporal_env
from bench.standins import StandIns
from bench.workloads import org_request
from domain.operations import org_workflow_id


class ApiStack:
    def __init__(self, ext: float = 0.05, park=lambda slug: False, **worker_options) -> None:
        self.ext, self.park, self.worker_options = ext, park, worker_options
        self.worker = None
        self.api: subprocess.Popen | None = None

    async def __aenter__(self) -> ApiStack:
        from db import audit
        from db.pool import open_pool
        from db.workspaces import WorkspaceRepo
        from devstack.procs import free_port

        self.pg = await asyncio.to_thread(Postgres)
        self._env_cm = temporal_env()
        self.env = await self._env_cm.__aenter__()
        self.client = self.env.client
        self.port = free_port()
        self.settings = bench_settings(
            self.pg.url, task_queue=new_queue(), api_port=self.port, public_url=f"http://127.0.0.1:{self.port}"
        )
        audit.configure(self.settings.audit_hmac_key.get_secret_value())
        self.pool = await open_pool(self.pg.url, max_size=10)
        self.standins = StandIns(
            self.client, ext=self.ext, db=0.0, park=self.park, park_seconds=3600, workspaces=WorkspaceRepo(self.pool)
        )
        await self.start_worker(**self.worker_options)
        self.start_api()
        self.http = aiohttp.ClientSession(base_url=self.url, connector=aiohttp.TCPConnector(limit=200))
        await self.wait_healthz()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def op(self) -> dict:
        return {"Authorization": f"Bearer {self.settings.provision_secret.get_secret_value()}"}

    async def start_worker(self, **options) -> None:
        from worker import build_activities

        real = build_activities(self.settings, self.pool, self.client)
        self.worker = make_worker(self.client, self.settings.task_queue, self.standins.activities(real), **options)
        self._worker_task = asyncio.create_task(self.worker.run())
        await asyncio.sleep(0.2)

    async def stop_worker(self) -> None:
        await self.worker.shutdown()
        self.worker = None

    def start_api(self) -> None:
        s = self.settings
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.client.service_client.config.target_host,
            "TEMPORAL_NAMESPACE": "default",
            "TENANTFLOW_DATABASE_URL": self.pg.url,
            "TENANTFLOW_PROVISION_SECRET": s.provision_secret.get_secret_value(),
            "TENANTFLOW_AUDIT_HMAC_KEY": s.audit_hmac_key.get_secret_value(),
            "TENANTFLOW_API_HOST": "127.0.0.1",
            "TENANTFLOW_API_PORT": str(self.port),
            "TENANTFLOW_PUBLIC_URL": self.url,
            "TENANTFLOW_TASK_QUEUE": s.task_queue,
            "TENANTFLOW_RATE_LIMIT_PER_MINUTE": str(s.rate_limit_per_minute),
            "TENANTFLOW_RATE_LIMIT_BURST": str(s.rate_limit_burst),
            "TENANTFLOW_LOG_LEVEL": "WARNING",
            "TENANTFLOW_AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        }
        self.api_log = Path(tempfile.mkstemp(prefix="tf-bench-api-", suffix=".log")[1])
        self.api = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.api_log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    async def wait_healthz(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with self.http.get("/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"API did not start: {self.api_log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)

    async def create_org(self, slug: str) -> dict:
        async with self.http.post("/api/v1/orgs", json=org_request(slug).model_dump(mode="json"), headers=self.op) as r:
            assert r.status == 202, (r.status, await r.text())
            return await r.json()

    async def command(self, slug: str, name: str) -> float:
        """``POST /api/v1/orgs/{slug}/{name}`` (suspend, resume) until its 202 is read; its latency (s)."""
        t = time.perf_counter()
        async with self.http.post(f"/api/v1/orgs/{slug}/{name}", headers=self.op) as r:
            body = await r.read()
        elapsed = time.perf_counter() - t
        if r.status != 202:
            raise RuntimeError(f"{name} of {slug}: {r.status} {body[:500]!r}")
        return elapsed

    async def wait_settled(self, org_id: str, status: str, timeout: float = 60) -> None:
        """Until the org's record has ``status`` (read from the database, not through the API) and
        its entity has nothing in flight: no workflow task, activity or child pending. The record
        alone is not enough: the entity still has to take in the result of the activity that wrote
        it, and a command sent meanwhile waits for that workflow task (and competes with it for
        the CPU) - 40-50 ms more here."""
        from db.orgs import OrgRepo

        repo, deadline = OrgRepo(self.pool), time.monotonic() + timeout
        while (row := await repo.get(org_id))["status"] != status:
            if time.monotonic() > deadline:
                raise TimeoutError(f"org {org_id} is {row['status']}, not {status}")
            await asyncio.sleep(0.01)
        entity = self.client.get_workflow_handle(org_workflow_id(org_id))
        while True:
            d = (await entity.describe()).raw_description
            if not (d.HasField("pending_workflow_task") or d.pending_activities or d.pending_children):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the entity of org {org_id} never settled")
            await asyncio.sleep(0.01)

    async def get_org(self, slug: str) -> dict:
        async with self.http.get(f"/api/v1/orgs/{slug}", headers=self.op) as r:
            return await r.json()

    async def progress_polls(self) -> dict[str, int]:
        """The API's live-progress lookups so far, by outcome (sent / joined / unavailable)."""
        async with self.http.get("/metrics") as r:
            text = await r.text()
        return {
            sample.labels["outcome"]: int(sample.value)
            for family in text_string_to_metric_families(text)
            if family.name == "tenantflow_api_progress_polls"
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    async def wait_org(self, slug: str, pred, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            org = await self.get_org(slug)
            if pred(org):
                return org
            assert time.monotonic() < deadline, org
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        if self.api is not None:
            self.api.terminate()
            try:
                self.api.wait(10)
            except subprocess.TimeoutExpired:
                self.api.kill()
        if self.worker is not None:
            await self.worker.shutdown()
        await self.pool.close()
        await self._env_cm.__aexit__(*exc)
        await asyncio.to_thread(self.pg.stop)
        if exc[0] is None:
            self.api_log.unlink(missing_ok=True)
