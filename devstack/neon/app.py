"""Routes of the Neon API v2 subset, and the server's lifecycle.

The rules that make it as strict as Neon live in their own modules (see ``strict``); the handlers
here call them at one place each: ``_refuse_if_busy`` (423, and Neon's background operations),
``plans`` in the two create handlers, ``pagination`` in the list handlers, ``_reply`` (schema
drift), and the rate limit as a middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from devstack.neon import drift, ids, pagination, plans, render
from devstack.neon.cluster import Cluster
from devstack.neon.control import CONTROL_DATABASE, Control, Row
from devstack.neon.devtools import (
    API_PREFIX,
    DEVTOOLS,
    LOCKED_MESSAGE,
    MIDDLEWARES,
    ApiError,
    DevTools,
    add_admin_routes,
    field,
    json_body,
)
from devstack.neon.operations import (
    BACKGROUND_ACTIONS,
    PLANNER,
    OperationPlanner,
    Timing,
    add_operation_routes,
    background_operation,
    new_operations,
)
from devstack.neon.ratelimit import RATE_LIMITER, RateLimiter, rate_limit_middleware
from devstack.neon.strict import STRICTNESS, Strictness, StrictnessHolder, add_config_routes

log = logging.getLogger("devstack.neon_server")

DEFAULT_REGION = "aws-us-east-2"
DEFAULT_BRANCH = "main"
DEFAULT_ROLE = "neondb_owner"
DEFAULT_DATABASE = "neondb"
ENDPOINT_TYPES = ("read_write", "read_only")


@dataclass
class NeonServerConfig:
    pg_admin_url: str  # superuser URL to the `postgres` database
    api_key: str
    host: str = "127.0.0.1"
    port: int = 4444
    pg_host: str = "127.0.0.1"  # host and port written into connection URIs
    pg_port: int | None = None  # None: the port of pg_admin_url
    seed_project_id: str | None = None
    seed_project_name: str = "tenantflow-platform"
    scheduling_seconds: float = 0.2
    running_seconds: float = 0.5
    strict: Strictness = dc_field(default_factory=Strictness)


# Serializes project creation, so that two creates cannot both pass the plan's project cap.
_ACCOUNT_LOCK = "<account>"


@dataclass
class _State:
    config: NeonServerConfig
    cluster: Cluster
    pg_port: int
    strictness: StrictnessHolder
    planner: OperationPlanner
    control: Control | None = None
    pg_version: int = 0
    # DDL and the "no running operations" check must not interleave within a project.
    locks: dict[str, asyncio.Lock] = dc_field(default_factory=dict)

    def lock(self, project_id: str) -> asyncio.Lock:
        return self.locks.setdefault(project_id, asyncio.Lock())

    @property
    def rules(self) -> Strictness:
        return self.strictness.now


STATE = web.AppKey("neon_state", _State)


def _now() -> datetime:
    return datetime.now(UTC)


def _operations(st: _State, project_id: str, branch: Row, actions: list[str]) -> list[Row]:
    timing = Timing(st.config.scheduling_seconds, st.config.running_seconds)
    return new_operations(st.planner, st.rules.operations, timing, project_id, branch, actions, _now())


def _reply(st: _State, body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(drift.apply(body) if st.rules.schema_drift else body, status=status)


# -- lookups and request parsing -------------------------------------------------------------


async def _project_or_404(st: _State, project_id: str) -> Row:
    project = await st.control.project(project_id) if ids.PROJECT_ID_RE.fullmatch(project_id) else None
    if project is None:
        raise ApiError(404, f"project {project_id} not found")
    return project


async def _branch_or_404(st: _State, project_id: str, branch_id: str) -> Row:
    branch = await st.control.branch(project_id, branch_id) if ids.BRANCH_ID_RE.fullmatch(branch_id) else None
    if branch is None:
        raise ApiError(404, f"branch {branch_id} not found")
    return branch


async def _refuse_if_busy(st: _State, project_id: str) -> None:
    """423 while any operation of the project is unfinished, Neon's own ones included."""
    background = st.rules.background
    if st.planner.chance(background.share):
        await _start_background_operation(st, project_id, background.seconds)
    if await st.control.has_unfinished_operations(project_id, _now()):
        raise ApiError(423, LOCKED_MESSAGE)


async def _start_background_operation(st: _State, project_id: str, seconds: float, action: str | None = None) -> Row:
    branch = await st.control.default_branch(project_id)
    op = background_operation(st.planner, project_id, branch, seconds, _now(), action)
    return (await st.control.save(ops=[op]))["operations"][0]


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise ApiError(400, f"{name}: expected true or false")
    return raw in ("true", "1")


def _name(obj: dict[str, Any], key: str, where: str, default: str | None, max_len: int = 256) -> str | None:
    value = field(obj, key, str, where, default)
    if value is not None and not 0 < len(value) <= max_len:
        raise ApiError(400, f"{where}{key}: expected 1 to {max_len} characters")
    return value


# -- projects --------------------------------------------------------------------------------


async def list_projects(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cursor, limit = pagination.seq_page_params(request, default_limit=10, max_limit=400)
    rows = await st.control.projects(cursor or 0, limit)
    return _reply(
        st,
        {
            "projects": [render.project(p, st.config.pg_host) for p in rows],
            "pagination": pagination.seq_pagination(rows, cursor),
        },
    )


async def create_project(request: web.Request) -> web.Response:
    st = request.app[STATE]
    body = await json_body(request)
    spec = field(body, "project", dict, "")
    if spec is None:
        raise ApiError(400, "project: required")
    branch = field(spec, "branch", dict, "project.", {})
    role = _name(branch, "role_name", "project.branch.", DEFAULT_ROLE)
    if not ids.ROLE_NAME_RE.fullmatch(role):
        raise ApiError(400, "project.branch.role_name: expected lowercase letters, digits and _ (up to 20)")
    project_id = ids.project_id()
    async with st.lock(_ACCOUNT_LOCK):
        plans.check_new_project(st.rules.plan, await st.control.count_projects())
        created = await _provision_project(
            st,
            project_id,
            name=_name(spec, "name", "project.", project_id, max_len=64),
            region=_name(spec, "region_id", "project.", DEFAULT_REGION, max_len=64),
            branch_name=_name(branch, "name", "project.branch.", DEFAULT_BRANCH),
            role=role,
            database=_name(branch, "database_name", "project.branch.", DEFAULT_DATABASE, max_len=63),
        )
    return _reply(st, created, status=201)


async def _provision_project(
    st: _State, project_id: str, *, name: str, region: str, branch_name: str, role: str, database: str
) -> dict[str, Any]:
    pg_role, password = ids.physical_role(role, project_id), ids.role_password()
    branch_id = ids.branch_id()
    physical_db = ids.physical_database(project_id, branch_id)
    async with st.lock(project_id):
        await st.cluster.create_role(pg_role, password)
        try:
            await st.cluster.create_database(physical_db, pg_role)
            now = _now()
            project = {
                "id": project_id,
                "name": name,
                "region_id": region,
                "pg_version": st.pg_version,
                "database_name": database,
                "role_name": role,
                "pg_role": pg_role,
                "pg_password": password,
                "created_at": now,
                "updated_at": now,
            }
            branch = _branch_row(project_id, branch_id, branch_name, physical_db, None, None, "read_write")
            ops = _operations(st, project_id, branch, ["create_timeline", "start_compute"])
            branch["ready_at"] = ops[-1]["finished_at"]
            stored = await st.control.save(project=project, branch=branch, ops=ops)
        except BaseException:
            await st.cluster.drop_role(pg_role)  # and the database it owns
            raise
    return _branch_created(st, stored["project"], stored["branch"], stored["operations"]) | {
        "project": render.project(stored["project"], st.config.pg_host),
    }


def _branch_row(
    project_id: str,
    branch_id: str,
    name: str,
    physical_db: str,
    parent: Row | None,
    parent_lsn: str | None,
    endpoint_type: str | None,
) -> Row:
    now = _now()
    return {
        "id": branch_id,
        "project_id": project_id,
        "name": name,
        "parent_id": parent["id"] if parent else None,
        "parent_lsn": parent_lsn,
        "is_default": parent is None,
        "physical_db": physical_db,
        "endpoint_id": ids.endpoint_id() if endpoint_type else None,
        "endpoint_type": endpoint_type,
        "created_at": now,
        "ready_at": now,
    }


def _branch_created(st: _State, project: Row, branch: Row, ops: list[Row]) -> dict[str, Any]:
    now, host = _now(), st.config.pg_host
    body = {
        "branch": render.branch(branch, now),
        "endpoints": render.endpoints(branch, project, host, now),
        "operations": [render.operation(op, now) for op in ops],
        "roles": render.roles(branch, project, with_password=True),
        "databases": render.databases(branch, project),
    }
    if branch["endpoint_id"]:
        body["connection_uris"] = render.connection_uris(branch, project, host, st.pg_port)
    return body


async def get_project(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    return _reply(st, {"project": render.project(project, st.config.pg_host)})


async def delete_project(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project_id = request.match_info["project_id"]
    async with st.lock(project_id):
        project = await _project_or_404(st, project_id)
        await _refuse_if_busy(st, project_id)
        branches = await st.control.branches(project_id, 0, None)
        await st.cluster.drop_databases([b["physical_db"] for b in branches])
        await st.cluster.drop_role(project["pg_role"])
        await st.control.delete_project(project_id)
    # The project's operations go with it, so these are reported but cannot be fetched later.
    ops = [op for b in branches for op in _operations(st, project_id, b, _deletion_actions(b))]
    now = _now()
    return _reply(
        st,
        {
            "project": render.project(project, st.config.pg_host),
            "operations": [render.operation(op, now) for op in ops],
        },
    )


def _deletion_actions(branch: Row) -> list[str]:
    return (["suspend_compute"] if branch["endpoint_id"] else []) + ["delete_timeline"]


# -- branches --------------------------------------------------------------------------------


async def list_branches(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    query = pagination.branch_query(request, st.rules.pagination.branch_page_size)
    rows, page = pagination.branch_page(await st.control.branches(project["id"], 0, None), query)
    now = _now()
    return _reply(
        st,
        {
            "branches": [render.branch(b, now) for b in rows],
            "annotations": {},
            "pagination": page,
        },
    )


async def get_branch(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    branch = await _branch_or_404(st, project["id"], request.match_info["branch_id"])
    return _reply(st, {"branch": render.branch(branch, _now()), "annotation": {}})


def _parse_branch_request(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(name, parent_id, endpoint type) from a create-branch body."""
    spec = field(body, "branch", dict, "", {})
    for unsupported in ("parent_lsn", "parent_timestamp"):
        if spec.get(unsupported) is not None:
            raise ApiError(422, f"branch.{unsupported} is not supported by the local Neon server")
    endpoints = field(body, "endpoints", list, "", [])
    if len(endpoints) > 1:
        raise ApiError(422, "the local Neon server supports at most one endpoint per branch")
    endpoint_type = None
    for endpoint in endpoints:
        if not isinstance(endpoint, dict):
            raise ApiError(400, "endpoints[]: expected objects")
        endpoint_type = field(endpoint, "type", str, "endpoints[].")
        if endpoint_type not in ENDPOINT_TYPES:
            raise ApiError(400, f"endpoints[].type: expected one of {list(ENDPOINT_TYPES)}")
    return _name(spec, "name", "branch.", None), _name(spec, "parent_id", "branch.", None), endpoint_type


async def create_branch(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project_id = request.match_info["project_id"]
    name, parent_id, endpoint_type = _parse_branch_request(await json_body(request))
    async with st.lock(project_id):
        project = await _project_or_404(st, project_id)
        parent = (
            await _branch_or_404(st, project_id, parent_id)
            if parent_id
            else await st.control.default_branch(project_id)
        )
        branch_id = ids.branch_id()
        name = name or branch_id
        if await st.control.branch_named(project_id, name):
            raise ApiError(409, f"branch with name {name!r} already exists")
        billed = plans.check_new_branch(st.rules.plan, await st.control.count_branches(project_id))
        await _refuse_if_busy(st, project_id)
        physical_db = ids.physical_database(project_id, branch_id)
        lsn = await st.cluster.create_database(physical_db, project["pg_role"], template=parent["physical_db"])
        try:
            branch = _branch_row(project_id, branch_id, name, physical_db, parent, lsn, endpoint_type)
            ops = _operations(
                st, project_id, branch, ["create_timeline"] + (["start_compute"] if endpoint_type else [])
            )
            branch["ready_at"] = ops[-1]["finished_at"]
            stored = await st.control.save(branch=branch, ops=ops)
        except BaseException:
            await st.cluster.drop_databases([physical_db])
            raise
    if billed:
        log.info(
            "branch %s of project %s is beyond the %s plan's included branches: billed as an extra",
            branch_id,
            project_id,
            st.rules.plan,
        )
    return _reply(st, _branch_created(st, project, stored["branch"], stored["operations"]), status=201)


async def delete_branch(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project_id = request.match_info["project_id"]
    async with st.lock(project_id):
        await _project_or_404(st, project_id)
        branch = await _branch_or_404(st, project_id, request.match_info["branch_id"])
        if branch["is_default"]:
            raise ApiError(422, "cannot delete the project's default branch")
        if await st.control.has_children(project_id, branch["id"]):
            raise ApiError(422, "cannot delete a branch that has child branches; delete them first")
        await _refuse_if_busy(st, project_id)
        await st.cluster.drop_databases([branch["physical_db"]])
        ops = await st.control.delete_branch(
            branch["id"], _operations(st, project_id, branch, _deletion_actions(branch))
        )
    now = _now()
    return _reply(
        st,
        {
            "branch": render.branch(branch, now),
            "operations": [render.operation(op, now) for op in ops],
        },
    )


# -- operations and connection URIs ----------------------------------------------------------


async def list_operations(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    cursor, limit = pagination.seq_page_params(request, default_limit=10, max_limit=1000)
    rows = await st.control.operations(project["id"], cursor, limit)
    now = _now()
    return _reply(
        st,
        {
            "operations": [render.operation(op, now) for op in rows],
            "pagination": pagination.seq_pagination(rows, cursor),
        },
    )


async def get_operation(request: web.Request) -> web.Response:
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    operation_id = request.match_info["operation_id"]
    op = await st.control.operation(project["id"], operation_id) if ids.is_uuid(operation_id) else None
    if op is None:
        raise ApiError(404, f"operation {operation_id} not found")
    return _reply(st, {"operation": render.operation(op, _now())})


async def get_connection_uri(request: web.Request) -> web.Response:
    """Like Neon's, plus: ``branch_id`` defaults to the default branch, names to the project's."""
    st = request.app[STATE]
    project = await _project_or_404(st, request.match_info["project_id"])
    branch_id = request.query.get("branch_id")
    branch = (
        await _branch_or_404(st, project["id"], branch_id)
        if branch_id
        else await st.control.default_branch(project["id"])
    )
    database = request.query.get("database_name")
    if database and database != project["database_name"]:
        raise ApiError(404, f"database {database} not found")
    role = request.query.get("role_name")
    # The physical role carries the project id; Neon's usual name is accepted as an alias.
    if role and role not in (project["role_name"], project["pg_role"]):
        raise ApiError(404, f"role {role} not found")
    _bool_param(request, "pooled")  # validated; locally there is no separate pooler
    return _reply(st, {"uri": render.connection_uri(branch, project, st.config.pg_host, st.pg_port)})


# -- application -----------------------------------------------------------------------------


async def _ensure_seed_project(st: _State) -> None:
    config = st.config
    if not config.seed_project_id or await st.control.project(config.seed_project_id):
        return
    await _provision_project(
        st,
        config.seed_project_id,
        name=config.seed_project_name,
        region=DEFAULT_REGION,
        branch_name=DEFAULT_BRANCH,
        role=DEFAULT_ROLE,
        database=DEFAULT_DATABASE,
    )
    log.info("created seed project %s", config.seed_project_id)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    await st.cluster.ensure_database(CONTROL_DATABASE)
    pool = Control.pool(make_conninfo(st.config.pg_admin_url, dbname=CONTROL_DATABASE))
    await pool.open(wait=True, timeout=30)
    try:
        st.control = Control(pool)
        await st.control.create_schema()
        st.pg_version = await st.cluster.pg_version()
        await _ensure_seed_project(st)
        yield
    finally:
        await pool.close()


def _validate(config: NeonServerConfig) -> None:
    if not config.api_key:
        raise ValueError("api_key must not be empty")
    if config.seed_project_id and not ids.PROJECT_ID_RE.fullmatch(config.seed_project_id):
        raise ValueError("seed_project_id: lowercase letters, digits and hyphens, up to 40 characters")
    if config.scheduling_seconds < 0 or config.running_seconds < 0:
        raise ValueError("operation phase durations must be >= 0")


async def start_background_operation(request: web.Request) -> web.Response:
    """``POST /__devstack/background-operations {"project_id", "action"?, "seconds"?}``: Neon takes
    the project's lock now with an operation of its own (apply_config or suspend_compute)."""
    st = request.app[STATE]
    body = await json_body(request)
    project = await _project_or_404(st, field(body, "project_id", str, "", ""))
    action = field(body, "action", str, "")
    seconds = field(body, "seconds", (int, float), "", st.rules.background.seconds)
    if action not in (None, *BACKGROUND_ACTIONS) or seconds <= 0:
        raise ApiError(400, f"action: one of {list(BACKGROUND_ACTIONS)}; seconds: > 0")
    op = await _start_background_operation(st, project["id"], seconds, action)
    return web.json_response({"operation": render.operation(op, _now())}, status=201)


def create_app(config: NeonServerConfig) -> web.Application:
    _validate(config)
    app = web.Application(middlewares=[*MIDDLEWARES, rate_limit_middleware])
    pg_port = config.pg_port or int(conninfo_to_dict(config.pg_admin_url).get("port") or 5432)
    strictness, planner, limiter = StrictnessHolder(config.strict), OperationPlanner(), RateLimiter()
    strictness.listeners.append(limiter.reset)
    app[STATE] = _State(
        config=config, cluster=Cluster(config.pg_admin_url), pg_port=pg_port, strictness=strictness, planner=planner
    )
    app[DEVTOOLS] = DevTools(api_key=config.api_key)
    app[STRICTNESS], app[PLANNER], app[RATE_LIMITER] = strictness, planner, limiter
    app.cleanup_ctx.append(_lifecycle)

    api = API_PREFIX
    app.router.add_get(f"{api}/projects", list_projects)
    app.router.add_post(f"{api}/projects", create_project)
    app.router.add_get(f"{api}/projects/{{project_id}}", get_project)
    app.router.add_delete(f"{api}/projects/{{project_id}}", delete_project)
    app.router.add_get(f"{api}/projects/{{project_id}}/branches", list_branches)
    app.router.add_post(f"{api}/projects/{{project_id}}/branches", create_branch)
    app.router.add_get(f"{api}/projects/{{project_id}}/branches/{{branch_id}}", get_branch)
    app.router.add_delete(f"{api}/projects/{{project_id}}/branches/{{branch_id}}", delete_branch)
    app.router.add_get(f"{api}/projects/{{project_id}}/operations", list_operations)
    app.router.add_get(f"{api}/projects/{{project_id}}/operations/{{operation_id}}", get_operation)
    app.router.add_get(f"{api}/projects/{{project_id}}/connection_uri", get_connection_uri)
    add_admin_routes(app)
    add_config_routes(app)
    add_operation_routes(app)
    app.router.add_post("/__devstack/background-operations", start_background_operation)
    return app


async def serve(config: NeonServerConfig) -> web.AppRunner:
    """Start the server on ``config.host:config.port``; the caller awaits ``runner.cleanup()``."""
    runner = web.AppRunner(create_app(config))
    try:
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
