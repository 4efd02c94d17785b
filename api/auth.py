"""Operator authentication: ``Authorization: Bearer <provision secret>``, compared in constant time."""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from api.errors import ApiError
from api.ratelimit import limit_principal
from api.state import ORG_KEYS, SETTINGS, TENANT_ORG


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_operator(request: web.Request) -> None:
    expected = request.app[SETTINGS].provision_secret.get_secret_value()
    token = bearer_token(request)
    # An unset secret refuses everyone rather than admitting an empty bearer.
    if (
        not expected
        or token is None
        or not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode())
    ):
        raise ApiError(401, "UNAUTHORIZED", "operator credentials required: Authorization: Bearer <provision secret>")
    await limit_principal(request, "operator:bootstrap")


# What the tenant's subdomain would carry at the edge; it may only agree with the key.
ORG_ROUTING_HEADER = "X-Org-Slug"


async def require_org_key(request: web.Request) -> dict[str, Any]:
    """The org of a live org API key. The org comes from the key alone; a routing header that
    names another org is refused, never followed."""
    token = bearer_token(request)
    org = await request.app[ORG_KEYS].authenticate(token) if token else None
    if org is None:
        raise ApiError(401, "UNAUTHORIZED", "a valid org API key is required: Authorization: Bearer tfk_...")
    await limit_principal(request, f"org:{org['id']}")
    routed = request.headers.get(ORG_ROUTING_HEADER)
    if routed is not None and routed != org["slug"]:
        raise ApiError(403, "ORG_MISMATCH", f"{ORG_ROUTING_HEADER} does not match the org of this key")
    if org["status"] != "active":
        # Refused from the moment a suspension or deletion is accepted, whether or not its
        # workflow has reached the step that revokes the keys.
        reason = f" ({org['status_reason']})" if org.get("status_reason") else ""
        raise ApiError(403, "ORG_NOT_ACTIVE", f"org is {org['status']}{reason}: its keys are refused")
    request[TENANT_ORG] = org
    return org
