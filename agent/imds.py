"""The instance's private IPv4 address, from the EC2 instance metadata service, IMDSv2 only.

IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a session
token; ``GET /latest/meta-data/local-ipv4`` with ``X-aws-ec2-metadata-token`` gives the address.

``TENANTFLOW_IMDS_ENDPOINT`` (default ``http://169.254.169.254``) exists for the agent's unit tests
only; production never sets it, and the local boot emulator serves the real address inside each
instance's network namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time

import httpx

from agent.log import get_logger

log = get_logger("agent.imds")

IMDS_ENDPOINT_ENV = "TENANTFLOW_IMDS_ENDPOINT"
DEFAULT_IMDS_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 60
DEADLINE_SECONDS = 30.0
# Answers that another attempt cannot change: the metadata service is disabled, refuses us, or
# does not know the path.
_FATAL = {400, 403, 404, 405}


class ImdsUnavailable(Exception):
    pass


def imds_endpoint() -> str:
    return (os.environ.get(IMDS_ENDPOINT_ENV) or DEFAULT_IMDS_ENDPOINT).rstrip("/")


async def _private_ipv4_once(client: httpx.AsyncClient, endpoint: str) -> str:
    resp = await client.put(
        f"{endpoint}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)}
    )
    resp.raise_for_status()
    resp = await client.get(
        f"{endpoint}/latest/meta-data/local-ipv4", headers={"X-aws-ec2-metadata-token": resp.text.strip()}
    )
    resp.raise_for_status()
    try:
        return str(ipaddress.IPv4Address(resp.text.strip()))
    except ValueError:
        raise ImdsUnavailable("local-ipv4 is not an IPv4 address") from None


async def private_ipv4(endpoint: str | None = None, *, deadline_seconds: float = DEADLINE_SECONDS) -> str:
    """The instance's private IPv4; retries connection errors and 5xx/429/401 briefly (the metadata
    service can lag the network at boot), raises ``ImdsUnavailable`` when it gives up."""
    endpoint = endpoint or imds_endpoint()
    deadline = time.monotonic() + deadline_seconds
    delay = 0.2
    # trust_env=False: a proxy configured for the platform must never see the metadata requests.
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        for attempt in range(1, 10_000):
            try:
                return await _private_ipv4_once(client, endpoint)
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                problem = f"HTTP {status} from {exc.request.method} {exc.request.url.path}"
                if status in _FATAL:
                    raise ImdsUnavailable(problem) from None
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise ImdsUnavailable(f"gave up after {attempt} attempts: {problem}")
            log.warning("imds_retry", attempt=attempt, problem=problem, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")
