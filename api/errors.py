"""One error shape for every failure: ``{"error": message, "code": MACHINE_CODE, "request_id": ...}``."""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

import psycopg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError
from temporalio.service import RPCError

from api.state import REQUEST_ID

log = structlog.get_logger("tenantflow.api")
# A caller's own request id is kept (for tracing across services) only if it is plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers = headers or {}


def error_response(request: web.Request, status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": message, "code": code, "request_id": request.get(REQUEST_ID), **extra}
    return web.json_response(body, status=status)


def temporal_unreachable(err: BaseException) -> bool:
    """Temporal could not be reached: an RPC failed, or the lazy client's connect failed (which the
    SDK raises as a bare ``RuntimeError``, not an ``RPCError``)."""
    return isinstance(err, RPCError) or (isinstance(err, RuntimeError) and str(err).startswith("Failed client connect"))


def unavailable(request: web.Request, err: BaseException) -> web.Response:
    log.warning("dependency unavailable", error=type(err).__name__, path=request.path)
    what = "Temporal is" if temporal_unreachable(err) else "a backing service is"
    response = error_response(request, 503, "UNAVAILABLE", f"{what} unavailable; retry shortly")
    response.headers["Retry-After"] = "5"
    return response


def describe_validation_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    offered = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = offered if _REQUEST_ID.fullmatch(offered) else secrets.token_hex(8)
    structlog.contextvars.bind_contextvars(request_id=request[REQUEST_ID])
    started = time.monotonic()
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
    except ApiError as err:
        response = error_response(request, err.status, err.code, err.message, **err.extra)
        response.headers.update(err.headers)
    except ValidationError as err:
        response = error_response(request, 400, "VALIDATION_FAILED", describe_validation_error(err))
    except web.HTTPException as err:
        if err.status < 400:
            raise
        response = error_response(request, err.status, _HTTP_CODES.get(err.status, "HTTP_ERROR"), err.reason)
    except (psycopg.OperationalError, psycopg.errors.ConnectionTimeout, RPCError) as err:
        response = unavailable(request, err)
    except Exception as err:  # noqa: BLE001 - last line of defence: a clean 500, logged with the request id
        if temporal_unreachable(err):
            response = unavailable(request, err)
        else:
            log.exception("unhandled error", path=request.path, method=request.method)
            response = error_response(request, 500, "INTERNAL", "internal error")
    else:
        if (
            response.status >= 400
            and isinstance(response, web.Response)
            and response.content_type != "application/json"
        ):
            response = error_response(
                request, response.status, _HTTP_CODES.get(response.status, "HTTP_ERROR"), response.reason
            )
    finally:
        # One line per request (the path only: credentials travel in headers, never in paths).
        log.info(
            "http request",
            method=request.method,
            path=request.path,
            status=response.status if response is not None else 500,
            duration_ms=round((time.monotonic() - started) * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    return response


async def read_json(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", "request body too large") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "MALFORMED_JSON", "request body is not valid JSON") from None
