"""The local Neon server, driven by the real ``neon-api`` client against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
import pytest
import pytest_asyncio
from neon_api import NeonAPI
from neon_api.exceptions import NeonAPIError

from devstack.neon.strict import Strictness
from devstack.neon_server import NeonServerConfig, serve
from devstack.postgres import PostgresServer, start_postgres
from devstack.procs import free_port, wait_for_port

API_KEY = "test-neon-api-key"
SCHEDULING_SECONDS = 0.15
RUNNING_SECONDS = 0.25
BRANCHES_ROUTE = "/projects/{project_id}/branches"
LOCKED = "project already has running conflicting operations, scheduling of new ones is prohibited"


class Neon:
    """A running local Neon server and the real client pointed at it."""

    def __init__(self, config: NeonServerConfig):
        self.root = f"http://{config.host}:{config.port}"
        self.client = NeonAPI(API_KEY, base_url=f"{self.root}/api/v2/")

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, method), *args, **kwargs)

    async def error(self, status: int, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call, expect NeonAPIError with ``status``, return its JSON body."""
        with pytest.raises(NeonAPIError) as info:
            await self.call(method, *args, **kwargs)
        assert info.value.__context__.response.status_code == status, str(info.value)
        return json.loads(str(info.value))

    async def raw(self, method: str, path: str, *, key: str | None = API_KEY, **kwargs: Any) -> tuple[int, Any, Any]:
        headers = ({"Authorization": f"Bearer {key}"} if key else {}) | kwargs.pop("headers", {})
        async with aiohttp.ClientSession() as session:
            async with session.request(method, self.root + path, headers=headers, **kwargs) as resp:
                body = await resp.json(content_type=None)
                return resp.status, resp.headers, body

    async def wait_idle(self, project_id: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ops = (await self.call("operations", project_id, limit=1000)).operations
            if all(op.status.value == "finished" for op in ops):
                return
            assert time.monotonic() < deadline, "operations did not finish"
            await asyncio.sleep(0.05)

    async def uri(self, project_id: str, branch_id: str | None = None) -> str:
        params = {"database_name": "neondb", **({"branch_id": branch_id} if branch_id else {})}
        status, _, body = await self.raw("GET", f"/api/v2/projects/{project_id}/connection_uri", params=params)
        assert status == 200, body
        return body["uri"]


def _config(pg: PostgresServer, **overrides: Any) -> NeonServerConfig:
    """These tests check shapes and exact sequences: no throttling or random failures (the strict
    rules have their own tests in test_neon_strict.py)."""
    settings = dict(
        scheduling_seconds=SCHEDULING_SECONDS,
        running_seconds=RUNNING_SECONDS,
        port=free_port(),
        strict=Strictness.lenient(),
    )
    return NeonServerConfig(pg_admin_url=pg.url("postgres"), api_key=API_KEY, **(settings | overrides))


async def _sql(url: str, query: str, params: Any = None) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def _databases(pg: PostgresServer) -> set[str]:
    return {name for (name,) in await _sql(pg.url(), "SELECT datname FROM pg_database")}


async def _role_exists(pg: PostgresServer, role: str) -> bool:
    return bool(await _sql(pg.url(), "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))


def _dbname(uri: str) -> str:
    return urlsplit(uri).path.lstrip("/")


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENANTFLOW_PG_FSYNC_OFF", "1")  # throwaway data; CREATE DATABASE gets much faster
        server = start_postgres(tmp_path_factory.mktemp("pg"), free_port())
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module")
async def neon(pg: PostgresServer):
    config = _config(pg)
    runner = await serve(config)
    yield Neon(config)
    await runner.cleanup()


@pytest_asyncio.fixture
async def project(neon: Neon):
    created = await neon.call("project_create", project={"name": "fixture"})
    await neon.wait_idle(created.project.id)
    return created.project


@pytest_asyncio.fixture
async def no_faults(neon: Neon):
    yield
    await neon.raw("DELETE", "/__devstack/faults", key=None)


async def test_requests_without_the_api_key_are_refused(neon: Neon):
    for key in (None, "wrong-key"):
        status, _, body = await neon.raw("GET", "/api/v2/projects", key=key)
        assert status == 401
        assert body["code"] == "" and body["message"]
    status, _, _ = await neon.raw("GET", "/api/v2/projects", key=None, headers={"Authorization": f"Basic {API_KEY}"})
    assert status == 401
    wrong = NeonAPI("wrong-key", base_url=neon.client.base_url)
    with pytest.raises(NeonAPIError) as info:
        await asyncio.to_thread(wrong.projects)
    assert info.value.__context__.response.status_code == 401


async def test_create_project_operations_progress_and_uri_connects(neon: Neon, pg: PostgresServer):
    created = await neon.call("project_create", project={"name": "acme", "region_id": "aws-us-east-1"})
    project = created.project
    assert (project.name, project.region_id) == ("acme", "aws-us-east-1")
    ops = (await neon.call("operations", project.id)).operations
    assert sorted(op.action.value for op in ops) == ["create_timeline", "start_compute"]

    seen: list[str] = []
    while not seen or seen[-1] != "finished":
        op = (await neon.call("operation", project.id, ops[0].id)).operation
        if not seen or seen[-1] != op.status.value:
            seen.append(op.status.value)
        await asyncio.sleep(0.02)
    assert seen == ["scheduling", "running", "finished"]
    assert op.total_duration_ms == int(RUNNING_SECONDS * 1000)

    assert (await neon.call("project", project.id)).project.id == project.id
    branches = (await neon.call("branches", project.id)).branches
    assert [(b.name, b.default, b.current_state) for b in branches] == [("main", True, "ready")]

    uri = (await neon.call("connection_uri", project.id, database_name="neondb", role_name="neondb_owner")).uri
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ('hello')")
        await conn.commit()
        role, superuser = await (
            await conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        ).fetchone()
    assert not superuser
    assert await _sql(uri, "SELECT body FROM notes") == [("hello",)]
    pooled = (await neon.call("connection_uri", project.id, database_name="neondb", role_name=role, pooled=True)).uri
    assert await _sql(pooled, "SELECT count(*) FROM notes") == [(1,)]


async def test_create_project_response_has_neon_shape(neon: Neon):
    status, _, body = await neon.raw("POST", "/api/v2/projects", json={"project": {"branch": {"name": "trunk"}}})
    assert status == 201
    assert body["project"]["name"] == body["project"]["id"]
    assert body["branch"]["name"] == "trunk" and body["branch"]["id"].startswith("br-")
    assert body["endpoints"][0]["id"].startswith("ep-") and body["endpoints"][0]["type"] == "read_write"
    assert body["roles"][0]["password"] and body["databases"][0]["name"] == "neondb"
    assert {op["status"] for op in body["operations"]} == {"scheduling"}
    uri = body["connection_uris"][0]["connection_uri"]
    assert await _sql(uri, "SELECT current_user") == [(body["roles"][0]["name"],)]


async def test_branch_is_a_copy_of_its_parent(neon: Neon, project):
    main_uri = await neon.uri(project.id)
    await _sql(main_uri, "CREATE TABLE items (name text); INSERT INTO items VALUES ('from-main')")

    created = await neon.call("branch_create", project.id, branch={"name": "dev"}, endpoints=[{"type": "read_write"}])
    main = next(b for b in (await neon.call("branches", project.id)).branches if b.default)
    assert created.branch.parent_id == main.id and created.branch.current_state == "init"
    assert sorted(op.action.value for op in created.operations) == ["create_timeline", "start_compute"]
    await neon.wait_idle(project.id)
    assert (await neon.call("branch", project.id, created.branch.id)).branch.current_state == "ready"
    assert sorted(b.name for b in (await neon.call("branches", project.id)).branches) == ["dev", "main"]

    dev_uri = await neon.uri(project.id, created.branch.id)
    assert _dbname(dev_uri) != _dbname(main_uri)
    assert await _sql(dev_uri, "SELECT name FROM items") == [("from-main",)]
    await _sql(dev_uri, "INSERT INTO items VALUES ('from-dev')")
    assert await _sql(main_uri, "SELECT name FROM items") == [("from-main",)]

    body = await neon.error(409, "branch_create", project.id, branch={"name": "dev"})
    assert "already exists" in body["message"]


async def test_branching_from_a_parent_with_open_sessions(neon: Neon, project):
    main_uri = await neon.uri(project.id)
    await _sql(main_uri, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
    async with await psycopg.AsyncConnection.connect(main_uri, autocommit=True) as held:
        created = await neon.call("branch_create", project.id, branch={"name": "busy-parent"})
        with pytest.raises(psycopg.OperationalError):
            await held.execute("SELECT 1")
    assert await _sql(await neon.uri(project.id, created.branch.id), "SELECT x FROM t") == [(1,)]


async def test_mutations_are_locked_while_operations_run(neon: Neon, project):
    first = await neon.call("branch_create", project.id, branch={"name": "one"})
    body = await neon.error(423, "branch_create", project.id, branch={"name": "two"})
    assert body == {"code": "", "message": LOCKED, "request_id": body["request_id"]}
    await neon.error(423, "branch_delete", project.id, first.branch.id)
    await neon.error(423, "project_delete", project.id)

    await neon.wait_idle(project.id)
    second = await neon.call("branch_create", project.id, branch={"name": "two"})
    assert second.branch.name == "two"


async def test_delete_branch_drops_its_database(neon: Neon, pg: PostgresServer, project):
    parent = await neon.call("branch_create", project.id, branch={"name": "parent"}, endpoints=[{"type": "read_write"}])
    await neon.wait_idle(project.id)
    child = await neon.call("branch_create", project.id, branch={"name": "child", "parent_id": parent.branch.id})
    await neon.wait_idle(project.id)
    assert child.branch.parent_id == parent.branch.id

    body = await neon.error(422, "branch_delete", project.id, parent.branch.id)
    assert "child" in body["message"]
    main = next(b for b in (await neon.call("branches", project.id)).branches if b.default)
    body = await neon.error(422, "branch_delete", project.id, main.id)
    assert "default" in body["message"]

    for branch in (child.branch, parent.branch):
        physical = _dbname(await neon.uri(project.id, branch.id))
        assert physical in await _databases(pg)
        deleted = await neon.call("branch_delete", project.id, branch.id)
        assert deleted.branch.id == branch.id
        assert physical not in await _databases(pg)
        await neon.error(404, "branch", project.id, branch.id)
        await neon.error(404, "branch_delete", project.id, branch.id)
        await neon.wait_idle(project.id)
    actions = [op.action.value for op in deleted.operations]
    assert actions == ["suspend_compute", "delete_timeline"]
    op = (await neon.call("operation", project.id, deleted.operations[0].id)).operation
    assert op.status.value == "finished" and op.branch_id == parent.branch.id


async def test_delete_project_drops_databases_and_role(neon: Neon, pg: PostgresServer, project):
    branch = await neon.call("branch_create", project.id, branch={"name": "extra"})
    await neon.wait_idle(project.id)
    main_uri, extra_uri = await neon.uri(project.id), await neon.uri(project.id, branch.branch.id)
    role = urlsplit(main_uri).username
    assert {_dbname(main_uri), _dbname(extra_uri)} <= await _databases(pg)

    deleted = await neon.call("project_delete", project.id)
    assert deleted.project.id == project.id
    assert not {_dbname(main_uri), _dbname(extra_uri)} & await _databases(pg)
    assert not await _role_exists(pg, role)
    await neon.error(404, "project", project.id)
    await neon.error(404, "project_delete", project.id)
    await neon.error(404, "branches", project.id)
    assert project.id not in [p.id for p in (await neon.call("projects", limit=400)).projects]


async def test_tenant_roles_reach_only_their_own_databases(neon: Neon, project):
    other = await neon.call("project_create", project={"name": "other"})
    mine, theirs = urlsplit(await neon.uri(project.id)), urlsplit(await neon.uri(other.project.id))
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        await _sql(mine._replace(path=theirs.path).geturl(), "SELECT 1")


async def test_pagination(neon: Neon):
    ids = [(await neon.call("project_create", project={"name": f"page-{i}"})).project.id for i in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        status, _, body = await neon.raw("GET", "/api/v2/projects", params=params)
        assert status == 200 and len(body["projects"]) <= 2
        if not body["projects"]:
            break
        seen += [p["id"] for p in body["projects"]]
        cursor = body["pagination"]["cursor"]
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen)
    assert len((await neon.call("projects", limit=2)).projects) == 2

    await neon.wait_idle(ids[0])
    await neon.call("branch_create", ids[0], branch={"name": "b"})
    newest = (await neon.call("operations", ids[0], limit=1)).operations[0]
    assert newest.action.value == "create_timeline"
    status, _, page = await neon.raw("GET", f"/api/v2/projects/{ids[0]}/operations", params={"limit": "1"})
    status, _, rest = await neon.raw(
        "GET", f"/api/v2/projects/{ids[0]}/operations", params={"cursor": page["pagination"]["cursor"]}
    )
    listed = [op["id"] for op in page["operations"] + rest["operations"]]
    assert len(listed) == len(set(listed)) == 3


async def test_fault_injection_and_stats(neon: Neon, project, no_faults):
    await neon.raw("POST", "/__devstack/reset-stats", key=None)
    fault = {"method": "POST", "route": BRANCHES_ROUTE, "status": 423, "count": 2}
    status, _, body = await neon.raw("POST", "/__devstack/faults", key=None, json=fault)
    assert status == 201 and body["fault"]["count"] == 2
    for _ in range(2):
        assert (await neon.error(423, "branch_create", project.id, branch={"name": "faulted"}))["message"] == LOCKED
    assert [b.name for b in (await neon.call("branches", project.id)).branches] == ["main"]  # no side effect
    assert (await neon.raw("GET", "/__devstack/faults", key=None))[2] == {"faults": []}
    await neon.call("branch_create", project.id, branch={"name": "faulted"})

    fault = {"method": "*", "route": "/projects/{project_id}", "status": 429, "count": 1, "retry_after": 2}
    await neon.raw("POST", "/__devstack/faults", key=None, json=fault)
    status, headers, body = await neon.raw("GET", f"/api/v2/projects/{project.id}")
    assert (status, headers["Retry-After"], body["code"]) == (429, "2", "")

    fault = {"method": "GET", "route": "/projects/{project_id}", "status": 503, "count": -1, "message": "down"}
    await neon.raw("POST", "/__devstack/faults", key=None, json=fault)
    for _ in range(3):
        assert (await neon.error(503, "project", project.id))["message"] == "down"
    listed = (await neon.raw("GET", "/__devstack/faults", key=None))[2]["faults"]
    assert [(f["status"], f["count"], f["hits"]) for f in listed] == [(503, -1, 3)]
    assert (await neon.raw("DELETE", "/__devstack/faults", key=None))[2] == {"cleared": 1}
    assert (await neon.call("project", project.id)).project.id == project.id

    stats = (await neon.raw("GET", "/__devstack/stats", key=None))[2]
    assert stats["requests"][f"POST {BRANCHES_ROUTE}"] == 3
    assert stats["by_route"][f"POST {BRANCHES_ROUTE}"] == {"423": 2, "201": 1}
    assert stats["by_route"]["GET /projects/{project_id}"] == {"429": 1, "503": 3, "200": 1}
    assert stats["statuses"]["503"] == 3

    # Faults matching the same request apply one at a time, in the order they were added.
    for status in (429, 503):
        fault = {"method": "GET", "route": BRANCHES_ROUTE, "status": status, "count": 1}
        await neon.raw("POST", "/__devstack/faults", key=None, json=fault)
    await neon.error(429, "branches", project.id)
    await neon.error(503, "branches", project.id)
    assert len((await neon.call("branches", project.id)).branches) == 2

    for bad in (
        {"method": "POST", "route": "/nope", "status": 423},
        {"method": "POST", "route": BRANCHES_ROUTE, "status": 200},
        {"method": "POST", "route": BRANCHES_ROUTE, "status": 423, "count": 0},
        {"method": "FETCH", "route": BRANCHES_ROUTE, "status": 423},
        {"route": BRANCHES_ROUTE, "status": "423"},
    ):
        status, _, body = await neon.raw("POST", "/__devstack/faults", key=None, json=bad)
        assert status == 400 and body["message"], bad


async def test_bad_input_gets_a_4xx_json_answer(neon: Neon, project):
    await neon.raw("POST", "/__devstack/reset-stats", key=None)
    p = f"/api/v2/projects/{project.id}"
    cases = [
        ("POST", "/api/v2/projects", {"data": "{not json"}, 400),
        ("POST", "/api/v2/projects", {"json": []}, 400),
        ("POST", "/api/v2/projects", {"json": {}}, 400),
        ("POST", "/api/v2/projects", {"json": {"project": "x"}}, 400),
        ("POST", "/api/v2/projects", {"json": {"project": {"name": 5}}}, 400),
        ("POST", "/api/v2/projects", {"json": {"project": {"name": "a\u0000b"}}}, 400),
        ("POST", "/api/v2/projects", {"json": {"project": {"name": ""}}}, 400),
        ("POST", "/api/v2/projects", {"json": {"project": {"branch": {"role_name": "Bad Role"}}}}, 400),
        ("POST", f"{p}/branches", {"json": {"branch": {"name": 1}}}, 400),
        ("POST", f"{p}/branches", {"json": {"branch": []}}, 400),
        ("POST", f"{p}/branches", {"json": {"endpoints": "x"}}, 400),
        ("POST", f"{p}/branches", {"json": {"endpoints": [1]}}, 400),
        ("POST", f"{p}/branches", {"json": {"endpoints": [{"type": "weird"}]}}, 400),
        ("POST", f"{p}/branches", {"json": {"branch": {"parent_id": "br-no-such-12345678"}}}, 404),
        ("POST", f"{p}/branches", {"json": {"branch": {"parent_lsn": "0/0"}}}, 422),
        ("POST", "/api/v2/projects/no-such-project/branches", {"json": {}}, 404),
        ("GET", "/api/v2/projects", {"params": {"limit": "abc"}}, 400),
        ("GET", "/api/v2/projects", {"params": {"limit": "0"}}, 400),
        ("GET", "/api/v2/projects", {"params": {"limit": "\u00b2"}}, 400),
        ("GET", "/api/v2/projects", {"params": {"cursor": "-1"}}, 400),
        ("GET", "/api/v2/projects/BAD%00ID", {}, 404),
        ("GET", f"{p}/branches/br-BAD%00", {}, 404),
        ("GET", f"{p}/operations/not-a-uuid", {}, 404),
        ("GET", f"{p}/operations/00000000-0000-0000-0000-000000000000", {}, 404),
        ("GET", f"{p}/connection_uri", {"params": {"pooled": "maybe"}}, 400),
        ("GET", f"{p}/connection_uri", {"params": {"branch_id": "nope"}}, 404),
        ("GET", f"{p}/connection_uri", {"params": {"database_name": "other"}}, 404),
        ("GET", f"{p}/connection_uri", {"params": {"role_name": "postgres"}}, 404),
        ("PUT", "/api/v2/projects", {}, 405),
        ("GET", "/api/v2/no-such-route", {}, 404),
    ]
    for method, path, kwargs, expected in cases:
        status, _, body = await neon.raw(method, path, **kwargs)
        assert (status, body["code"]) == (expected, ""), (method, path, kwargs, body)
        assert body["message"]
    stats = (await neon.raw("GET", "/__devstack/stats", key=None))[2]
    assert "500" not in stats["statuses"]
    assert [b.name for b in (await neon.call("branches", project.id)).branches] == ["main"]


async def test_restart_keeps_state_and_seed_is_idempotent(pg: PostgresServer):
    config = _config(pg, seed_project_id="tf-platform-test", seed_project_name="platform")
    runner = await serve(config)
    try:
        first = Neon(config)
        seed = (await first.call("project", "tf-platform-test")).project
        assert seed.name == "platform"
        await first.wait_idle(seed.id)
        tenant = await first.call("branch_create", seed.id, branch={"name": "tenant-a"})
        await _sql(await first.uri(seed.id, tenant.branch.id), "CREATE TABLE kept (x int)")
    finally:
        await runner.cleanup()

    config = _config(pg, seed_project_id="tf-platform-test", seed_project_name="platform")
    runner = await serve(config)
    try:
        second = Neon(config)
        again = (await second.call("project", seed.id)).project
        assert again.created_at == seed.created_at
        branches = (await second.call("branches", seed.id)).branches
        assert sorted(b.name for b in branches) == ["main", "tenant-a"]
        assert (await second.call("operation", seed.id, tenant.operations[0].id)).operation.id == tenant.operations[
            0
        ].id
        assert await _sql(await second.uri(seed.id, tenant.branch.id), "SELECT count(*) FROM kept") == [(0,)]
        listed = [p.id for p in (await second.call("projects", limit=400)).projects]
        assert listed.count(seed.id) == 1
    finally:
        await runner.cleanup()


def test_command_line_runs_until_sigterm(pg: PostgresServer, tmp_path: Path):
    key_file = tmp_path / "neon-api-key"
    key_file.write_text(API_KEY + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack.neon_server",
            "--port",
            str(port),
            "--pg-admin-url",
            pg.url("postgres"),
            "--api-key-file",
            str(key_file),
            "--seed-project-id",
            "cli-seed",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20, proc=proc)
        client = NeonAPI(API_KEY, base_url=f"http://127.0.0.1:{port}/api/v2/")
        assert client.project("cli-seed").project.id == "cli-seed"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
