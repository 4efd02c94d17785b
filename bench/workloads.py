"""Starting the real workflows (with the options the API uses) and their trivial baselines, and
org records and org entities for the benchmarks that send commands."""

from __future__ import annotations

import secrets

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from api.schemas import OrgCreateRequest
from bench.baseline import BaselineWorkflow
from bench.standins import BaselineInput, onboard_latencies, provision_latencies
from domain.onboard_org import OnboardOrgInput
from domain.operations import OPERATION, ORG_SLUG, WORKSPACE_ID, provision_workflow_id
from domain.provision_workspace import ProvisionWorkspaceInput
from domain.status import OrgStatus
from workflows.onboard_org import OnboardOrgWorkflow
from workflows.org import OrgWorkflow
from workflows.provision_workspace import ProvisionWorkspaceWorkflow


async def start_onboard(client: Client, tq: str, slug: str | None = None) -> WorkflowHandle:
    org_id = f"org_{secrets.token_hex(6)}"
    slug = slug or f"b{secrets.token_hex(5)}"
    inp = OnboardOrgInput(
        org_id=org_id,
        slug=slug,
        name="Bench Org",
        plan="pro",
        vpc_id="vpc-0123456789abcdef0",
        subnet_ids=["subnet-0123456789abcdef0"],
        neon_mode="branch",
    )
    return await client.start_workflow(
        OnboardOrgWorkflow.run,
        inp,
        id=f"org-onboard:{org_id}",
        task_queue=tq,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"Onboard org {slug} (pro)",
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(ORG_SLUG, slug), SearchAttributePair(OPERATION, "onboard")]
        ),
    )


def org_request(slug: str) -> OrgCreateRequest:
    return OrgCreateRequest(
        name=f"Bench {slug}",
        slug=slug,
        plan="pro",
        vpc_id="vpc-0123456789abcdef0",
        subnet_ids=["subnet-0123456789abcdef0"],
    )


def org_row(slug: str, status: OrgStatus = OrgStatus.active) -> dict:
    """An org record as the API reads it, for a worker that runs no database activity."""
    return {
        **org_request(slug).model_dump(),
        "id": f"org_{secrets.token_hex(6)}",
        "neon_mode": "branch",
        "status": status.value,
    }


async def insert_active_org(pool, slug: str | None = None) -> dict:
    """An org record, active, as if onboarded (no onboarding runs)."""
    from db.orgs import OrgRepo

    repo = OrgRepo(pool)
    req = org_request(slug or f"b{secrets.token_hex(5)}")
    row, _ = await repo.create_or_get(
        org_id=f"org_{secrets.token_hex(6)}",
        **req.model_dump(),
        request_hash=req.request_hash(),
        neon_mode="branch",
        actor="bench",
    )
    return await repo.update(row["id"], actor="bench", status=OrgStatus.active.value)


async def start_org_entity(client: Client, tq: str, row: dict, **inp: object) -> WorkflowHandle:
    """The org's entity as the API starts it for an org that existed before it (adopting the
    record's status, so nothing runs until a command arrives); ``inp`` overrides input fields."""
    from api.commands import _start_options, entity_input

    return await client.start_workflow(
        OrgWorkflow.run, entity_input(row, new=False).model_copy(update=inp), task_queue=tq, **_start_options(row)
    )


async def start_provision(client: Client, tq: str, timeout: float = 600.0) -> WorkflowHandle:
    ws_id = f"ws_{secrets.token_hex(6)}"
    inp = ProvisionWorkspaceInput(
        workspace_id=ws_id,
        org_id=f"org_{secrets.token_hex(6)}",
        org_slug="bench",
        name="agent",
        role="Bench worker",
        runtime="hermes",
        tier=1,
        model="claude-sonnet-4",
        instance_type="t3.small",
        subnet_id="subnet-0123456789abcdef0",
        security_group_id="sg-0123456789abcdef0",
        ami_id="ami-12c6146b",
        platform_url="http://127.0.0.1:9",
        registration_timeout_seconds=timeout,
        agent_check_timeout_seconds=120,
    )
    return await client.start_workflow(
        ProvisionWorkspaceWorkflow.run,
        inp,
        id=provision_workflow_id(ws_id),
        task_queue=tq,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary="Provision workspace agent for bench",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(ORG_SLUG, "bench"),
                SearchAttributePair(WORKSPACE_ID, ws_id),
                SearchAttributePair(OPERATION, "provision"),
            ]
        ),
    )


async def start_baseline(client: Client, tq: str, kind: str, ext: float, db: float) -> WorkflowHandle:
    if kind == "onboard":
        inp = BaselineInput(latencies=onboard_latencies(ext, db))
    else:
        latencies, after = provision_latencies(ext, db)
        inp = BaselineInput(latencies=latencies, signal_after=after)
    return await client.start_workflow(
        BaselineWorkflow.run, inp, id=f"baseline-{kind}-{secrets.token_hex(6)}", task_queue=tq
    )


async def run_one(client: Client, tq: str, kind: str, ext: float, db: float) -> None:
    """kind: onboard | provision | baseline-onboard | baseline-provision; returns when it finished."""
    if kind == "onboard":
        handle = await start_onboard(client, tq)
    elif kind == "provision":
        handle = await start_provision(client, tq)
    else:
        handle = await start_baseline(client, tq, kind.split("-", 1)[1], ext, db)
    await handle.result()
