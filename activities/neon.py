"""Tenant databases on Neon: a branch per tenant in the platform project, or a project per tenant.

The ``neon-api`` client is synchronous, has no timeout and hides the HTTP status, so calls run in
a thread, carry a timeout, and are classified here from the underlying response.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, AsyncIterator, Callable

import requests
from neon_api import NeonAPI
from neon_api.exceptions import NeonAPIError
from temporalio import activity

from activities.errors import actor, call_in_thread, permanent, transient
from db.ledger import Ledger
from domain.models import NeonOperationsInput, TenantDatabase, TenantDatabaseInput, resource_name
from domain.settings import Settings

_DONE = {"finished", "skipped"}
_FAILED_FOR_GOOD = {"error", "cancelled"}
# Neon runs one operation per project at a time and answers 423 meanwhile. Tenant branches share
# the platform project, so retry soon, at a random point: backing off to the 30 s cap let an org
# lose the lock to newer arrivals for minutes (an onboarding took 240 s in the 200-org soak).
LOCKED_RETRY_SECONDS = (1.0, 3.0)


class TimedNeonAPI(NeonAPI):
    def __init__(self, api_key: str, *, base_url: str, timeout: float):
        super().__init__(api_key, base_url=base_url)
        self._timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any):
        kwargs.setdefault("timeout", self._timeout)
        return super()._request(method, path, **kwargs)


class NeonNotFound(Exception):
    pass


def _status_of(op: Any) -> str:
    return getattr(op.status, "value", op.status)


def _status(err: NeonAPIError) -> tuple[int | None, float | None]:
    http = err.__context__
    response = getattr(http, "response", None)
    if response is None:
        return None, None
    retry_after = response.headers.get("Retry-After")
    try:
        delay = float(retry_after) if retry_after else None
    except ValueError:
        delay = None
    return response.status_code, delay


def classify(err: Exception) -> Exception:
    """Map a failed Neon call to not-found, a retryable error or a permanent one."""
    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return transient("NeonUnavailable", f"Neon API unreachable: {type(err).__name__}")
    if not isinstance(err, NeonAPIError):
        return err
    status, retry_after = _status(err)
    text = str(err)[:300]
    if status == 404:
        return NeonNotFound(text)
    if status == 423:
        return transient("NeonLocked", f"Neon resource locked by a running operation: {text}",
                         retry_after=retry_after or random.uniform(*LOCKED_RETRY_SECONDS))
    if status == 429:
        return transient("NeonRateLimited", f"Neon rate limit: {text}", retry_after=retry_after)
    if status is None or status >= 500:
        return transient("NeonServerError", f"Neon API error {status}: {text}")
    if status in (401, 403):
        return permanent("NeonAccessDenied", f"Neon refused the API key ({status}): {text}")
    return permanent("NeonRequestRejected", f"Neon rejected the request ({status}): {text}")


async def call_neon(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A synchronous neon-api call, run in a thread, its failure classified."""
    return await call_in_thread(classify, fn, *args, **kwargs)


async def project_pages(client: NeonAPI) -> AsyncIterator[list[dict]]:
    """Every project of the account, a page at a time."""
    # Raw requests: the client's ProjectsResponse model drops the pagination cursor.
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await call_neon(client._request, "GET", "projects", params=dict(params))
        projects = page.get("projects", [])
        yield projects
        cursor = (page.get("pagination") or {}).get("cursor")
        if not projects or not cursor or cursor == params.get("cursor"):
            return
        params["cursor"] = cursor


class NeonActivities:
    def __init__(self, settings: Settings, ledger: Ledger, client_factory: Callable[[], NeonAPI] | None = None):
        self._settings = settings
        self._ledger = ledger
        self._client_factory = client_factory or (lambda: TimedNeonAPI(
            settings.neon_api_key.get_secret_value(),
            base_url=settings.neon_base_url,
            timeout=settings.neon_request_timeout_seconds,
        ))

    # -- lookups -----------------------------------------------------------------------------

    async def _find_branch(self, client: NeonAPI, name: str) -> Any | None:
        listing = await call_neon(client.branches, self._settings.neon_project_id)
        return next((b for b in listing.branches if b.name == name), None)

    async def _find_project(self, client: NeonAPI, name: str) -> dict | None:
        async for projects in project_pages(client):
            if found := next((p for p in projects if p["name"] == name), None):
                return found
        return None

    def _kind(self, mode: str) -> str:
        return "neon_branch" if mode == "branch" else "neon_project"

    # -- activities --------------------------------------------------------------------------

    @activity.defn
    async def ensure_tenant_database(self, req: TenantDatabaseInput) -> TenantDatabase:
        """Create the tenant's branch (or project) unless one with its name already exists."""
        name = resource_name(req.slug, req.org_id)
        kind = self._kind(req.mode)
        key = f"{kind}:{name}"
        await self._ledger.reserve(org_id=req.org_id, org_slug=req.slug, kind=kind, business_key=key, actor=actor())
        client = self._client_factory()
        if req.mode == "branch":
            project_id = self._settings.neon_project_id
            if not project_id:
                raise permanent("NeonMisconfigured", "branch mode needs TENANTFLOW_NEON_PROJECT_ID")
            existing = await self._find_branch(client, name)
            if existing is not None:
                db = TenantDatabase(mode="branch", name=name, project_id=project_id, branch_id=existing.id,
                                    operation_ids=await self._pending_operations(client, project_id, existing.id))
            else:
                body: dict[str, Any] = {"name": name}
                if self._settings.neon_parent_branch_id:
                    body["parent_id"] = self._settings.neon_parent_branch_id
                try:
                    created = await call_neon(client.branch_create, project_id, branch=body,
                                               endpoints=[{"type": "read_write"}])
                except NeonNotFound as err:
                    raise permanent("NeonProjectNotFound", f"Neon project {project_id} not found") from err
                db = TenantDatabase(mode="branch", name=name, project_id=project_id, branch_id=created.branch.id,
                                    operation_ids=[op.id for op in created.operations])
            cloud_id = db.branch_id
        else:
            existing = await self._find_project(client, name)
            if existing is not None:
                db = TenantDatabase(mode="project", name=name, project_id=existing["id"],
                                    operation_ids=await self._pending_operations(client, existing["id"], None))
            else:
                # Raw request: the client's ProjectResponse model drops the operations to wait for.
                created = await call_neon(client._request, "POST", "projects", json={
                    "project": {"name": name, "region_id": self._settings.neon_region_id}})
                db = TenantDatabase(mode="project", name=name, project_id=created["project"]["id"],
                                    branch_id=(created.get("branch") or {}).get("id"),
                                    operation_ids=[op["id"] for op in created.get("operations", [])])
            cloud_id = db.project_id
        await self._ledger.mark_created(key, cloud_id, actor=actor(), detail={"project_id": db.project_id})
        activity.logger.info("tenant database ready", extra={"org_slug": req.slug, "neon_id": cloud_id})
        return db

    async def _pending_operations(self, client: NeonAPI, project_id: str, branch_id: str | None) -> list[str]:
        listing = await call_neon(client.operations, project_id, limit=100)
        return [
            op.id for op in listing.operations
            if _status_of(op) not in _DONE and (branch_id is None or getattr(op, "branch_id", None) == branch_id)
        ]

    @activity.defn
    async def wait_for_neon_operations(self, req: NeonOperationsInput) -> None:
        """Poll until every operation finished, heartbeating so a lost worker is noticed quickly."""
        client = self._client_factory()
        pending = list(req.operation_ids)
        delay = 0.2
        while pending:
            still: list[str] = []
            for op_id in pending:
                try:
                    op = (await call_neon(client.operation, req.project_id, op_id)).operation
                except NeonNotFound:
                    continue  # Neon prunes old operations; a vanished one is no longer running.
                status = _status_of(op)
                if status in _FAILED_FOR_GOOD:
                    raise permanent("NeonOperationFailed", f"Neon operation {op_id} ended {status}")
                if status not in _DONE:
                    still.append(op_id)
            pending = still
            activity.heartbeat({"pending": pending})
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, 5.0)

    @activity.defn
    async def delete_tenant_database(self, req: TenantDatabaseInput) -> NeonOperationsInput:
        """Delete the tenant's branch (or project); already gone counts as deleted."""
        name = resource_name(req.slug, req.org_id)
        kind = self._kind(req.mode)
        key = f"{kind}:{name}"
        client = self._client_factory()
        operations: list[str] = []
        if req.mode == "branch":
            project_id = self._settings.neon_project_id
            existing = await self._find_branch(client, name)
            if existing is not None:
                await self._ledger.mark_deleting(key, actor=actor())
                try:
                    result = await call_neon(client.branch_delete, project_id, existing.id)
                    operations = [op.id for op in result.operations]
                except NeonNotFound:
                    pass
        else:
            existing = await self._find_project(client, name)
            project_id = existing["id"] if existing else ""
            if existing is not None:
                await self._ledger.mark_deleting(key, actor=actor())
                try:
                    await call_neon(client.project_delete, existing["id"])
                except NeonNotFound:
                    pass
        await self._ledger.mark_deleted(key, actor=actor())
        activity.logger.info("tenant database deleted", extra={"org_slug": req.slug})
        # Project deletion removes its operations too; only branch deletions are worth waiting on.
        return NeonOperationsInput(project_id=project_id, operation_ids=operations if req.mode == "branch" else [])
