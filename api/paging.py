"""What every list route shares: ``?limit=`` (a page's size), ``?cursor=`` (opaque: the previous
answer's ``next_cursor``, with the same filters) and ``?name=`` (a name containing this,
case-insensitive). A cursor carries the sort key of the last row of its page."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from api.errors import ApiError

MAX_PAGE = 200
MAX_NAME_FILTER = 100
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class PageQuery:
    limit: int
    after: str | None


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(raw: str, valid: re.Pattern[str]) -> str:
    try:
        value = base64.urlsafe_b64decode(raw.encode() + b"==").decode()
    except (ValueError, UnicodeDecodeError):
        value = ""
    if not valid.fullmatch(value):
        raise ApiError(400, "INVALID_CURSOR", "cursor is not one this API returned")
    return value


def page_query(
    request: web.Request, cursor: re.Pattern[str], *, default: int = 50, maximum: int = MAX_PAGE
) -> PageQuery:
    q = request.query
    raw_limit = q.get("limit", str(default))
    if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= maximum):
        raise ApiError(400, "VALIDATION_FAILED", f"limit must be an integer from 1 to {maximum}")
    after = decode_cursor(q["cursor"], cursor) if q.get("cursor") else None
    return PageQuery(limit=int(raw_limit), after=after)


def name_filter(request: web.Request) -> str:
    name = request.query.get("name", "")
    if len(name) > MAX_NAME_FILTER or _CONTROL.search(name):
        raise ApiError(
            400, "VALIDATION_FAILED", f"name must be at most {MAX_NAME_FILTER} characters, without control characters"
        )
    return name


def page_of(
    rows: list[dict[str, Any]], page: PageQuery, sort_key: Callable[[dict[str, Any]], str]
) -> tuple[list[dict[str, Any]], str | None]:
    """The page (of rows fetched with ``limit + 1``) and the cursor of the next one (None: last page)."""
    shown = rows[: page.limit]
    more = len(rows) > page.limit and shown
    return shown, encode_cursor(sort_key(shown[-1])) if more else None
