"""The demo the run command shows: a VPC in moto, an org onboarded through the real API, and a
workspace whose agent boots, registers and answers over A2A."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import TextIO

from activities.a2a import pinned_client
from agent.client import ask
from devstack.moto_client import moto_ec2_client
from devstack.stack import save_secret
from domain import credentials
from starter import ApiError, OperatorClient, TenantClient, follow_org, follow_workspace

DEMO_VPC_TAG = "tenantflow-demo-vpc"


# Loopback, so that every instance's private IP is an address its agent really listens on (the
# boot emulator refuses instances outside 127/8): 127.<octet>.0.0/16. Stacks running side by side on
# one machine (the soak, the chaos run, the crash suite) each take their own octet: instance
# addresses are host addresses here, and two stacks on one network answer for each other's agents.
DEMO_NETWORK_OCTET = 42


def ensure_demo_network(endpoint_url: str, region: str, octet: int = DEMO_NETWORK_OCTET) -> tuple[str, list[str]]:
    """A VPC with two subnets in two zones, all tagged, found by tag so a restarted stack reuses them."""
    ec2 = moto_ec2_client(endpoint_url, region)
    tags = [{"Key": "Name", "Value": DEMO_VPC_TAG}]
    cidr = f"127.{octet}.0.0/16"
    found = ec2.describe_vpcs(
        Filters=[{"Name": "tag:Name", "Values": [DEMO_VPC_TAG]}, {"Name": "cidr", "Values": [cidr]}]
    )["Vpcs"]
    if found:
        vpc_id = found[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(CidrBlock=cidr, TagSpecifications=[{"ResourceType": "vpc", "Tags": tags}])["Vpc"][
            "VpcId"
        ]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    if not subnets:
        for i, zone in enumerate((f"{region}a", f"{region}b")):
            ec2.create_subnet(
                VpcId=vpc_id,
                CidrBlock=f"127.{octet}.{i}.0/24",
                AvailabilityZone=zone,
                TagSpecifications=[{"ResourceType": "subnet", "Tags": tags}],
            )
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    return vpc_id, sorted(s["SubnetId"] for s in subnets)


def onboard_demo_org(
    client: OperatorClient, slug: str, vpc_id: str, subnet_ids: list[str], out: TextIO = sys.stdout
) -> dict:
    try:
        org = client.org(slug)
    except ApiError as err:
        if err.status != 404:
            raise
        org = None
    if org is not None and org["status"] == "active":
        out.write(f"demo org '{slug}' is already active (saved state reused): {org['id']}\n")
        return org
    if org is None:
        created = client.onboard(name="Demo Org", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnet_ids)
        out.write(f"onboarding demo org '{slug}': {created['id']}\n")
    return follow_org(client, slug, out)


def demo_org_key(client: OperatorClient, api_url: str, slug: str, state_dir: Path, saved: str | None) -> str:
    """The demo org's API key: minted once and kept in the state directory like the other secrets."""
    if saved:
        try:
            TenantClient(api_url, saved).workspaces()
            return saved
        except ApiError as err:
            if err.status != 401:
                raise
    key = client.mint_key(slug, "local-demo")["key"]
    save_secret(state_dir, "demo_org_key", key)
    return key


def run_demo_workspace(tenant: TenantClient, name: str, signing_key: str, out: TextIO = sys.stdout) -> dict:
    """Create the demo workspace unless it is already running, follow it, and talk to its agent."""
    current = next((w for w in tenant.workspaces() if w["name"] == name and w["status"] != "failed"), None)
    if current is not None and current["status"] == "running":
        out.write(f"demo workspace '{name}' is already running: {current['id']}\n")
    else:
        if current is None:
            current = tenant.create_workspace(
                name=name, role="Demo agent", runtime="hermes", tier=2, model="claude-sonnet-4"
            )
            out.write(f"creating demo workspace '{name}': {current['id']}\n")
        current = follow_workspace(tenant, current["id"], out)
    ws = tenant.workspace(current["id"])
    if ws["status"] == "running":
        ws, reply = ask_when_reachable(tenant, ws["id"], "hello from the operator", signing_key)
        out.write(f"agent {ws['agent_url']} answered over A2A: {reply!r}\n")
    return ws


async def ask_agent(ws: dict, text: str, signing_key: str) -> str:
    """Talk to a workspace's agent as the platform does: only over TLS to the certificate it
    registered, with the platform's credential for it (derived from the stack's signing key, which
    only the worker holds in production; the local stack's is in its secrets.json)."""
    credential = credentials.agent_access(signing_key, ws["id"]).secret
    async with pinned_client(ws["agent_url"], ws["agent_cert_sha256"], credential) as http:
        return await ask(ws["agent_url"], text, http=http)


def ask_when_reachable(
    tenant: TenantClient, workspace_id: str, text: str, signing_key: str, timeout: float = 60.0
) -> tuple[dict, str]:
    """After a restart of the stack the instance boots again (on the same private address, as on
    EC2): ask until its agent answers."""
    deadline = time.monotonic() + timeout
    while True:
        ws = tenant.workspace(workspace_id)
        try:
            return ws, asyncio.run(ask_agent(ws, text, signing_key))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
