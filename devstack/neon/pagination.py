"""List pagination, shaped as each Neon list endpoint pages.

Sources: Neon's OpenAPI v2 (ListProjects, ListProjectBranches, ListProjectOperations; as shipped in
https://github.com/neondatabase/neon-api-python/blob/main/v2.json),
https://neon.com/docs/reference/api/branches/list-project-branches.md and
https://neon.com/docs/reference/api/operations/list-project-operations.md.

- List projects: ``limit`` 1-400, default 10; the answer's ``pagination.cursor`` goes back as
  ``cursor`` for the next page (an empty page ends the list).
- List operations: ``limit`` 1-1000 (Neon names no default: 10 here), newest first, the same
  ``pagination.cursor``.
- List branches: ``limit`` 1-10000, ``sort_by`` name|created_at|updated_at (default updated_at),
  ``sort_order`` asc|desc (default desc), ``search`` (part of a name or id), and an opaque cursor:
  ``pagination.next`` (and ``previous``) go back as ``cursor``. Neon documents no default page
  size; ``pagination.branch_page_size`` applies one when no ``limit`` is given, so a client that
  never follows ``next`` misses branches. Like a keyset cursor, a full page always carries
  ``next``; the page after the last one is empty and has none.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from devstack.neon.control import Row
from devstack.neon.devtools import ApiError

BRANCH_SORT_COLUMNS = {"name": "name", "created_at": "created_at", "updated_at": "ready_at"}
SORT_ORDERS = ("asc", "desc")
BRANCH_MAX_LIMIT = 10000


def int_param(request: web.Request, name: str, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(400, f"{name}: expected an integer between {low} and {high}")
    return int(raw)


def seq_page_params(request: web.Request, default_limit: int, max_limit: int) -> tuple[int | None, int]:
    """(cursor, limit) for projects and operations: the cursor is the ``seq`` of the last item."""
    cursor = int_param(request, "cursor", 0, 2**62)
    limit = int_param(request, "limit", 1, max_limit)
    return cursor, limit if limit is not None else default_limit


def seq_pagination(rows: list[Row], cursor: int | None) -> dict[str, str]:
    return {"cursor": str(rows[-1]["seq"]) if rows else str(cursor or "")}


# -- branches --------------------------------------------------------------------------------


@dataclass
class BranchQuery:
    sort_by: str = "updated_at"
    sort_order: str = "desc"
    search: str = ""
    limit: int | None = None
    cursor: tuple[Any, int] | None = None  # (sort key, seq) of the row the page starts after/before
    backwards: bool = False  # a `previous` cursor


def _choice(request: web.Request, name: str, allowed: tuple[str, ...] | dict, default: str) -> str:
    value = request.query.get(name) or default
    if value not in allowed:
        raise ApiError(400, f"{name}: expected one of {sorted(allowed)}")
    return value


def branch_query(request: web.Request, default_page_size: int) -> BranchQuery:
    query = BranchQuery(
        sort_by=_choice(request, "sort_by", BRANCH_SORT_COLUMNS, "updated_at"),
        sort_order=_choice(request, "sort_order", SORT_ORDERS, "desc"),
        search=request.query.get("search", "").lower(),
        limit=int_param(request, "limit", 1, BRANCH_MAX_LIMIT) or default_page_size or None,
    )
    raw = request.query.get("cursor")
    if raw:
        cursor = _decode(raw)
        query.sort_by, query.sort_order = cursor["by"], cursor["order"]
        query.cursor, query.backwards = (cursor["key"], cursor["seq"]), cursor["back"]
    return query


def _sort_key(row: Row, sort_by: str) -> tuple[Any, int]:
    value = row[BRANCH_SORT_COLUMNS[sort_by]]
    return (value.timestamp() if isinstance(value, datetime) else value), row["seq"]


def _encode(query: BranchQuery, key: tuple[Any, int], back: bool) -> str:
    state = {"by": query.sort_by, "order": query.sort_order, "key": key[0], "seq": key[1], "back": back}
    return base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")


def _decode(raw: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        valid = (
            state["by"] in BRANCH_SORT_COLUMNS
            and state["order"] in SORT_ORDERS
            and isinstance(state["seq"], int)
            and isinstance(state["back"], bool)
            and isinstance(state["key"], str if state["by"] == "name" else (int, float))
        )
    except (ValueError, TypeError, KeyError, binascii.Error):
        valid = False
    if not valid:
        raise ApiError(400, "cursor: not a cursor this server returned")
    return state


def _comes_after(key: tuple[Any, int], other: tuple[Any, int], descending: bool) -> bool:
    return key < other if descending else key > other


def branch_page(rows: list[Row], query: BranchQuery) -> tuple[list[Row], dict[str, Any]]:
    """The page of ``rows`` (all of a project's branches) the query asks for, and its pagination."""
    found = [r for r in rows if query.search in r["name"].lower() or query.search in r["id"].lower()]
    ordered = sorted(found, key=lambda r: _sort_key(r, query.sort_by), reverse=query.sort_order == "desc")
    if query.cursor is not None:
        descending = query.sort_order == "desc"
        if query.backwards:
            ordered = [r for r in ordered if _comes_after(query.cursor, _sort_key(r, query.sort_by), descending)]
        else:
            ordered = [r for r in ordered if _comes_after(_sort_key(r, query.sort_by), query.cursor, descending)]
    if query.limit is None:
        page = ordered
    else:
        page = ordered[-query.limit :] if query.backwards else ordered[: query.limit]
    pagination: dict[str, Any] = {"sort_by": query.sort_by, "sort_order": query.sort_order}
    if page and query.limit is not None:
        if len(page) == query.limit or query.backwards:
            pagination["next"] = _encode(query, _sort_key(page[-1], query.sort_by), back=False)
        if query.cursor is not None:
            pagination["previous"] = _encode(query, _sort_key(page[0], query.sort_by), back=True)
    return page, pagination
