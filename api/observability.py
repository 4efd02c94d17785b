"""Health probes and Prometheus metrics of the API: requests by route and status, and latency."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from api.state import POOL, TEMPORAL
from domain.health import readiness

METRICS = web.AppKey("metrics", dict[str, Any])


def create_metrics() -> dict[str, Any]:
    registry = CollectorRegistry()
    return {
        "registry": registry,
        "requests": Counter(
            "tenantflow_api_requests_total", "API requests", ["method", "route", "status"], registry=registry
        ),
        "latency": Histogram(
            "tenantflow_api_request_duration_seconds", "API request latency", ["method", "route"], registry=registry
        ),
        "progress_polls": Counter(
            "tenantflow_api_progress_polls_total",
            "Live progress lookups by outcome: sent, joined (shared a query in flight), unavailable",
            ["outcome"],
            registry=registry,
        ),
    }


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    # The route template, not the path: ids in paths would explode the label cardinality.
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics = request.app[METRICS]
    metrics["requests"].labels(request.method, route, str(response.status)).inc()
    metrics["latency"].labels(request.method, route).observe(time.perf_counter() - started)
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = await readiness(request.app[POOL], request.app[TEMPORAL])
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ready" if ready else "not ready", **checks}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS]["registry"])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
