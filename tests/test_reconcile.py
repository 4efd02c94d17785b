"""Reconciliation with its real activities against moto, the local Neon server and Postgres (on
the time-skipping server), and its Schedule on the dev server.

ReconcileWorkflowV2 (what the schedule starts) is what every test runs, its report read back from
the database where the product stores it; ReconcileWorkflow (the first version, still registered
for its open runs) runs the dry run too. moto and the platform Neon project are shared by the
whole session, so every run here is limited to the test's own org (``org_ids``) and every
assertion is scoped to what the test created.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from activities.ec2 import make_ec2_client
from activities.reconcile import ReconcileActivities
from db.ledger import Ledger
from db.reconcile import ReconcileRepo
from domain.reconcile import ReconcileInput, ReconcileOutcome, ReconcileReport
from domain.resources import MANAGED_TAG, ORG_ID_TAG, resource_name
from tests.helpers import neon_branches_named, onboard_active_org
from worker import ensure_reconcile_schedule
from workflows.reconcile import ReconcileWorkflow, ReconcileWorkflowV2

WORKFLOWS = [ReconcileWorkflowV2, ReconcileWorkflow]


def reconcile_worker(env, settings, pool, task_queue: str, **client_factories: Any) -> Worker:
    acts = ReconcileActivities(settings, ReconcileRepo(pool), **client_factories)
    return Worker(
        env.client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[
            acts.inventory_page,
            acts.drift_page,
            acts.delete_orphan,
            acts.save_report_part,
            acts.inventory_aws,
            acts.inventory_neon,
            acts.read_records,
            acts.save_report,
        ],
    )


async def stored_report(pool, workflow_id: str) -> ReconcileReport:
    """The report as the product stored it."""
    [row] = await ReconcileRepo(pool).reports(workflow_id=workflow_id)
    return ReconcileReport.model_validate({**row, **row["detail"]})


async def reconcile(
    env,
    settings,
    pool,
    task_queue: str,
    *,
    client_factories: dict | None = None,
    first_version: bool = False,
    **inp: Any,
) -> ReconcileReport:
    """Run a reconciliation to its end; its report (read back from the database for V2)."""
    workflow_id = f"reconcile-test-{uuid.uuid4().hex[:10]}"
    async with reconcile_worker(env, settings, pool, task_queue, **(client_factories or {})):
        if first_version:
            return await env.client.execute_workflow(
                ReconcileWorkflow.run, ReconcileInput(**inp), id=workflow_id, task_queue=task_queue
            )
        outcome = await env.client.execute_workflow(
            ReconcileWorkflowV2.run, ReconcileInput(**inp), id=workflow_id, task_queue=task_queue
        )
    report = await stored_report(pool, workflow_id)
    assert isinstance(outcome, ReconcileOutcome) and outcome.report_id == report.id
    assert (outcome.orphans, outcome.drift, outcome.budget, outcome.cap_exceeded) == (
        len(report.orphans),
        len(report.drift),
        report.budget,
        report.cap_exceeded,
    )
    return report


class GroupInUseOnceEc2:
    """The real moto client, except that the first group deletion is refused as real EC2 refuses
    it while the group's instances are still shutting down (moto lets it through)."""

    def __init__(self, real: Any):
        self._real = real
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def delete_security_group(self, **kwargs: Any) -> dict:
        if not self.refused:
            self.refused += 1
            raise ClientError(
                {
                    "Error": {"Code": "DependencyViolation", "Message": "resource has a dependent object"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "DeleteSecurityGroup",
            )
        return self._real.delete_security_group(**kwargs)


@dataclass
class Orphaned:
    org: dict
    instance_id: str

    @property
    def expected(self) -> set[tuple[str, str]]:
        return {
            ("ec2_instance", self.instance_id),
            ("security_group", self.org["security_group_id"]),
            ("neon_branch", self.org["neon_branch_id"]),
        }


def instance_state(ec2, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def group_exists(ec2, group_id: str) -> bool:
    try:
        return bool(ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"])
    except ClientError as err:
        assert err.response["Error"]["Code"] == "InvalidGroup.NotFound"
        return False


def branch_ids(settings, org: dict) -> list[str]:
    return [b["id"] for b in neon_branches_named(settings, f"tf-{org['slug']}-{org['id'].removeprefix('org_')}")]


async def onboard(skip_env, settings, pool, task_queue, network) -> dict:
    return await onboard_active_org(skip_env, settings, pool, task_queue, network, f"r{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def orphaned(skip_env, settings, pool, ec2, network, task_queue) -> Orphaned:
    """An onboarded org with a workspace instance, whose org row was then deleted by hand."""
    org = await onboard(skip_env, settings, pool, task_queue, network)
    tags = [
        {"Key": "Name", "Value": f"tf-{org['slug']}-agent"},
        {"Key": "tenantflow:managed", "Value": "true"},
        {"Key": "tenantflow:org-id", "Value": org["id"]},
        {"Key": "tenantflow:org-slug", "Value": org["slug"]},
        {"Key": "tenantflow:workspace-id", "Value": f"ws_{uuid.uuid4().hex[:12]}"},
    ]
    instance_id = ec2.run_instances(
        ImageId=settings.agent_ami_id,
        InstanceType="t3.small",
        MinCount=1,
        MaxCount=1,
        SubnetId=org["subnet_ids"][0],
        SecurityGroupIds=[org["security_group_id"]],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"][0]["InstanceId"]
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM orgs WHERE id = %s", (org["id"],))
    # An instance launched a moment ago is not in EC2's filtered answers yet (eventual consistency;
    # the reconciler would find it on its next run): wait until it is.
    for _ in range(100):
        if ec2.describe_instances(Filters=[{"Name": "tag:tenantflow:org-id", "Values": [org["id"]]}])["Reservations"]:
            break
        await asyncio.sleep(0.1)
    return Orphaned(org=org, instance_id=instance_id)


@pytest.mark.parametrize("first_version", [False, True], ids=["v2", "v1"])
async def test_dry_run_reports_the_orphans_of_a_deleted_org_and_deletes_nothing(
    skip_env, settings, pool, ec2, orphaned, task_queue, first_version
):
    report = await reconcile(
        skip_env, settings, pool, task_queue, org_ids=[orphaned.org["id"]], first_version=first_version
    )

    assert {(f.kind, f.cloud_id) for f in report.orphans} == orphaned.expected
    assert {(f.reason, f.org_id, f.org_slug) for f in report.orphans} == {
        ("org_missing", orphaned.org["id"], orphaned.org["slug"])
    }
    assert report.dry_run and report.deleted == [] and report.drift == []
    assert instance_state(ec2, orphaned.instance_id) == "running"
    assert group_exists(ec2, orphaned.org["security_group_id"])
    assert branch_ids(settings, orphaned.org) == [orphaned.org["neon_branch_id"]]
    [stored] = await ReconcileRepo(pool).reports(workflow_id=report.workflow_id)
    assert stored["id"] == report.id and stored["dry_run"] and not stored["cap_exceeded"]
    assert {(f["kind"], f["cloud_id"]) for f in stored["findings"]} == orphaned.expected


async def test_delete_removes_orphans_updates_the_ledger_and_audits(dev_env, settings, pool, ec2, orphaned, task_queue):
    # On the dev server, in real time: the group's deletion is refused while the terminated
    # instance's interfaces drain (a second, real time), and Temporal's retries must outlast that.
    # The time-skipping server would skip the retries' backoff and use up the deadline at once.
    org_id = orphaned.org["id"]
    ec2_in_use = GroupInUseOnceEc2(make_ec2_client(settings))
    # Pages of 5: the session's fleet spans several pages of every EC2 kind.
    report = await reconcile(
        dev_env,
        settings,
        pool,
        task_queue,
        org_ids=[org_id],
        delete=True,
        max_deletes=1000,
        max_delete_fraction=1.0,
        page_size=5,
        client_factories={"ec2_client_factory": lambda: ec2_in_use},
    )

    assert not report.dry_run and not report.cap_exceeded
    assert ec2_in_use.refused == 1  # DependencyViolation was retried
    assert {(d.kind, d.cloud_id, d.outcome) for d in report.deleted} == {
        (kind, cloud_id, "deleted") for kind, cloud_id in orphaned.expected
    }
    assert instance_state(ec2, orphaned.instance_id) == "terminated"
    assert not group_exists(ec2, orphaned.org["security_group_id"])
    assert branch_ids(settings, orphaned.org) == []
    ledger = await Ledger(pool).for_org(org_id)
    assert {r["kind"]: r["status"] for r in ledger} == {"security_group": "deleted", "neon_branch": "deleted"}
    async with pool.connection() as conn:
        audited = await (
            await conn.execute(
                """SELECT actor, outcome, org_slug, resource_ids FROM audit_log
               WHERE org_id = %s AND action = 'reconcile.delete'""",
                (org_id,),
            )
        ).fetchall()
    assert {(a["actor"], a["outcome"], a["org_slug"]) for a in audited} == {
        ("reconciler", "deleted", orphaned.org["slug"])
    }
    assert {next(iter(a["resource_ids"].items())) for a in audited} == orphaned.expected
    # The deleting run (parallel and sequential phases) replays deterministically.
    history = await dev_env.client.get_workflow_handle(report.workflow_id).fetch_history()
    await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(history)

    again = await reconcile(
        dev_env, settings, pool, task_queue, org_ids=[org_id], delete=True, max_deletes=1000, max_delete_fraction=1.0
    )
    assert again.findings == [] and again.deleted == []


async def test_caps_exceeded_delete_nothing(skip_env, settings, pool, ec2, orphaned, task_queue):
    org_id = orphaned.org["id"]
    by_count = await reconcile(
        skip_env, settings, pool, task_queue, org_ids=[org_id], delete=True, max_deletes=2, max_delete_fraction=1.0
    )
    # The fleet holds at least these three, so 0.1 % of it is below one deletion.
    by_share = await reconcile(
        skip_env, settings, pool, task_queue, org_ids=[org_id], delete=True, max_deletes=1000, max_delete_fraction=0.001
    )

    for report in (by_count, by_share):
        assert report.cap_exceeded and report.deleted == []
        assert {(f.kind, f.cloud_id) for f in report.orphans} == orphaned.expected
        assert report.budget.orphans == 3 and report.budget.fleet_size >= 3
        [stored] = await ReconcileRepo(pool).reports(workflow_id=report.workflow_id)
        assert stored["cap_exceeded"] and stored["deleted"] == []
    assert by_count.budget.max_deletes == 2 and by_share.budget.max_delete_fraction == 0.001
    assert instance_state(ec2, orphaned.instance_id) == "running"
    assert group_exists(ec2, orphaned.org["security_group_id"])
    assert branch_ids(settings, orphaned.org) == [orphaned.org["neon_branch_id"]]
    assert {r["status"] for r in await Ledger(pool).for_org(org_id)} == {"created"}


async def test_resource_removed_out_of_band_is_drift(skip_env, settings, pool, ec2, network, task_queue):
    org = await onboard(skip_env, settings, pool, task_queue, network)
    ec2.delete_security_group(GroupId=org["security_group_id"])

    report = await reconcile(
        skip_env,
        settings,
        pool,
        task_queue,
        org_ids=[org["id"]],
        delete=True,
        max_deletes=1000,
        max_delete_fraction=1.0,
    )

    assert report.orphans == [] and report.deleted == []
    [drift] = report.drift
    assert (drift.kind, drift.cloud_id, drift.org_id, drift.reason) == (
        "security_group",
        org["security_group_id"],
        org["id"],
        "missing_in_cloud",
    )
    assert branch_ids(settings, org) == [org["neon_branch_id"]]  # the org's live branch is not a finding


async def test_schedule_is_created_updated_and_runs(dev_env, settings, pool, task_queue):
    schedule_id = f"reconcile-test-{uuid.uuid4().hex[:8]}"
    await ensure_reconcile_schedule(dev_env.client, settings, task_queue=task_queue, schedule_id=schedule_id)
    handle = dev_env.client.get_schedule_handle(schedule_id)
    try:
        first = await handle.describe()
        assert first.schedule.spec.intervals[0].every == timedelta(seconds=settings.reconcile_interval_seconds)
        faster = settings.model_copy(update={"reconcile_interval_seconds": 900})
        await ensure_reconcile_schedule(dev_env.client, faster, task_queue=task_queue, schedule_id=schedule_id)

        described = await handle.describe()
        assert [i.every for i in described.schedule.spec.intervals] == [timedelta(seconds=900)]
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == ("ReconcileWorkflowV2", task_queue)
        [inp] = await dev_env.client.data_converter.decode(action.args, [ReconcileInput])
        assert inp == ReconcileInput(
            delete=settings.reconcile_delete_enabled,
            max_deletes=settings.reconcile_max_deletes,
            max_delete_fraction=settings.reconcile_max_delete_fraction,
        )

        async with reconcile_worker(dev_env, settings, pool, task_queue):
            await handle.trigger()
            workflow_id = await first_started_workflow(handle)
            assert workflow_id.startswith("reconcile")
            run = dev_env.client.get_workflow_handle_for(ReconcileWorkflowV2.run, workflow_id)
            outcome = await run.result()
            progress = await run.query(ReconcileWorkflowV2.progress)
            assert (progress.status, progress.steps_done) == ("done", progress.steps_total)
            assert await run.query(ReconcileWorkflowV2.report) == await stored_report(pool, workflow_id)
        [stored] = await ReconcileRepo(pool).reports(workflow_id=workflow_id)
        assert stored["id"] == outcome.report_id and stored["dry_run"] is (not settings.reconcile_delete_enabled)
    finally:
        await handle.delete()


async def test_v2_history_carries_pages_and_ids_never_the_fleet(
    skip_env, settings, pool, ec2, orphaned, network, task_queue
):
    """Another org's resources count towards the fleet, but never enter V2's history (V1 put
    every resource of the fleet into one activity result)."""
    stranger = f"org_{uuid.uuid4().hex[:12]}"
    group_id = ec2.create_security_group(
        GroupName=resource_name("stranger", stranger),
        Description="another org's",
        VpcId=network[0],
        TagSpecifications=[
            {
                "ResourceType": "security-group",
                "Tags": [{"Key": MANAGED_TAG, "Value": "true"}, {"Key": ORG_ID_TAG, "Value": stranger}],
            }
        ],
    )["GroupId"]
    try:
        for _ in range(100):  # visible to filtered lookups (eventual consistency)
            if ec2.describe_security_groups(Filters=[{"Name": "tag:" + ORG_ID_TAG, "Values": [stranger]}])[
                "SecurityGroups"
            ]:
                break
            await asyncio.sleep(0.1)
        org_id = orphaned.org["id"]
        v2 = await reconcile(skip_env, settings, pool, task_queue, org_ids=[org_id], page_size=5)
        v1 = await reconcile(skip_env, settings, pool, task_queue, org_ids=[org_id], first_version=True)

        async def history_of(report: ReconcileReport) -> bytes:
            """Every event, payloads included, as the server stores it."""
            history = await skip_env.client.get_workflow_handle(report.workflow_id).fetch_history()
            return b"".join(event.SerializeToString() for event in history.events)

        assert group_id.encode() in await history_of(v1)
        assert group_id.encode() not in await history_of(v2)
        assert v2.budget.fleet_size >= 4  # the orphans and the stranger's group
        assert {(f.kind, f.cloud_id) for f in v2.orphans} == orphaned.expected
    finally:
        ec2.delete_security_group(GroupId=group_id)


async def test_a_report_stored_in_parts_is_whole_and_a_repeated_part_replaces_itself(pool):
    repo = ReconcileRepo(pool)
    workflow_id, run_id = f"reconcile-parts-{uuid.uuid4().hex[:8]}", "run"
    findings = [
        {"problem": "drift", "reason": "missing_in_cloud", "kind": "security_group", "cloud_id": f"sg-{i}"}
        for i in range(7)
    ]
    now = datetime.now(UTC)
    report_id = await repo.save_report(
        workflow_id=workflow_id,
        run_id=run_id,
        started_at=now,
        finished_at=now,
        dry_run=True,
        cap_exceeded=False,
        findings=findings[:3],
        deleted=[],
        detail={},
    )
    for _ in range(2):  # a retried part
        assert (
            await repo.extend_findings(workflow_id=workflow_id, run_id=run_id, offset=3, findings=findings[3:6])
            == report_id
        )
    await repo.extend_findings(workflow_id=workflow_id, run_id=run_id, offset=6, findings=findings[6:])
    [stored] = await repo.reports(workflow_id=workflow_id)
    assert stored["findings"] == findings


async def first_started_workflow(handle) -> str:
    for _ in range(100):
        info = (await handle.describe()).info
        started = [*info.running_actions, *(a.action for a in info.recent_actions)]
        if started:
            return started[0].workflow_id
        await asyncio.sleep(0.1)
    raise AssertionError("the schedule started no workflow")
