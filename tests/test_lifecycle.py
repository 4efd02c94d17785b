"""Suspend, resume and the hard-delete cascade, end to end through the API with real servers:
the Temporal dev server, moto, the local Neon server, Postgres and real agents booted by the
boot emulator. Also: parking on a failed step, retry and abandon, and Reset with the real CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from temporalio.client import WorkflowFailureError

from api.app import create_app
from devstack.boot_emulator import BootEmulator
from devstack.procs import free_port
from domain.resources import resource_name
from tests.conftest import server_binary
from tests.helpers import instances_of, neon_branches_named, physical_databases
from worker import build_worker
from workflows.hard_delete_org import HardDeleteOrgWorkflow

WS = {"role": "Lifecycle worker", "runtime": "hermes", "tier": 1, "model": "claude-sonnet-4"}


@pytest_asyncio.fixture
async def stack(settings, dev_env, pool, task_queue, tmp_path):
    """The API on a real port (agents call it back), a worker, and a boot emulator per test."""
    port = free_port()
    app_settings = settings.model_copy(
        update={
            "task_queue": task_queue,
            "public_url": f"http://127.0.0.1:{port}",
            "agent_heartbeat_interval_seconds": 0.5,
        }
    )
    client = TestClient(TestServer(create_app(app_settings, temporal=dev_env.client), port=port))
    await client.start_server()
    emulators: list[BootEmulator] = []

    def boot_for(org_id: str) -> BootEmulator:
        emulator = BootEmulator(
            app_settings.aws_endpoint_url,
            "us-east-1",
            log_dir=tmp_path / f"boot-{org_id}",
            poll_interval=0.2,
            tag_filters={"tenantflow:org-id": org_id},
            egress=[("127.0.0.1", port)],
        )
        emulator.start()
        emulators.append(emulator)
        return emulator

    async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
        yield client, app_settings, boot_for
    for emulator in emulators:
        emulator.stop()
    await client.close()


def op(settings) -> dict:
    return {"Authorization": f"Bearer {settings.provision_secret.get_secret_value()}"}


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


async def poll(api, path: str, headers: dict, until, timeout: float = 90, method: str = "GET") -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        body = await (await api.request(method, path, headers=headers)).json()
        if until(body):
            return body
        assert asyncio.get_running_loop().time() < deadline, body
        await asyncio.sleep(0.1)


async def onboarded(api, settings, network) -> dict:
    vpc_id, subnets = network
    slug = f"l{uuid.uuid4().hex[:8]}"
    resp = await api.post(
        "/cp/orgs",
        json={"name": "Lifecycle", "slug": slug, "plan": "pro", "vpc_id": vpc_id, "subnet_ids": subnets},
        headers=op(settings),
    )
    assert resp.status == 202
    # Settled: active, and the org's workflow has closed its onboarding (the row says active a
    # moment before; a command in that moment is refused with the operation still shown).
    return await poll(
        api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "active" and o["operation"] is None
    )


async def mint(api, settings, slug: str) -> str:
    resp = await api.post(f"/cp/orgs/{slug}/keys", json={"name": "t"}, headers=op(settings))
    assert resp.status == 201
    return (await resp.json())["key"]


async def with_running_workspaces(stack, network, names: tuple[str, ...]) -> tuple[dict, str, list[str]]:
    """An onboarded org with agents booting, its key, and these workspaces of it running."""
    api, settings, boot_for = stack
    org = await onboarded(api, settings, network)
    boot_for(org["id"])
    key = await mint(api, settings, org["slug"])
    ids = []
    for name in names:
        resp = await api.post("/workspaces", json={**WS, "name": name}, headers=bearer(key))
        assert resp.status == 202
        ids.append((await resp.json())["id"])
    for ws in ids:
        running = await poll(api, f"/workspaces/{ws}", bearer(key), lambda w: w["status"] in ("running", "failed"))
        assert running["status"] == "running", running["failure_reason"]
    return org, key, ids


async def test_full_lifecycle(stack, network, ec2, pg, pool):
    api, settings, _ = stack
    org, key, ids = await with_running_workspaces(stack, network, ("agent-a", "agent-b"))
    slug = org["slug"]

    # Suspend: from its 202 on, every key is refused and no key can be minted; instances kept.
    resp = await api.post(f"/cp/orgs/{slug}/suspend", json={"reason": "unpaid invoice"}, headers=op(settings))
    assert resp.status == 202 and (await resp.json())["status"] == "suspending"
    refused = await api.get("/workspaces", headers=bearer(key))
    # 403 with the reason; or 401 when the suspend step has already revoked the key (it may run
    # before this request on a fast worker).
    body = await refused.json()
    assert (refused.status, body["code"]) in ((403, "ORG_NOT_ACTIVE"), (401, "UNAUTHORIZED")), body
    assert refused.status == 401 or "unpaid invoice" in body["error"]
    resp = await api.post(f"/cp/orgs/{slug}/keys", json={"name": "t"}, headers=op(settings))
    assert resp.status == 409 and (await resp.json())["code"] == "ORG_NOT_ACTIVE"
    resp = await api.post(f"/cp/orgs/{slug}/suspend", json={"reason": "twice"}, headers=op(settings))
    assert resp.status == 409 and (await resp.json())["org"]["status"] in ("suspending", "suspended")
    await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "suspended")
    # ... and its suspend step revoked the key for good (401 once revoked).
    await poll(api, "/workspaces", bearer(key), lambda b: b.get("code") == "UNAUTHORIZED")
    assert sorted(i["State"]["Name"] for ws in ids for i in instances_of(ec2, ws)) == ["running", "running"]
    assert (await (await api.get(f"/cp/orgs/{slug}", headers=op(settings))).json())["status_reason"] == "unpaid invoice"

    # Resume: the org is active again; the operator mints a new key.
    resp = await api.post(f"/cp/orgs/{slug}/resume", headers=op(settings))
    assert resp.status == 202 and (await resp.json())["status"] == "resuming"
    await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "active")
    assert (await api.get("/workspaces", headers=bearer(key))).status == 401
    resumed_key = await mint(api, settings, slug)
    assert (await api.get("/workspaces", headers=bearer(resumed_key))).status == 200

    # Delete: guarded, then the whole cascade.
    resp = await api.delete(f"/cp/orgs/{slug}", json={"confirm": True, "delete_workspaces": True}, headers=op(settings))
    assert resp.status == 400 and (await resp.json())["code"] == "CONFIRMATION_REQUIRED"
    resp = await api.delete(f"/cp/orgs/{slug}", json={"confirm": slug}, headers=op(settings))
    assert resp.status == 409 and (await resp.json())["code"] == "ORG_HAS_WORKSPACES"
    assert (await (await api.get(f"/cp/orgs/{slug}", headers=op(settings))).json())["status"] == "active"
    resp = await api.delete(f"/cp/orgs/{slug}", json={"confirm": slug, "delete_workspaces": True}, headers=op(settings))
    assert resp.status == 202
    seen = set()
    done = await poll(
        api, f"/cp/orgs/{slug}", op(settings), lambda o: seen.add(o["status"]) or o["status"] == "deleted"
    )
    assert "deleting" in seen or len(seen) == 1

    # Nothing left anywhere.
    name = resource_name(slug, org["id"])
    for ws in ids:
        assert instances_of(ec2, ws) == []
    assert ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"] == []
    assert neon_branches_named(settings, name) == []
    assert not any(name.replace("-", "_") in db for db in physical_databases(pg))
    async with pool.connection() as conn:
        assert await (await conn.execute("SELECT 1 FROM orgs WHERE slug = %s", (slug,))).fetchone() is None
        assert await (await conn.execute("SELECT 1 FROM workspaces WHERE org_id = %s", (org["id"],))).fetchone() is None
    receipt = done["receipt"]
    kinds = sorted(r["kind"] for r in receipt["resources"])
    assert kinds == ["ec2_instance", "ec2_instance", "neon_branch", "security_group"]
    assert all(r["status"] == "deleted" for r in receipt["resources"])
    assert {w["id"] for w in receipt["workspaces"]} == set(ids)

    audit = await (await api.get(f"/cp/orgs/{slug}/audit", headers=op(settings))).json()
    assert audit["chain"]["valid"] is True
    actions = [r["action"] for r in audit["records"]]
    for step in (
        "stop_new_work",
        "cancel_in_flight",
        "terminate_instances",
        "delete_security_group",
        "delete_database",
        "revoke_credentials",
    ):
        assert f"org.delete.{step}" in actions
    assert "org.purge" in actions and "org.suspended" in actions
    assert (await api.get("/workspaces", headers=bearer(resumed_key))).status == 401


async def parked_delete(api, settings, network, neon_faults) -> tuple[dict, dict]:
    """An onboarded org whose hard delete parks on its Neon step (403 until the faults are cleared):
    the org as created, and as it reads once parked."""
    org = await onboarded(api, settings, network)
    neon_faults("/projects/{project_id}/branches/{branch_id}", 403, method="DELETE", count=-1)
    body = {"confirm": org["slug"], "delete_workspaces": True}
    assert (await api.delete(f"/cp/orgs/{org['slug']}", json=body, headers=op(settings))).status == 202
    parked = await poll(
        api, f"/cp/orgs/{org['slug']}", op(settings), lambda o: (o["progress"] or {}).get("waiting_for_operator")
    )
    return org, parked


async def test_parked_step_retry_concurrent_delete_and_reset(stack, network, ec2, neon_faults, dev_env, pool):
    api, settings, _ = stack
    org, parked = await parked_delete(api, settings, network, neon_faults)
    slug = org["slug"]
    body = {"confirm": slug, "delete_workspaces": True}
    assert parked["status"] == "deleting" and parked["progress"]["step"] == "delete_database"
    assert "NeonAccessDenied" in parked["progress"]["failure_reason"]
    # The security group went before the parked step; the record is still there.
    assert (
        ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [resource_name(slug, org["id"])]}])[
            "SecurityGroups"
        ]
        == []
    )
    teardowns = await (await api.get("/cp/teardowns", headers=op(settings))).json()
    assert any(t["slug"] == slug and t["parked"] for t in teardowns["teardowns"])
    handle = dev_env.client.get_workflow_handle(f"org-delete:{org['id']}")
    metadata = await handle.query("__temporal_workflow_metadata")
    assert "waiting for an operator" in json.dumps(metadata, default=str)

    # A second delete of the same org is refused while the first runs.
    resp = await api.delete(f"/cp/orgs/{slug}", json=body, headers=op(settings))
    assert resp.status == 409 and (await resp.json())["code"] == "DELETE_IN_PROGRESS"

    # Retry while the fault persists: it parks again on the same step.
    assert (await api.post(f"/cp/orgs/{slug}/teardown/retry", headers=op(settings))).status == 202
    await poll(
        api,
        f"/cp/orgs/{slug}",
        op(settings),
        lambda o: (o["progress"] or {}).get("waiting_for_operator") and o["progress"]["step"] == "delete_database",
    )

    # Abandon: the workflow fails on the named step, nothing is purged. (The org's workflow
    # learns that the step parked again a moment after its progress shows it: until then an
    # abandon is refused, and the operator sends it again.)
    await poll(
        api, f"/cp/orgs/{slug}/teardown/abandon", op(settings), lambda b: b.get("decision") == "abandon", method="POST"
    )
    with pytest.raises(WorkflowFailureError) as abandoned:
        await handle.result()
    assert "abandoned by an operator at delete_database" in str(abandoned.value.cause)
    assert (await (await api.get(f"/cp/orgs/{slug}", headers=op(settings))).json())["status"] == "deleting"

    abandoned_org = await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["failure_reason"])
    assert abandoned_org["status"] == "deleting" and abandoned_org["failure_reason"].startswith("abandoned by operator")
    # Nothing waits for an operator any more: retry and abandon are refused, at once.
    resp = await api.post(f"/cp/orgs/{slug}/teardown/retry", headers=op(settings))
    assert resp.status == 409 and (await resp.json())["code"] == "NOTHING_PARKED"

    # The operator fixes the cause and deletes again: a new run of the same cascade finishes it.
    requests_delete = __import__("requests").delete
    requests_delete(f"{settings.neon_base_url.split('/api/v2')[0]}/__devstack/faults", timeout=5)
    assert (await api.delete(f"/cp/orgs/{slug}", json=body, headers=op(settings))).status == 202
    await poll(api, f"/cp/orgs/{slug}", op(settings), lambda o: o["status"] == "deleted")
    receipt = await dev_env.client.get_workflow_handle_for(HardDeleteOrgWorkflow.run, handle.id).result()
    assert receipt.slug == slug
    entity = dev_env.client.get_workflow_handle(f"org:{org['id']}")
    assert (await entity.result())["status"] == "deleted"
    target = dev_env.client.service_client.config.target_host
    temporal = server_binary("temporal")

    # Reset a completed teardown: it replays cleanly, with no duplicate effect.
    run = await asyncio.to_thread(
        subprocess.run,
        [
            temporal,
            "workflow",
            "reset",
            "--address",
            target,
            "--namespace",
            "default",
            "--workflow-id",
            handle.id,
            "--type",
            "FirstWorkflowTask",
            "--reason",
            "replay check",
            "--yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    again = await dev_env.client.get_workflow_handle_for(HardDeleteOrgWorkflow.run, handle.id).result()
    assert again.model_dump() == receipt.model_dump()
    async with pool.connection() as conn:
        receipts = await (
            await conn.execute("SELECT count(*) AS n FROM org_receipts WHERE org_id = %s", (org["id"],))
        ).fetchone()
        purges = await (
            await conn.execute(
                "SELECT count(*) AS n FROM audit_log WHERE org_id = %s AND action = 'org.purge'", (org["id"],)
            )
        ).fetchone()
    assert receipts["n"] == 1 and purges["n"] == 1
