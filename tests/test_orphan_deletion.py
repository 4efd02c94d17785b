"""An operator deletes one orphan a reconcile report names (DeleteOrphanWorkflow): through the API
and the CLI, with the real worker on the Temporal dev server, moto, the local Neon server and
Postgres. The orphans are made directly in the clouds, tagged or named for an org that has no row
(or, for the refusal, one whose records come back), so no onboarding is needed."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import uuid
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

import starter
from api.app import create_app
from db.ledger import Ledger
from db.reconcile import ReconcileRepo
from domain.reconcile import CloudResource, DeleteBudget, Finding
from domain.resources import MANAGED_TAG, ORG_ID_TAG, ORG_SLUG_TAG, ResourceKind, business_key, resource_name
from tests.helpers import neon_branches_named, neon_client
from tests.test_api_workspaces import api, app_settings, bearer  # noqa: F401 - fixtures: the app on a task queue
from tests.test_operator_routes import active_org, alice, save_report  # noqa: F401 - alice: a named operator
from tests.test_reconcile import group_exists, reconcile
from worker import build_worker

DELETIONS = "/api/v1/reconcile/orphan-deletions"


def stray_org() -> tuple[str, str]:
    """An org id and slug that have no row."""
    return f"org_{secrets.token_hex(6)}", f"gone{uuid.uuid4().hex[:8]}"


async def orphan_group(ec2, vpc_id: str, org_id: str, slug: str) -> CloudResource:
    """A managed security group of the org, visible to filtered lookups."""
    name = resource_name(slug, org_id)
    tags = [{"Key": MANAGED_TAG, "Value": "true"}, {"Key": ORG_ID_TAG, "Value": org_id}]
    group_id = ec2.create_security_group(
        GroupName=name,
        Description="orphan",
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [*tags, {"Key": ORG_SLUG_TAG, "Value": slug}]}],
    )["GroupId"]
    for _ in range(100):  # eventual consistency
        if ec2.describe_security_groups(Filters=[{"Name": "group-id", "Values": [group_id]}])["SecurityGroups"]:
            break
        await asyncio.sleep(0.1)
    return CloudResource(kind=ResourceKind.security_group, cloud_id=group_id, name=name, org_id=org_id, org_slug=slug)


def orphan_branch(settings, org_id: str, slug: str) -> str:
    made = neon_client(settings).branch_create(settings.neon_project_id, branch={"name": resource_name(slug, org_id)})
    return str(made.branch.id)


async def report_of(pool, orphans: list[Finding], budget: DeleteBudget | None = None, **columns: Any) -> int:
    """A stored report naming these orphans (within the caps unless ``budget`` says otherwise)."""
    budget = budget or DeleteBudget(orphans=len(orphans), fleet_size=100, max_deletes=10, max_delete_fraction=0.25)
    return await save_report(
        pool,
        [f.model_dump(mode="json") for f in orphans],
        detail={"org_ids": None, "budget": budget.model_dump(mode="json")},
        **columns,
    )


async def request(api, headers: dict[str, str], report_id: int, cloud_id: str):
    return await api.post(DELETIONS, json={"report_id": report_id, "cloud_id": cloud_id}, headers=headers)


async def settled(api, headers: dict[str, str], deletion_id: int) -> dict:
    for _ in range(600):
        shown = await (await api.get(f"{DELETIONS}/{deletion_id}", headers=headers)).json()
        if shown["status"] != "deleting":
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"deletion {deletion_id} still under way: {shown}")


def cli(api, headers: dict[str, str], monkeypatch, *argv: str) -> tuple[int, str]:
    monkeypatch.setenv("TENANTFLOW_OPERATOR_TOKEN", headers["Authorization"].removeprefix("Bearer "))
    out = io.StringIO()
    code = starter.main(["--api-url", str(api.make_url("/")).rstrip("/"), "reconcile", "delete-orphan", *argv], out)
    return code, out.getvalue()


async def audit_of(pool, cloud_id: str) -> list[tuple[str, str, str]]:
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                """SELECT actor, action, outcome FROM audit_log
                WHERE action LIKE 'reconcile.delete%%'
                  AND EXISTS (SELECT FROM jsonb_each_text(resource_ids) r WHERE r.value = %s)
                ORDER BY seq""",
                (cloud_id,),
            )
        ).fetchall()
    return [(r["actor"], r["action"], r["outcome"]) for r in rows]


async def deletion_rows(pool, cloud_ids: list[str]) -> list[dict]:
    async with pool.connection() as conn:
        return await (
            await conn.execute("SELECT * FROM orphan_deletions WHERE cloud_id = ANY(%s) ORDER BY id", (cloud_ids,))
        ).fetchall()


@pytest_asyncio.fixture
async def worker(dev_env, app_settings, pool, task_queue):  # noqa: F811 - app_settings is the imported fixture
    async with build_worker(dev_env.client, app_settings, pool, task_queue=task_queue):
        yield


async def test_a_named_orphan_is_deleted_once(
    api,
    worker,
    dev_env,
    settings,
    pool,
    ec2,
    network,
    task_queue,
    alice,
    monkeypatch,  # noqa: F811
):
    who, headers = alice
    org_id, slug = stray_org()
    group = await orphan_group(ec2, network[0], org_id, slug)
    branch_id = orphan_branch(settings, org_id, slug)
    # The reconciler's own report of them (a dry run, limited to this org; the session's fleet may
    # be small, so the share cap is lifted).
    report = await reconcile(dev_env, settings, pool, f"{task_queue}-run", org_ids=[org_id], max_delete_fraction=1.0)
    assert {(f.kind, f.cloud_id) for f in report.orphans} == {
        ("security_group", group.cloud_id),
        ("neon_branch", branch_id),
    }

    # Racing requests attach to one deletion (one row, one workflow).
    answers = await asyncio.gather(*(request(api, headers, report.id, group.cloud_id) for _ in range(3)))
    assert [r.status for r in answers] == [202] * 3
    bodies = [await r.json() for r in answers]
    [deletion_id] = {b["id"] for b in bodies}
    assert bodies[0]["workflow_id"] == f"reconcile-delete-orphan:{group.cloud_id}"
    assert answers[0].headers["Location"] == f"{DELETIONS}/{deletion_id}"
    done = await settled(api, headers, deletion_id)
    assert (done["status"], done["requested_by"], done["report_id"], done["org_id"]) == (
        "deleted",
        who,
        report.id,
        org_id,
    )
    assert not group_exists(ec2, group.cloud_id)

    # Asked again once it is gone: the deletion that removed it, nothing started or deleted again.
    again = await request(api, headers, report.id, group.cloud_id)
    assert again.status == 200 and (await again.json())["id"] == deletion_id
    assert await audit_of(pool, group.cloud_id) == [
        (who, "reconcile.delete_orphan", "requested"),
        ("reconciler", "reconcile.delete", "deleted"),
        (who, "reconcile.delete_orphan", "deleted"),
    ]
    assert len(await deletion_rows(pool, [group.cloud_id])) == 1
    # The report shows what was asked of it.
    shown = await (await api.get(f"/api/v1/reconcile/reports/{report.id}", headers=headers)).json()
    assert [(d["id"], d["cloud_id"], d["status"]) for d in shown["named_deletions"]] == [
        (deletion_id, group.cloud_id, "deleted")
    ]

    # The CLI follows the deletion to its outcome.
    code, text = await asyncio.to_thread(
        cli, api, headers, monkeypatch, branch_id, "--report", str(report.id), "--json"
    )
    assert code == 0, text
    assert json.loads(text)["status"] == "deleted"
    assert neon_branches_named(settings, resource_name(slug, org_id)) == []


async def test_refused_when_the_records_account_for_it_again(
    api,
    worker,
    pool,
    ec2,
    network,
    alice,
    monkeypatch,  # noqa: F811
):
    who, headers = alice
    org = await active_org(pool)
    # The org's group with no ledger row: an orphan, "unrecorded".
    group = await orphan_group(ec2, network[0], org["id"], org["slug"])
    try:
        await report_of(pool, [Finding.orphan(group, "unrecorded", org["slug"])])
        # Its ledger row comes back after the report (a late write, a restore).
        key = business_key(ResourceKind.security_group, group.name or "")
        ledger = Ledger(pool)
        await ledger.reserve(
            org_id=org["id"], org_slug=org["slug"], kind="security_group", business_key=key, actor="test"
        )
        await ledger.mark_created(key, group.cloud_id, actor="test")

        # Without --report: the newest report, the one just stored.
        code, text = await asyncio.to_thread(cli, api, headers, monkeypatch, group.cloud_id)
        assert code == starter.EXIT_REFUSED, text
        last = text.splitlines()[-1]
        assert last.startswith("REFUSED (NOT_AN_ORPHAN)") and f"the ledger records {key} as created" in last
        assert group_exists(ec2, group.cloud_id)
        [row] = await deletion_rows(pool, [group.cloud_id])
        assert (row["status"], row["code"], row["requested_by"]) == ("refused", "NOT_AN_ORPHAN", who)
        assert (who, "reconcile.delete_orphan", "refused") in await audit_of(pool, group.cloud_id)
    finally:
        ec2.delete_security_group(GroupId=group.cloud_id)


async def test_named_deletions_count_towards_the_cap(
    app_settings,
    dev_env,
    worker,
    pool,
    ec2,
    network,
    alice,  # noqa: F811
):
    _, headers = alice
    repo = ReconcileRepo(pool)
    window = app_settings.reconcile_interval_seconds
    # A reconcile run's deletions count too.
    before = await repo.deleted_within(window)
    await report_of(pool, [], deleted=[{"kind": "security_group", "cloud_id": "sg-0", "outcome": "deleted"}])
    counted = await repo.deleted_within(window)
    assert counted == before + 1

    org_id, slug = stray_org()
    groups = [await orphan_group(ec2, network[0], org_id, f"{slug}{n}") for n in range(4)]
    report_id = await report_of(pool, [Finding.orphan(g, "org_missing", None) for g in groups])
    capped = app_settings.model_copy(update={"reconcile_max_deletes": counted + 2})
    api = TestClient(TestServer(create_app(capped, temporal=dev_env.client)))
    await api.start_server()
    try:
        # Four at once, room for two: exactly two are admitted.
        answers = await asyncio.gather(*(request(api, headers, report_id, g.cloud_id) for g in groups))
        assert sorted(r.status for r in answers) == [202, 202, 409, 409]
        refused = [await r.json() for r in answers if r.status == 409]
        assert {(b["code"], b["max_deletes"]) for b in refused} == {("RECONCILE_CAP_EXCEEDED", counted + 2)}
        admitted = [(await r.json())["id"] for r in answers if r.status == 202]
        assert [(await settled(api, headers, d))["status"] for d in admitted] == ["deleted", "deleted"]
        assert sum(group_exists(ec2, g.cloud_id) for g in groups) == 2
        assert len(await deletion_rows(pool, [g.cloud_id for g in groups])) == 2

        # A report whose orphans exceeded the caps names none that may be deleted one by one.
        left = [g for g in groups if group_exists(ec2, g.cloud_id)]
        over = DeleteBudget(orphans=400, fleet_size=500, max_deletes=10, max_delete_fraction=0.25)
        for budget, cap_exceeded in ((over, False), (None, True)):
            flood = await report_of(
                pool, [Finding.orphan(g, "org_missing", None) for g in left], budget, cap_exceeded=cap_exceeded
            )
            resp = await request(api, headers, flood, left[0].cloud_id)
            body = await resp.json()
            assert resp.status == 409 and body["code"] == "RECONCILE_CAP_EXCEEDED", body
            assert "lost records" in body["error"]
        assert all(group_exists(ec2, g.cloud_id) for g in left)
        assert await deletion_rows(pool, [g.cloud_id for g in left]) == []
    finally:
        await api.close()
        for g in groups:
            if group_exists(ec2, g.cloud_id):
                ec2.delete_security_group(GroupId=g.cloud_id)


async def test_unknown_reports_and_orphans_are_refused_and_change_nothing(api, pool, alice):  # noqa: F811
    _, headers = alice
    orphan = Finding(problem="orphan", reason="org_missing", kind="security_group", cloud_id="sg-0a1b2c3d4e5f60718")
    drift = Finding(problem="drift", reason="missing_in_cloud", kind="neon_branch", cloud_id="br-quiet-sky-123456")
    report_id = await report_of(pool, [orphan, drift])
    for report, cloud_id, code in (
        (999_999_999_999, orphan.cloud_id, "REPORT_NOT_FOUND"),
        (report_id, "sg-00000000000000000", "ORPHAN_NOT_IN_REPORT"),
        (report_id, drift.cloud_id, "ORPHAN_NOT_IN_REPORT"),  # drift is no orphan
    ):
        resp = await request(api, headers, report, cloud_id)
        assert resp.status == 404 and (await resp.json())["code"] == code, (report, cloud_id)
    for body in (
        {},
        {"report_id": report_id},
        {"report_id": "one", "cloud_id": orphan.cloud_id},
        {"report_id": 0, "cloud_id": orphan.cloud_id},
        {"report_id": report_id, "cloud_id": "sg 1; drop"},
        {"report_id": report_id, "cloud_id": orphan.cloud_id, "force": True},
    ):
        resp = await api.post(DELETIONS, json=body, headers=headers)
        assert resp.status == 400 and (await resp.json())["code"] == "VALIDATION_FAILED", body
    for missing in ("999999999999", "abc"):
        resp = await api.get(f"{DELETIONS}/{missing}", headers=headers)
        assert resp.status == 404 and (await resp.json())["code"] == "ORPHAN_DELETION_NOT_FOUND"
    assert (await request(api, {}, report_id, orphan.cloud_id)).status == 401
    assert (await request(api, bearer("tfk_000000000000_" + "A" * 43), report_id, orphan.cloud_id)).status == 401
    assert await deletion_rows(pool, [orphan.cloud_id, drift.cloud_id]) == []
