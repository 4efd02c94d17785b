"""Shared test helpers: seeding org rows as the API does, and reading what exists in the clouds."""

from __future__ import annotations

import contextlib
import secrets
from datetime import timedelta

import psycopg
from neon_api import NeonAPI

from api.schemas import OrgCreateRequest
from db.orgs import OrgRepo
from db.workspaces import WorkspaceRepo
from domain import credentials
from domain.onboard_org import OnboardOrgInput
from domain.resources import resource_name
from domain.settings import Settings
from tests.conftest import new_org_id
from tools.soak import neon_list


async def seed_org(pool, slug: str, vpc_id: str, subnet_ids: list[str], *, mode: str = "branch") -> OnboardOrgInput:
    """Insert the org row the way ``POST /cp/orgs`` does, and return the workflow input for it."""
    req = OrgCreateRequest(name=f"Org {slug}", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnet_ids)
    row, created = await OrgRepo(pool).create_or_get(
        org_id=new_org_id(), **req.model_dump(), request_hash=req.request_hash(), neon_mode=mode, actor="test"
    )
    assert created
    return OnboardOrgInput(
        org_id=row["id"], slug=slug, name=row["name"], plan="pro", vpc_id=vpc_id, subnet_ids=subnet_ids, neon_mode=mode
    )


def neon_client(settings: Settings) -> NeonAPI:
    return NeonAPI(settings.neon_api_key.get_secret_value(), base_url=settings.neon_base_url)


def neon_branches_named(settings: Settings, name: str) -> list[dict]:
    branches = neon_list(
        settings.neon_base_url,
        settings.neon_api_key.get_secret_value(),
        f"projects/{settings.neon_project_id}/branches",
        "branches",
    )
    return [b for b in branches if b["name"] == name]


def neon_projects_named(settings: Settings, name: str) -> list[dict]:
    projects = neon_list(settings.neon_base_url, settings.neon_api_key.get_secret_value(), "projects", "projects")
    return [p for p in projects if p["name"] == name]


def groups_named(ec2, inp: OnboardOrgInput) -> list[dict]:
    return ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [resource_name(inp.slug, inp.org_id)]}]
    )["SecurityGroups"]


def tenant_connection_uri(settings: Settings, project_id: str, branch_id: str | None) -> str:
    client = neon_client(settings)
    params = {"database_name": "neondb"}
    if branch_id:
        params["branch_id"] = branch_id
    return client._request("GET", f"projects/{project_id}/connection_uri", params=params)["uri"]


def can_connect(uri: str) -> bool:
    with contextlib.suppress(psycopg.OperationalError):
        with psycopg.connect(uri, connect_timeout=5) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    return False


def physical_databases(pg) -> set[str]:
    with psycopg.connect(pg.url("postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


async def onboard_active_org(env, settings, pool, task_queue: str, network, slug: str) -> dict:
    """An org onboarded by the real workflow, as every workspace test needs one."""
    from worker import build_worker
    from workflows.onboard_org import OnboardOrgWorkflow

    inp = await seed_org(pool, slug, *network)
    async with build_worker(env.client, settings, pool, task_queue=task_queue):
        await env.client.execute_workflow(
            OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
        )
    return await OrgRepo(pool).get(inp.org_id)


def instances_of(
    ec2, workspace_id: str, states=("pending", "running", "stopping", "stopped", "shutting-down")
) -> list[dict]:
    reservations = ec2.describe_instances(
        Filters=[
            {"Name": "tag:tenantflow:workspace-id", "Values": [workspace_id]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def user_data_of(ec2, instance_id: str) -> str:
    import base64

    raw = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(raw).decode()


async def active_org_key(pool, slug: str) -> str:
    """An active org (rows only, no workflow or cloud resources) and a fresh key of it."""
    from db.keys import OrgKeyRepo

    orgs = OrgRepo(pool)
    row, _ = await orgs.create_or_get(
        org_id=new_org_id(),
        name=slug,
        slug=slug,
        plan="pro",
        vpc_id="vpc-0123456789",
        subnet_ids=["subnet-0123456789"],
        request_hash=slug,
        neon_mode="branch",
        actor="test",
    )
    await orgs.update(row["id"], actor="test", status="active")
    org = await orgs.get(row["id"])
    assert org is not None
    return (await OrgKeyRepo(pool).mint(org, "k", actor="test"))[1]


async def provisioning_workspace(pool) -> tuple[WorkspaceRepo, str, str]:
    """A provisioning workspace with a live registration token: (repo, workspace id, token)."""
    org_id, ws_id = f"org_{secrets.token_hex(6)}", f"ws_{secrets.token_hex(6)}"
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO orgs (id, slug, name, plan, vpc_id, subnet_ids, status, neon_mode, request_hash)
               VALUES (%s, %s, 'T', 'starter', 'vpc-1', ARRAY['subnet-1'], 'active', 'branch', 'h')""",
            (org_id, f"t-{secrets.token_hex(4)}"),
        )
    repo = WorkspaceRepo(pool)
    await repo.reserve(
        org_id,
        workspace_id=ws_id,
        name=f"w-{secrets.token_hex(3)}",
        role="r",
        runtime="hermes",
        tier=1,
        model="m",
        instance_type="t3.micro",
        subnet_id="subnet-1",
        actor="test",
    )
    minted = credentials.mint(credentials.REGISTRATION_TOKEN)
    await repo.record_registration_token(ws_id, minted, timedelta(hours=1))
    return repo, ws_id, minted.secret
