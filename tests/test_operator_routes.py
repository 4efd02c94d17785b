"""The operator's routes over an org's keys and workspaces, reconcile reports and runs, paging and
name filters on the lists, and the audit trail scoped to one org id: through aiohttp's test client
with the real Postgres and Temporal dev server."""

from __future__ import annotations

import asyncio
import io
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from temporalio.service import RPCError

import starter
from db.keys import OrgKeyRepo
from db.orgs import OrgRepo
from db.purge import purge_org
from db.reconcile import ReconcileRepo
from db.workspaces import WorkspaceRepo
from domain.operations import RECONCILE_SCHEDULE_ID
from tests.test_api_workspaces import api, app_settings, bearer  # noqa: F401 - fixtures: the app on a task queue
from tests.test_workspace_workflow import reserve
from worker import build_worker, ensure_reconcile_schedule


@pytest_asyncio.fixture
async def alice(api, app_settings) -> tuple[str, dict[str, str]]:
    """A named operator: (its audit principal, its headers)."""
    name = f"alice{uuid.uuid4().hex[:6]}"
    resp = await api.post(
        "/api/v1/operator-tokens", json={"name": name}, headers=bearer(app_settings.provision_secret.get_secret_value())
    )
    assert resp.status == 201
    return f"operator:{name}", bearer((await resp.json())["token"])


async def active_org(pool, slug: str | None = None, name: str = "Example Co") -> dict[str, Any]:
    """An active org: rows only, no workflow or cloud resources."""
    slug = slug or f"op{uuid.uuid4().hex[:8]}"
    orgs = OrgRepo(pool)
    row, created = await orgs.create_or_get(
        org_id=f"org_{secrets.token_hex(6)}",
        name=name,
        slug=slug,
        plan="pro",
        vpc_id="vpc-0123456789",
        subnet_ids=["subnet-0123456789"],
        request_hash=uuid.uuid4().hex,
        neon_mode="branch",
        actor="test",
    )
    assert created
    updated = await orgs.update(row["id"], actor="test", action="org.activate", status="active")
    assert updated is not None
    return updated


async def every_page(api, path: str, headers: dict[str, str], key: str, **query: str) -> tuple[list[dict], int]:
    """Every item of a list and how many pages it took."""
    items: list[dict] = []
    pages, cursor = 0, None
    while True:
        resp = await api.get(path, params={**query, **({"cursor": cursor} if cursor else {})}, headers=headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        items += body[key]
        pages += 1
        if not (cursor := body["next_cursor"]):
            return items, pages


async def audit_actions(pool, org_id: str) -> list[tuple[str, str]]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT actor, action FROM audit_log WHERE org_id = %s ORDER BY seq", (org_id,))
        ).fetchall()
    return [(r["actor"], r["action"]) for r in rows]


# -- keys ------------------------------------------------------------------------------------------


async def test_operator_lists_shows_and_revokes_an_orgs_keys(api, pool, alice):
    who, headers = alice
    org, other = await active_org(pool), await active_org(pool)
    keys = OrgKeyRepo(pool)
    minted = [await keys.mint(org, f"{n}-key", actor="test") for n in ("ci", "deploy", "ci-backup")]
    other_key, _ = await keys.mint(other, "theirs", actor="test")
    base = f"/api/v1/orgs/{org['slug']}/keys"

    listed, pages = await every_page(api, base, headers, "keys", limit="2")
    assert [k["name"] for k in listed] == ["ci-key", "deploy-key", "ci-backup-key"] and pages == 2
    assert all("key" not in k and "key_hash" not in k for k in listed)
    named, _ = await every_page(api, base, headers, "keys", name="CI")
    assert [k["name"] for k in named] == ["ci-key", "ci-backup-key"]
    # The filter's own wildcards are literal.
    assert (await every_page(api, base, headers, "keys", name="%"))[0] == []

    key_id = minted[1][0]["id"]
    resp = await api.get(f"{base}/tfk_{key_id}", headers=headers)
    assert resp.status == 200 and (await resp.json())["name"] == "deploy-key"
    resp = await api.delete(f"{base}/{key_id}", headers=headers)
    assert resp.status == 200 and (await resp.json())["revoked"] is True
    assert (await api.get("/api/v1/keys", headers=bearer(minted[1][1]))).status == 401  # refused at once
    assert (await api.get("/api/v1/keys", headers=bearer(minted[0][1]))).status == 200
    assert (who, "org_key.revoke") in await audit_actions(pool, org["id"])
    # The deprecated mirror is the same route.
    assert (await api.get(f"/cp/orgs/{org['slug']}/keys/{key_id}", headers=headers)).status == 200

    # Another org's key, or no key at all, is not found; nothing was revoked.
    for path in (f"{base}/{other_key['id']}", f"{base}/000000000000", f"{base}/not-a-key"):
        for method in ("GET", "DELETE"):
            resp = await api.request(method, path, headers=headers)
            assert resp.status in (400, 404), (method, path, resp.status)
    assert (await keys.get(other["id"], other_key["id"]) or {})["revoked_at"] is None
    # Only an operator: a tenant key is not one.
    assert (await api.get(base, headers=bearer(minted[0][1]))).status == 401


async def test_list_paging_and_name_refusals(api, pool, alice):
    _, headers = alice
    org = await active_org(pool)
    base = f"/api/v1/orgs/{org['slug']}/keys"
    for query, code in (
        ({"limit": "0"}, "VALIDATION_FAILED"),
        ({"limit": "201"}, "VALIDATION_FAILED"),
        ({"limit": "-1"}, "VALIDATION_FAILED"),
        ({"cursor": "not a cursor"}, "INVALID_CURSOR"),
        ({"cursor": "d3NfMTIz"}, "INVALID_CURSOR"),  # a workspace id's cursor is not a key's
        ({"name": "x" * 101}, "VALIDATION_FAILED"),
        ({"name": "a\x00b"}, "VALIDATION_FAILED"),
    ):
        resp = await api.get(base, params=query, headers=headers)
        assert resp.status == 400, (query, resp.status)
        assert (await resp.json())["code"] == code, query


async def test_org_list_filters_by_name(api, pool, alice):
    _, headers = alice
    marker = uuid.uuid4().hex[:10]
    wanted = [await active_org(pool, name=f"Acme {marker} {n}") for n in range(3)]
    await active_org(pool, name="Someone else")
    found, pages = await every_page(api, "/api/v1/orgs", headers, "orgs", name=marker.upper(), limit="2")
    assert sorted(o["slug"] for o in found) == sorted(o["slug"] for o in wanted) and pages == 2


async def test_tenant_lists_page_and_filter(api, pool):
    org = await active_org(pool)
    key = (await OrgKeyRepo(pool).mint(org, "tenant", actor="test"))[1]
    for name in ("alpha-1", "beta-1", "alpha-2"):
        await reserve(pool, org, name)
    listed, pages = await every_page(api, "/api/v1/workspaces", bearer(key), "workspaces", limit="1")
    assert [w["name"] for w in listed] == ["alpha-1", "beta-1", "alpha-2"] and pages == 3
    named, _ = await every_page(api, "/api/v1/workspaces", bearer(key), "workspaces", name="alpha")
    assert [w["name"] for w in named] == ["alpha-1", "alpha-2"]
    assert [k["name"] for k in (await every_page(api, "/api/v1/keys", bearer(key), "keys", name="ten"))[0]] == [
        "tenant"
    ]


# -- workspaces ------------------------------------------------------------------------------------


async def test_operator_lists_inspects_and_deletes_an_orgs_workspaces(
    api, app_settings, dev_env, pool, task_queue, alice
):
    who, headers = alice
    org, other = await active_org(pool), await active_org(pool)
    repo = WorkspaceRepo(pool)
    first, broken = await reserve(pool, org, "agent-a"), await reserve(pool, org, "agent-b")
    await repo.update(broken["id"], actor="test", status="failed", holds_slot=False, failure_reason="boot timed out")
    theirs = await reserve(pool, other, "agent-a")
    base = f"/api/v1/orgs/{org['slug']}/workspaces"

    listed, pages = await every_page(api, base, headers, "workspaces", limit="1")
    assert pages == 2
    assert [(w["name"], w["status"], w["failure_reason"]) for w in listed] == [
        ("agent-a", "provisioning", None),
        ("agent-b", "failed", "boot timed out"),
    ]
    assert [w["id"] for w in (await every_page(api, base, headers, "workspaces", name="-B"))[0]] == [broken["id"]]
    resp = await api.get(f"{base}/{broken['id']}", headers=headers)
    assert resp.status == 200 and (await resp.json())["failure_reason"] == "boot timed out"
    for method in ("GET", "DELETE"):
        resp = await api.request(method, f"{base}/{theirs['id']}", headers=headers)
        assert resp.status == 404 and (await resp.json())["code"] == "WORKSPACE_NOT_FOUND"

    # The tenant's own deletion path: the deprovisioning workflow, attached to when repeated.
    async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
        for _ in range(2):
            resp = await api.delete(f"{base}/{first['id']}", headers=headers)
            assert resp.status == 202, await resp.text()
            assert resp.headers["Location"] == f"{base}/{first['id']}"
        for _ in range(300):
            shown = await (await api.get(f"{base}/{first['id']}", headers=headers)).json()
            if shown["status"] == "deleted":
                break
            await asyncio.sleep(0.1)
    assert shown["status"] == "deleted"
    resp = await api.delete(f"{base}/{first['id']}", headers=headers)
    assert resp.status == 409 and (await resp.json())["code"] == "WORKSPACE_DELETED"
    assert [w["id"] for w in (await every_page(api, base, headers, "workspaces"))[0]] == [broken["id"]]
    trail = await audit_actions(pool, org["id"])
    # The repeated DELETE attached to the deletion already recorded: one request on record.
    assert trail.count((who, "workspace.delete_requested")) == 1
    assert any(action == "workspace.delete" for _, action in trail)
    # The other org's workspace was never touched.
    assert (await repo.get(theirs["id"]) or {})["status"] == "provisioning"


# -- audit -----------------------------------------------------------------------------------------


async def test_audit_is_scoped_to_one_org_and_paged(api, pool, alice):
    _, headers = alice
    slug = f"re{uuid.uuid4().hex[:8]}"
    earlier = await active_org(pool, slug)
    await purge_org(pool, earlier["id"], slug, actor="test", workflow_id=None)
    current = await active_org(pool, slug)
    for n in range(3):
        await OrgRepo(pool).update(current["id"], actor="test", action=f"test.step{n}", detail={})
    base = f"/api/v1/orgs/{slug}/audit"

    body = await (await api.get(base, headers=headers)).json()
    assert body["org_id"] == current["id"] and body["org_ids"] == [earlier["id"], current["id"]]
    assert {r["org_id"] for r in body["records"]} == {current["id"]}
    assert [r["action"] for r in body["records"]] == [
        "org.create",
        "org.activate",
        "test.step0",
        "test.step1",
        "test.step2",
    ]
    assert body["next_cursor"] is None and body["chain"]["valid"] is True
    before = await (await api.get(base, params={"org_id": earlier["id"]}, headers=headers)).json()
    assert {r["org_id"] for r in before["records"]} == {earlier["id"]}
    assert [r["action"] for r in before["records"]] == ["org.create", "org.activate", "org.purge"]

    paged, pages = await every_page(api, base, headers, "records", limit="2")
    assert [r["seq"] for r in paged] == [r["seq"] for r in body["records"]] and pages == 3
    middle = body["records"][2]["at"]
    since = await (await api.get(base, params={"since": middle}, headers=headers)).json()
    assert [r["action"] for r in since["records"]] == ["test.step0", "test.step1", "test.step2"]
    until = await (await api.get(base, params={"until": middle}, headers=headers)).json()
    assert [r["action"] for r in until["records"]] == ["org.create", "org.activate"]

    for query, status in (
        ({"since": "yesterday"}, 400),
        ({"until": "2026-11-01T00:00:00"}, 400),  # no zone
        ({"cursor": "bm90LWEtc2Vx"}, 400),
        ({"limit": "1001"}, 400),
        ({"org_id": "org_000000000000"}, 404),
        ({"org_id": "acme"}, 404),
    ):
        resp = await api.get(base, params=query, headers=headers)
        assert resp.status == status, (query, resp.status)
    # Both deleted: the trail shown is the last org's that had the slug.
    await purge_org(pool, current["id"], slug, actor="test", workflow_id=None)
    last = await (await api.get(base, headers=headers)).json()
    assert last["org_id"] == current["id"]
    assert (await api.get(f"/api/v1/orgs/nobody-{uuid.uuid4().hex[:6]}/audit", headers=headers)).status == 404


# -- reconcile -------------------------------------------------------------------------------------


async def save_report(
    pool,
    findings: list[dict],
    deleted: list[dict] | None = None,
    *,
    cap_exceeded: bool = False,
    detail: dict | None = None,
) -> int:
    now = datetime.now(UTC)
    return await ReconcileRepo(pool).save_report(
        workflow_id=f"reconcile-test-{uuid.uuid4().hex[:8]}",
        run_id=uuid.uuid4().hex,
        started_at=now - timedelta(seconds=5),
        finished_at=now,
        dry_run=True,
        cap_exceeded=cap_exceeded,
        findings=findings,
        deleted=deleted or [],
        detail=detail if detail is not None else {"max_deletes": 10},
    )


ORPHAN = {"problem": "orphan", "reason": "org_gone", "kind": "ec2_instance", "cloud_id": "i-0123456789abcdef0"}
DRIFT = {"problem": "drift", "reason": "missing", "kind": "neon_branch", "cloud_id": "br-quiet-sky-123456"}


async def test_reconcile_reports_are_listed_and_shown(api, pool, alice):
    _, headers = alice
    ids = [await save_report(pool, [ORPHAN] * n + [DRIFT]) for n in range(3)]
    resp = await api.get("/api/v1/reconcile/reports", params={"limit": "2"}, headers=headers)
    first = await resp.json()
    assert [r["id"] for r in first["reports"]] == ids[:0:-1] and first["next_cursor"]
    assert [(r["orphans"], r["drifts"], r["deletions"]) for r in first["reports"]] == [(2, 1, 0), (1, 1, 0)]
    assert "findings" not in first["reports"][0]
    resp = await api.get(
        "/api/v1/reconcile/reports", params={"limit": "1", "cursor": first["next_cursor"]}, headers=headers
    )
    assert [r["id"] for r in (await resp.json())["reports"]] == ids[:1]

    resp = await api.get(f"/api/v1/reconcile/reports/{ids[2]}", headers=headers)
    report = await resp.json()
    assert resp.status == 200 and report["findings"] == [ORPHAN, ORPHAN, DRIFT] and report["deleted"] == []
    for missing in ("999999999999", "abc", "-1"):
        resp = await api.get(f"/api/v1/reconcile/reports/{missing}", headers=headers)
        assert resp.status == 404 and (await resp.json())["code"] == "REPORT_NOT_FOUND", missing
    assert (await api.get("/api/v1/reconcile/reports")).status == 401


async def drop_schedule(client) -> None:
    try:
        await client.get_schedule_handle(RECONCILE_SCHEDULE_ID).delete()
    except RPCError:
        pass  # there was none


async def test_reconcile_run_triggers_the_schedule_and_its_report_appears(
    api, app_settings, dev_env, pool, task_queue, alice, monkeypatch
):
    who, headers = alice
    await drop_schedule(dev_env.client)
    resp = await api.post("/api/v1/reconcile/runs", headers=headers)
    assert resp.status == 409 and (await resp.json())["code"] == "RECONCILE_NOT_SCHEDULED"

    # Never deleting: the moto account holds every other test's resources.
    dry = app_settings.model_copy(update={"reconcile_delete_enabled": False, "reconcile_interval_seconds": 86400})
    await ensure_reconcile_schedule(dev_env.client, dry, task_queue=task_queue)
    try:
        async with build_worker(dev_env.client, dry, pool, task_queue=task_queue):
            newest = (await ReconcileRepo(pool).summaries(limit=1) or [{"id": 0}])[0]["id"]
            # The CLI: triggers, waits for the report and shows it.
            monkeypatch.setenv("TENANTFLOW_OPERATOR_TOKEN", headers["Authorization"].removeprefix("Bearer "))
            url = str(api.make_url("/")).rstrip("/")
            out = io.StringIO()
            code = await asyncio.to_thread(starter.main, ["--api-url", url, "reconcile", "run", "--wait", "120"], out)
            assert code == 0, out.getvalue()
    finally:
        await drop_schedule(dev_env.client)
    [report] = await ReconcileRepo(pool).summaries(limit=1)
    assert report["id"] > newest and report["workflow_id"].startswith("reconcile-") and report["dry_run"]
    assert str(report["id"]) in out.getvalue()
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT actor FROM audit_log WHERE action = 'reconcile.trigger' ORDER BY seq DESC LIMIT 1"
            )
        ).fetchone()
    assert row is not None and row["actor"] == who

    out = io.StringIO()
    code = await asyncio.to_thread(starter.main, ["--api-url", url, "reconcile", "report", str(report["id"])], out)
    assert code == 0 and f"report {report['id']}" in out.getvalue()


@pytest.mark.parametrize("path", ["/api/v1/reconcile/reports", "/api/v1/orgs/example-co/keys"])
async def test_operator_routes_need_an_operator(api, path):
    resp = await api.get(path, headers=bearer("tfk_000000000000_" + "A" * 43))
    assert resp.status == 401 and (await resp.json())["code"] == "UNAUTHORIZED"


async def test_teardowns_page_and_filter(api, pool, alice):
    _, headers = alice
    marker = uuid.uuid4().hex[:10]
    deleting = [await active_org(pool, name=f"Gone {marker} {n}") for n in range(3)]
    for org in deleting:
        await OrgRepo(pool).update(org["id"], actor="test", status="deleting")
    found, pages = await every_page(api, "/api/v1/teardowns", headers, "teardowns", name=marker, limit="2")
    assert sorted(t["slug"] for t in found) == sorted(o["slug"] for o in deleting) and pages == 2
