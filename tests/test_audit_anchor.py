"""Anchoring: a Temporal Schedule runs a workflow whose activity writes every audit chain's head to
an S3 bucket with Object Lock (moto's S3 server); nobody can delete an anchor, a deleted newest
record is named against it through the API, and a broken chain is never anchored."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import uuid

import boto3
import psycopg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from botocore.exceptions import ClientError
from pydantic import SecretStr
from temporalio.client import WorkflowFailureError

import starter
from api.app import create_app
from db import audit
from db.audit_anchors import AnchorStore, AnchorStoreError, s3_client
from db.pool import open_pool
from devstack.postgres import app_role_url, ensure_database
from domain.audit import AUDIT_ANCHOR_WORKFLOW_ID
from tests.conftest import anchor_bucket
from worker import build_worker, ensure_audit_anchor_schedule
from workflows.audit_anchor import AuditAnchorWorkflow

ORG = "org_0000000000aa"


@pytest_asyncio.fixture
async def own(pg, app_role_password, settings, s3_url):
    """Settings, a pool and a bucket of their own: the tests delete records behind the trigger."""
    name = f"anchor_{secrets.token_hex(4)}"
    owner_url = ensure_database(pg, name)
    mine = settings.model_copy(
        update={
            "database_url": SecretStr(app_role_url(pg, name, app_role_password)),
            "migration_database_url": SecretStr(owner_url),
            "audit_anchor_bucket": anchor_bucket(s3_url),
        }
    )
    pool = await open_pool(mine.database_url.get_secret_value(), migration_url=owner_url, max_size=4)
    yield mine, pool, owner_url
    await pool.close()


async def write(pool, n: int = 3, slug: str = "acme") -> None:
    for i in range(n):
        async with pool.connection() as conn, conn.transaction():
            await audit.append(conn, actor="operator", action=f"t.{i}", outcome="ok", org_id=ORG, org_slug=slug)


async def delete_newest(owner_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as owner:
        await owner.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        row = await (
            await owner.execute("DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log) RETURNING seq")
        ).fetchone()
        await owner.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    assert row is not None
    return int(row[0])


async def cli(api: TestClient, settings, *argv: str) -> tuple[int, str]:
    """``starter.py`` against the test server; its exit status and its last line."""
    out = io.StringIO()
    url = str(api.make_url("/")).rstrip("/")
    os.environ["TENANTFLOW_PROVISION_SECRET"] = settings.provision_secret.get_secret_value()
    try:
        code = await asyncio.to_thread(starter.main, ["--api-url", url, *argv], out)
    finally:
        del os.environ["TENANTFLOW_PROVISION_SECRET"]
    return code, out.getvalue().splitlines()[-1]


async def run_anchor(dev_env, settings, pool, task_queue):
    async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
        return await dev_env.client.execute_workflow(
            AuditAnchorWorkflow.run, id=f"{AUDIT_ANCHOR_WORKFLOW_ID}-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )


async def test_anchors_are_write_once_and_name_deleted_newest_records(dev_env, own, task_queue):
    settings, pool, owner_url = own
    await write(pool)
    written = await run_anchor(dev_env, settings, pool, task_queue)
    assert written.chains == 1 and written.records == 3

    s3 = s3_client(settings)
    bucket = settings.audit_anchor_bucket
    head = s3.head_object(Bucket=bucket, Key=written.key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    version = s3.list_object_versions(Bucket=bucket)["Versions"][0]["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=bucket, Key=written.key, VersionId=version)
    anchor = AnchorStore.from_settings(settings).newest()
    assert anchor is not None and anchor.heads[ORG].org_slug == "acme"

    app = create_app(settings, temporal=dev_env.client)
    async with TestClient(TestServer(app)) as api:
        api.session.headers["Authorization"] = f"Bearer {settings.provision_secret.get_secret_value()}"
        ok = await (await api.get("/api/v1/audit")).json()
        assert ok["chain"]["valid"] is True and ok["chain"]["anchored_at"] is not None

        code, line = await cli(api, settings, "audit", "--verify")
        assert code == 0 and line.startswith("chain verified: 3 records in 1 chains against the anchor of")

        gone = await delete_newest(owner_url)
        for path in ("/api/v1/audit", "/cp/orgs/acme/audit"):
            resp = await api.get(path)
            assert resp.status == 200
            chain = (await resp.json())["chain"]
            assert (chain["valid"], chain["first_broken_seq"]) == (False, gone)
            assert "missing" in chain["reason"]
        for argv in (("audit", "--verify"), ("audit", "acme", "--verify")):
            code, line = await cli(api, settings, *argv)
            assert (code, line) == (
                1,
                f"CHAIN BROKEN at record {gone}: missing: the anchored head of chain {ORG} is gone",
            )

    # The next scheduled run refuses to anchor the chain that lost its newest record.
    with pytest.raises(WorkflowFailureError) as failure:
        await run_anchor(dev_env, settings, pool, task_queue)
    assert f"record {gone}" in str(failure.value.cause.cause)
    assert AnchorStore.from_settings(settings).newest() == anchor


async def test_a_bucket_without_object_lock_is_refused(own, s3_url):
    settings, _, _ = own
    plain = f"plain-{secrets.token_hex(6)}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=s3_url).create_bucket(Bucket=plain)
    store = AnchorStore.from_settings(settings.model_copy(update={"audit_anchor_bucket": plain}))
    with pytest.raises(AnchorStoreError):
        store.require_write_once()


async def test_the_schedule_anchors_periodically(dev_env, own, task_queue):
    settings, pool, _ = own
    await write(pool, 1)
    schedule_id = f"audit-anchor-{uuid.uuid4().hex[:8]}"
    await ensure_audit_anchor_schedule(
        dev_env.client,
        settings.model_copy(update={"audit_anchor_interval_seconds": 1}),
        task_queue=task_queue,
        schedule_id=schedule_id,
    )
    await ensure_audit_anchor_schedule(dev_env.client, settings, task_queue=task_queue, schedule_id=schedule_id)
    handle = dev_env.client.get_schedule_handle(schedule_id)
    try:
        store = AnchorStore.from_settings(settings)
        async with build_worker(dev_env.client, settings, pool, task_queue=task_queue):
            await handle.trigger()
            for _ in range(300):
                if await store.newest_async() is not None:
                    break
                await asyncio.sleep(0.1)
        anchor = await store.newest_async()
        assert anchor is not None and ORG in anchor.heads
    finally:
        await handle.delete()
