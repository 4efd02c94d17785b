"""``python -m tools.check``: validate the configuration and reach every dependency before start.

Checks the settings, then Postgres, Temporal (and the search attributes the API sets), AWS EC2
and Neon, printing one line each; exits 1 if anything is wrong. It prints no secret.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

import psycopg
from pydantic import ValidationError

from domain.settings import Settings


def settings_problems(s: Settings) -> list[str]:
    problems = []
    if len(s.provision_secret.get_secret_value()) < 24:
        problems.append("TENANTFLOW_PROVISION_SECRET is unset or shorter than 24 characters")
    try:
        cidr = ipaddress.ip_network(s.platform_cidr)
        if cidr.prefixlen == 0:
            problems.append("TENANTFLOW_PLATFORM_CIDR must not admit the whole internet")
    except ValueError:
        problems.append(f"TENANTFLOW_PLATFORM_CIDR is not a CIDR: {s.platform_cidr!r}")
    if not s.public_url.startswith(("http://", "https://")):
        problems.append("TENANTFLOW_PUBLIC_URL must be an http(s) URL agents can reach")
    if not s.neon_api_key.get_secret_value():
        problems.append("TENANTFLOW_NEON_API_KEY is unset")
    if s.neon_mode == "branch" and not s.neon_project_id:
        problems.append("branch mode needs TENANTFLOW_NEON_PROJECT_ID")
    return problems


async def check_postgres(s: Settings) -> str:
    async with await psycopg.AsyncConnection.connect(s.database_url.get_secret_value(), connect_timeout=5) as conn:
        version = (await (await conn.execute("SHOW server_version")).fetchone())[0]
    return f"PostgreSQL {version}"


async def check_temporal(s: Settings) -> str:
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    from domain.operations import SEARCH_ATTRIBUTES
    from domain.temporal import connect_temporal

    client = await connect_temporal()
    await client.service_client.check_health()
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        missing = set(SEARCH_ATTRIBUTES) - set(listed.custom_attributes)
    except Exception:  # noqa: BLE001 - Temporal Cloud keys may not see the operator API
        return f"namespace {client.namespace} reachable (search attributes not verifiable with this credential)"
    if missing:
        raise RuntimeError(f"search attributes not registered: {', '.join(sorted(missing))} (see deploy/README.md)")
    return f"namespace {client.namespace} reachable, search attributes registered"


async def check_aws(s: Settings) -> str:
    from activities.ec2 import make_ec2_client

    ec2 = make_ec2_client(s)
    vpcs = await asyncio.to_thread(ec2.describe_vpcs, MaxResults=5)
    return f"EC2 in {s.aws_region} answers ({len(vpcs['Vpcs'])} VPCs visible)"


async def check_neon(s: Settings) -> str:
    from activities.neon import TimedNeonAPI

    client = TimedNeonAPI(s.neon_api_key.get_secret_value(), base_url=s.neon_base_url, timeout=10)
    if s.neon_mode == "branch":
        project = await asyncio.to_thread(client._request, "GET", f"projects/{s.neon_project_id}")
        return f"Neon project {project['project']['id']} reachable (branch mode)"
    await asyncio.to_thread(client._request, "GET", "projects", params={"limit": 1})
    return "Neon API reachable (project mode)"


async def run_checks(s: Settings, out: TextIO) -> bool:
    ok = True
    for problem in settings_problems(s):
        out.write(f"FAIL settings: {problem}\n")
        ok = False
    if ok:
        out.write("ok   settings\n")
    checks: list[tuple[str, Callable[[Settings], Awaitable[str]]]] = [
        ("postgres", check_postgres),
        ("temporal", check_temporal),
        ("aws", check_aws),
        ("neon", check_neon),
    ]
    for name, check in checks:
        try:
            detail = await asyncio.wait_for(check(s), 20)
            out.write(f"ok   {name}: {detail}\n")
        except Exception as err:  # noqa: BLE001 - every failure is reported, none hides the others
            # Type and a short message only: messages of some clients embed URLs with credentials.
            message = str(err).split("\n")[0][:200]
            if "://" in message and "@" in message:
                message = "(message withheld: it contains a connection string)"
            out.write(f"FAIL {name}: {type(err).__name__}: {message}\n")
            ok = False
    return ok


def main(out: TextIO = sys.stdout) -> int:
    try:
        settings = Settings()
    except ValidationError as err:
        out.write(f"FAIL settings: {err}\n")
        return 1
    return 0 if asyncio.run(run_checks(settings, out)) else 1


if __name__ == "__main__":
    sys.exit(main())
