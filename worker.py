"""The tenantflow worker: runs every workflow and activity on one task queue.

python worker.py            # settings from TENANTFLOW_* and TEMPORAL_* environment variables
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from datetime import timedelta
from typing import Any

from aiohttp import ClientSession, web
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker

from activities.a2a import AgentActivities
from activities.audit_anchor import AuditAnchorActivities
from activities.ec2 import Ec2Activities
from activities.instances import InstanceActivities
from activities.lifecycle import OrgLifecycleActivities
from activities.neon import NeonActivities
from activities.reconcile import ReconcileActivities
from activities.store import OrgStoreActivities
from activities.workflow_control import WorkflowControlActivities
from activities.workspace_store import WorkspaceStoreActivities
from db import audit
from db.audit_anchors import AnchorStore
from db.ledger import Ledger
from db.orgs import OrgRepo
from db.pool import Pool, open_pool
from db.reconcile import ReconcileRepo
from db.workspaces import WorkspaceRepo
from domain.audit import AUDIT_ANCHOR_SCHEDULE_ID, AUDIT_ANCHOR_WORKFLOW_ID
from domain.health import readiness
from domain.logs import configure_logging, get_logger
from domain.operations import RECONCILE_SCHEDULE_ID, reconcile_start
from domain.reconcile import ReconcileInput
from domain.settings import Settings, get_settings
from domain.temporal import connect_temporal
from workflows.audit_anchor import AuditAnchorWorkflow
from workflows.delete_orphan import DeleteOrphanWorkflow
from workflows.deprovision_workspace import DeprovisionWorkspaceWorkflow
from workflows.hard_delete_org import HardDeleteOrgWorkflow
from workflows.onboard_org import OnboardOrgWorkflow
from workflows.org import OrgWorkflow
from workflows.provision_workspace import ProvisionWorkspaceWorkflow
from workflows.reconcile import ReconcileWorkflow, ReconcileWorkflowV2
from workflows.suspend_org import ResumeOrgWorkflow, SuspendOrgWorkflow
from workflows.validate_org_network import ValidateOrgNetworkWorkflow

# ReconcileWorkflow stays registered until its last run closes (the schedule starts V2).
WORKFLOWS = [
    OrgWorkflow,
    OnboardOrgWorkflow,
    ProvisionWorkspaceWorkflow,
    DeprovisionWorkspaceWorkflow,
    SuspendOrgWorkflow,
    ResumeOrgWorkflow,
    HardDeleteOrgWorkflow,
    ReconcileWorkflowV2,
    ReconcileWorkflow,
    DeleteOrphanWorkflow,
    AuditAnchorWorkflow,
    ValidateOrgNetworkWorkflow,
]


def build_activities(settings: Settings, pool: Pool, client: Client, **overrides: Any) -> list[Any]:
    """Every activity, bound to its clients. ``overrides`` swap a client (tests inject faults)."""
    ledger = Ledger(pool)
    workspaces = WorkspaceRepo(pool)
    ec2 = Ec2Activities(settings, ledger, overrides.get("ec2_client_factory"))
    instances = InstanceActivities(settings, ledger, workspaces, overrides.get("ec2_client_factory"))
    neon = NeonActivities(settings, ledger, overrides.get("neon_client_factory"))
    store = OrgStoreActivities(OrgRepo(pool))
    ws_store = WorkspaceStoreActivities(workspaces)
    control = WorkflowControlActivities(client)
    lifecycle = OrgLifecycleActivities(pool)
    reconcile = ReconcileActivities(
        settings, ReconcileRepo(pool), overrides.get("ec2_client_factory"), overrides.get("neon_client_factory")
    )
    anchors = AuditAnchorActivities(pool, overrides.get("anchor_store") or AnchorStore.from_settings(settings))
    return [
        anchors.anchor_audit_heads,
        ec2.check_org_network,
        ec2.validate_network,
        ec2.ensure_security_group,
        ec2.delete_security_group,
        neon.ensure_tenant_database,
        neon.wait_for_neon_operations,
        neon.delete_tenant_database,
        store.record_org_provisioning,
        store.record_org_resources,
        store.mark_org_active,
        store.mark_org_failed,
        instances.launch_instance,
        instances.wait_instance_running,
        instances.terminate_instances,
        instances.terminate_org_instances,
        instances.stop_workspace_instances,
        instances.start_workspace_instances,
        AgentActivities(settings).check_agent_card,
        ws_store.confirm_workspace_slot,
        ws_store.mark_workspace_running,
        ws_store.mark_workspace_failed,
        ws_store.mark_workspace_deleting,
        ws_store.mark_workspace_deleted,
        control.cancel_and_wait,
        control.wait_until_closed,
        lifecycle.set_org_status,
        lifecycle.transition_org,
        lifecycle.set_org_quota,
        lifecycle.read_org_status,
        lifecycle.revoke_org_keys,
        lifecycle.revoke_org_credentials,
        lifecycle.list_org_workspaces,
        lifecycle.set_workspaces_status,
        lifecycle.audit_step,
        lifecycle.purge_org,
        reconcile.inventory_page,
        reconcile.drift_page,
        reconcile.delete_orphan,
        reconcile.save_report_part,
        reconcile.inventory_aws,
        reconcile.inventory_neon,
        reconcile.read_records,
        reconcile.save_report,
        reconcile.recheck_orphan,
        reconcile.finish_orphan_deletion,
    ]


def build_worker(
    client: Client, settings: Settings, pool: Pool, *, task_queue: str | None = None, **overrides: Any
) -> Worker:
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(settings, pool, client, **overrides),
        # In-flight activities get this long to finish before a shutdown cancels them.
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def reconcile_schedule(settings: Settings, task_queue: str) -> Schedule:
    """The Temporal Schedule that runs reconciliation, from the settings."""
    inp = ReconcileInput(
        delete=settings.reconcile_delete_enabled,
        max_deletes=settings.reconcile_max_deletes,
        max_delete_fraction=settings.reconcile_max_delete_fraction,
    )
    start = reconcile_start(delete=inp.delete)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ReconcileWorkflowV2.run,
            inp,
            # The server appends the scheduled time, so every run has its own id: reconcile-<time>.
            id=start.id,
            task_queue=task_queue,
            static_summary=start.summary,
            typed_search_attributes=start.search_attributes,
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.reconcile_interval_seconds))]
        ),
        # A run still deleting (waiting on draining instances) is never doubled up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def audit_anchor_schedule(settings: Settings, task_queue: str) -> Schedule:
    """The Temporal Schedule that anchors every audit chain's head to the write-once store."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            AuditAnchorWorkflow.run,
            id=AUDIT_ANCHOR_WORKFLOW_ID,
            task_queue=task_queue,
            static_summary="Anchor every audit chain's head",
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=settings.audit_anchor_interval_seconds))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_reconcile_schedule(
    client: Client, settings: Settings, *, task_queue: str | None = None, schedule_id: str = RECONCILE_SCHEDULE_ID
) -> None:
    await ensure_schedule(client, schedule_id, reconcile_schedule(settings, task_queue or settings.task_queue))


async def ensure_audit_anchor_schedule(
    client: Client, settings: Settings, *, task_queue: str | None = None, schedule_id: str = AUDIT_ANCHOR_SCHEDULE_ID
) -> None:
    await ensure_schedule(client, schedule_id, audit_anchor_schedule(settings, task_queue or settings.task_queue))


async def ensure_schedule(client: Client, schedule_id: str, wanted: Schedule) -> None:
    """Create the schedule, or update it to the current settings; safe from every worker start."""
    try:
        await client.create_schedule(schedule_id, wanted)
    except ScheduleAlreadyRunningError:

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
            # Keep the state, so that a pause set by an operator survives a worker restart.
            return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=current.description.schedule.state))

        await client.get_schedule_handle(schedule_id).update(update)


def metrics_runtime(settings: Settings) -> Runtime:
    """The SDK's own metrics (workflow and activity outcomes by type, latencies, task slots)."""
    address = f"127.0.0.1:{settings.worker_sdk_metrics_port}"
    return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))


async def start_health_server(settings: Settings, pool: Pool, client: Client, worker: Worker) -> web.AppRunner:
    """/healthz (the worker runs), /readyz (and its database and Temporal answer), /metrics."""

    async def healthz(_: web.Request) -> web.Response:
        running = worker.is_running
        return web.json_response({"status": "ok" if running else "stopped"}, status=200 if running else 503)

    async def readyz(_: web.Request) -> web.Response:
        checks = {"worker": "ok" if worker.is_running else "stopped", **await readiness(pool, client)}
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        async with (
            ClientSession() as http,
            http.get(f"http://127.0.0.1:{settings.worker_sdk_metrics_port}/metrics") as resp,
        ):
            return web.Response(body=await resp.read(), headers={"Content-Type": resp.headers["Content-Type"]})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.worker_health_host, settings.worker_health_port).start()
    return runner


async def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    log = get_logger("tenantflow.worker")
    audit.configure(settings.audit_hmac_key.get_secret_value())
    pool = await open_pool(
        settings.database_url.get_secret_value(),
        migration_url=settings.migration_url(),
        min_size=settings.database_pool_min,
        max_size=settings.database_pool_max,
    )
    client = await connect_temporal(runtime=metrics_runtime(settings))
    worker = build_worker(client, settings, pool)
    # Idempotent: every worker start (re)applies the reconciliation schedule from its settings.
    await ensure_reconcile_schedule(client, settings)
    await ensure_audit_anchor_schedule(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker started", task_queue=settings.task_queue, namespace=client.namespace)
    async with worker:
        health = await start_health_server(settings, pool, client, worker)
        await stop.wait()
        log.info("worker stopping")
        await health.cleanup()
    await pool.close()
    log.info("worker stopped")


if __name__ == "__main__":
    asyncio.run(main())
