"""Authentication and authorisation.

Operators: a named operator token (``tfo_...``), or the shared provision secret as a deprecated
bootstrap; both compared against what is stored in constant time. Tenants: an org API key
(``tfk_...``) holding scopes; every tenant route declares the one scope it requires with
``@requires(...)``, which is the only place that says so (the OpenAPI spec is tested against it).
Whoever a request authenticates as is put on it as ``request[api.state.PRINCIPAL]``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from api.errors import ApiError
from api.ratelimit import limit_principal
from api.state import OPERATOR_TOKENS, ORG_KEYS, PRINCIPAL, SETTINGS, TENANT_ORG
from db.keys import KeyExpired
from domain.scopes import Scope

log = structlog.get_logger("tenantflow.api")
BOOTSTRAP_PRINCIPAL = "operator:bootstrap"
BOOTSTRAP_WARNING = (
    '299 tenantflow "the shared provision secret is deprecated: authenticate with a named operator token '
    '(POST /api/v1/operator-tokens, starter.py operator-token create)"'
)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _is_bootstrap_secret(request: web.Request, token: str) -> bool:
    expected = request.app[SETTINGS].provision_secret.get_secret_value()
    # An unset secret admits no one rather than an empty bearer.
    return bool(expected) and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected.encode())


async def require_operator(request: web.Request) -> str:
    """The operator principal (``operator:<name>``, or ``operator:bootstrap`` for the deprecated
    shared secret), which is also the audit actor of what the request does; else 401."""
    token = bearer_token(request)
    who: str | None = None
    if token is not None and _is_bootstrap_secret(request, token):
        who = BOOTSTRAP_PRINCIPAL
        log.warning("deprecated bootstrap operator secret used", method=request.method, path=request.path)
    elif token is not None and (name := await request.app[OPERATOR_TOKENS].authenticate(token)):
        who = f"operator:{name}"
    if who is None:
        raise ApiError(401, "UNAUTHORIZED", "operator credentials required: Authorization: Bearer <operator token>")
    await limit_principal(request, who)  # records ``who`` as the request's principal
    return who


def principal(request: web.Request) -> str:
    """Who the (already authenticated) request acts as."""
    value: str = request[PRINCIPAL]
    return value


@web.middleware
async def bootstrap_deprecation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer to a request made with the shared secret says that the secret is deprecated."""
    response = await handler(request)
    if request.get(PRINCIPAL) == BOOTSTRAP_PRINCIPAL:
        response.headers["Warning"] = BOOTSTRAP_WARNING
    return response


# What the tenant's subdomain would carry at the edge; it may only agree with the key.
ORG_ROUTING_HEADER = "X-Org-Slug"


async def require_org_key(request: web.Request) -> dict[str, Any]:
    """The org of a live org API key, with the key's ``key_id``, ``key_scopes`` and
    ``key_expires_at``. The org comes from the key alone; a routing header that names another
    org is refused, never followed."""
    token = bearer_token(request)
    try:
        org = await request.app[ORG_KEYS].authenticate(token) if token else None
    except KeyExpired as expired:
        raise ApiError(401, "KEY_EXPIRED", f"{expired}: mint a new one") from None
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


TenantHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The scope each tenant route's handler requires: filled by @requires, read by the tests that
# hold the OpenAPI spec and the route x scope matrix to it.
REQUIRED_SCOPES: dict[Callable[..., Any], Scope] = {}


def requires(scope: Scope) -> Callable[[TenantHandler], TenantHandler]:
    """A tenant route: an org API key holding ``scope`` (else 403 ``MISSING_SCOPE`` naming it).
    The handler finds the org with ``tenant_org(request)``."""

    def decorate(handler: TenantHandler) -> TenantHandler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            org = await require_org_key(request)
            if scope.value not in org["key_scopes"]:
                raise ApiError(
                    403,
                    "MISSING_SCOPE",
                    f"this key lacks the scope '{scope.value}' this route requires"
                    f" (it holds: {', '.join(org['key_scopes']) or 'none'})",
                    required_scope=scope.value,
                )
            return await handler(request)

        REQUIRED_SCOPES[guarded] = scope
        return guarded

    return decorate


def tenant_org(request: web.Request) -> dict[str, Any]:
    """The org of the key a ``@requires`` route authenticated."""
    return request[TENANT_ORG]
