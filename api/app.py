"""The aiohttp application and its entry point (``python -m api``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from temporalio.client import Client

from api import (
    lifecycle,
    operator_tokens,
    operator_workspaces,
    org_keys,
    orgs,
    orphan_deletions,
    reconcile_reports,
    registry,
    workspaces,
)
from api.auth import bootstrap_deprecation_middleware
from api.errors import error_middleware
from api.observability import METRICS, create_metrics, healthz, metrics, metrics_middleware, readyz
from api.progress import ProgressQueries
from api.ratelimit import rate_limit_middleware, rate_limits_context
from api.state import (
    AUDIT,
    OPERATOR_TOKENS,
    ORG_KEYS,
    ORGS,
    POOL,
    PROGRESS,
    RECONCILE,
    SETTINGS,
    TEMPORAL,
    WORKSPACES,
)
from api.versioning import add_versioned_routes, deprecation_middleware
from db import audit
from db.audit import AuditRepo
from db.audit_anchors import AnchorStore
from db.keys import OrgKeyRepo
from db.operators import OperatorTokenRepo
from db.orgs import OrgRepo
from db.pool import open_pool
from db.reconcile import ReconcileRepo
from db.workspaces import WorkspaceRepo
from domain.logs import configure_logging, get_logger
from domain.settings import Settings, get_settings
from domain.temporal import connect_temporal

MAX_BODY_BYTES = 64 * 1024
SPEC_PATH = Path(__file__).with_name("openapi.yaml")
# Every module whose routes are served at /api/v1/... and mirrored at their deprecated paths.
ROUTE_MODULES = (orgs, org_keys, workspaces, operator_workspaces, registry, lifecycle, reconcile_reports)


async def serve_spec(_: web.Request) -> web.Response:
    """The OpenAPI 3.1 contract, the source of truth clients and docs derive from."""
    return web.Response(text=SPEC_PATH.read_text(), content_type="application/yaml")


def create_app(settings: Settings, *, temporal: Client | None = None) -> web.Application:
    """The app; it opens its own pool and (lazily) its Temporal client unless one is given."""
    app = web.Application(
        middlewares=[
            metrics_middleware,
            deprecation_middleware,
            bootstrap_deprecation_middleware,
            error_middleware,
            rate_limit_middleware,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[METRICS] = create_metrics()
    app[SETTINGS] = settings

    async def resources(app: web.Application) -> AsyncIterator[None]:
        audit.configure(settings.audit_hmac_key.get_secret_value())
        pool = await open_pool(
            settings.database_url.get_secret_value(),
            migration_url=settings.migration_url(),
            min_size=settings.database_pool_min,
            max_size=settings.database_pool_max,
        )
        app[POOL] = pool
        app[ORGS] = OrgRepo(pool)
        app[ORG_KEYS] = OrgKeyRepo(pool, max_live_per_org=settings.max_live_keys_per_org)
        app[OPERATOR_TOKENS] = OperatorTokenRepo(pool)
        app[WORKSPACES] = WorkspaceRepo(pool)
        app[AUDIT] = AuditRepo(pool, AnchorStore.from_settings(settings).newest_async)
        app[RECONCILE] = ReconcileRepo(pool)
        app[TEMPORAL] = temporal or await connect_temporal(lazy=True)
        app[PROGRESS] = ProgressQueries(
            app[TEMPORAL], settings.progress_query_timeout_seconds, app[METRICS]["progress_polls"]
        )
        yield
        await pool.close()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(rate_limits_context(settings))
    add_versioned_routes(app, *(module.routes for module in ROUTE_MODULES))
    app.add_routes(operator_tokens.routes)
    app.add_routes(orphan_deletions.routes)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.yaml", serve_spec)
    return app


async def serve(settings: Settings) -> None:
    log = get_logger("tenantflow.api")
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.api_host, settings.api_port)
    await site.start()
    log.info("api listening", url=f"http://{settings.api_host}:{settings.api_port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    log.info("api stopped")


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
