"""``/api/v1`` is the canonical API. The operator tutorial's paths (``/cp/...``, ``/workspaces``,
``/keys``, ``/registry/...``) stay as an identical mirror that announces its deprecation."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

API_V1 = "/api/v1"
# RFC 9745 Deprecation (a date as @epoch) and RFC 8594 Sunset.
DEPRECATED_SINCE = "@1795046400"  # 2026-11-18
SUNSET = "Wed, 30 Jun 2027 00:00:00 GMT"
# What RFC 3986 allows unencoded in a path (pchar and "/"), minus what the Link syntax reserves.
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
UNVERSIONED = {"/healthz", "/readyz", "/metrics", "/openapi.yaml"}


def canonical(legacy_path: str) -> str:
    """``/cp/orgs/{slug}`` -> ``/api/v1/orgs/{slug}``; ``/workspaces`` -> ``/api/v1/workspaces``."""
    return API_V1 + (legacy_path[len("/cp") :] if legacy_path.startswith("/cp/") else legacy_path)


def v1(path: str) -> str:
    """Where clients should go next (Location headers always name the canonical path)."""
    return canonical(path)


def add_versioned_routes(app: web.Application, *tables: web.RouteTableDef) -> None:
    for table in tables:
        for route in table:
            assert isinstance(route, web.RouteDef)
            app.router.add_route(route.method, canonical(route.path), route.handler)
            app.router.add_route(route.method, route.path, route.handler)


@web.middleware
async def deprecation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    path = request.path
    if not path.startswith(API_V1 + "/") and path not in UNVERSIONED:
        response.headers["Deprecation"] = DEPRECATED_SINCE
        response.headers["Sunset"] = SUNSET
        # The path is the client's, decoded: percent-encode it, or a control character in it
        # (``/cp/orgs/%00``) would make the header unwritable and drop the connection.
        response.headers["Link"] = f'<{quote(canonical(path), safe=_PATH_SAFE)}>; rel="successor-version"'
    return response
