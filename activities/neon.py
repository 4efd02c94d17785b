"""Tenant databases on Neon: a branch per tenant in the platform project, or a project per tenant.

Answers are read as raw JSON, and only the fields used here (ids, names, ``status``): Neon adds
enum values (operation actions and statuses, branch and endpoint states) faster than the pinned
``neon-api`` client's strict models follow, and an unknown value must never fail a step. The client
is synchronous, has no timeout and hides the HTTP status, so calls run in a thread with a timeout and
are classified here from the underlying response.

Neon behaviour this module relies on (https://api-docs.neon.tech/reference/ and the pages named):
- Operations: ``finished``/``skipped``/``cancelled`` are terminal; ``failed`` is not (Neon retries
  it), and a status this code does not know yet counts as still running
  (https://neon.com/docs/reference/api/operations.md).
- 423 Locked while an operation runs, 429 above 700 requests/minute or 40/s per route, sometimes
  without ``Retry-After`` (https://api-docs.neon.tech/reference/api-rate-limiting), and 5xx: retried.
- Lists page: projects and operations through ``pagination.cursor``, branches through
  ``pagination.next``; every list here follows its pages to the end.
- Plan caps (domain/neon_plans.py): past the cap Neon answers 422 ``BRANCHES_LIMIT_EXCEEDED`` or
  ``PROJECTS_LIMIT_EXCEEDED``; branches past the included number are billed as extras.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import requests
from neon_api import NeonAPI
from neon_api.exceptions import NeonAPIError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import actor, call_in_thread, permanent, transient
from db.ledger import Ledger
from domain.neon_plans import EXTRA_BRANCH_MONTHLY_USD, PLANS, PLANS_URL
from domain.onboard_org import NeonOperationsInput, TenantDatabase, TenantDatabaseInput
from domain.resources import business_key, neon_kind, resource_name
from domain.settings import Settings

_DONE = {"finished", "skipped"}
# `error` is an older terminal failure status of Neon's schema; `cancelled` is terminal by the docs.
_ENDED_UNDONE = {"cancelled", "error"}
# Neon runs one operation per project at a time and answers 423 meanwhile. Tenant branches share
# the platform project, so retry soon, at a random point: backing off to the 30 s cap let an org
# lose the lock to newer arrivals for minutes (an onboarding took 240 s in the 200-org soak).
LOCKED_RETRY_SECONDS = (1.0, 3.0)
# A 429 without Retry-After: exponential by attempt, capped, with full jitter so throttled orgs
# do not come back in step.
RATE_LIMITED_RETRY_CAP_SECONDS = 30.0
# Operations are polled at most this far apart (also after a throttled poll: Neon's windows are short).
POLL_CAP_SECONDS = 5.0
# Page sizes asked for (Neon's maxima: branches 10000, projects 400, operations 1000).
PAGE_LIMITS = {"branches": 1000, "projects": 400, "operations": 100}
_SWITCH_MODE = (
    "set TENANTFLOW_NEON_MODE=project to give each new tenant its own Neon project, or move the "
    "Neon account to a plan with a higher cap and set TENANTFLOW_NEON_PLAN"
)


class TimedNeonAPI(NeonAPI):  # type: ignore[misc]  # neon-api ships no types
    def __init__(self, api_key: str, *, base_url: str, timeout: float):
        super().__init__(api_key, base_url=base_url)
        self._timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super()._request(method, path, **kwargs)


def make_neon_client(settings: Settings) -> NeonAPI:
    """The Neon client of the activities: the settings' key and base URL, with a timeout."""
    return TimedNeonAPI(
        settings.neon_api_key.get_secret_value(),
        base_url=settings.neon_base_url,
        timeout=settings.neon_request_timeout_seconds,
    )


class NeonNotFound(Exception):
    pass


# -- errors ----------------------------------------------------------------------------------


def branch_limit_error(detail: str) -> ApplicationError:
    return permanent("NeonBranchLimit", f"{detail}; {_SWITCH_MODE}")


def project_limit_error(detail: str) -> ApplicationError:
    return permanent(
        "NeonProjectLimit",
        f"{detail}; delete unused tenant projects, or move the Neon account to a "
        "plan with more projects (or ask Neon support to raise the limit) and set "
        "TENANTFLOW_NEON_PLAN",
    )


_LIMIT_ERRORS = {
    "BRANCHES_LIMIT_EXCEEDED": lambda text: branch_limit_error(f"Neon refused another branch: {text}"),
    "PROJECTS_LIMIT_EXCEEDED": lambda text: project_limit_error(f"Neon refused another project: {text}"),
}


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


def _error_code(err: NeonAPIError) -> str:
    """Neon's machine-readable ``code`` from an error body, "" when there is none."""
    try:
        body = json.loads(str(err))
    except ValueError:
        return ""
    return str(body.get("code") or "") if isinstance(body, dict) else ""


def _attempt() -> int:
    try:
        return activity.info().attempt
    except RuntimeError:
        return 1


def rate_limited_delay(retry_after: float | None) -> float:
    """When to retry a 429: as Neon says, else a jittered exponential backoff by attempt."""
    if retry_after:
        return retry_after
    return random.uniform(0.5, 1.0) * min(RATE_LIMITED_RETRY_CAP_SECONDS, 2.0 ** _attempt())


def classify(err: Exception) -> Exception:
    """Map a failed Neon call to not-found, a retryable error or a permanent one."""
    if isinstance(err, (requests.ConnectionError, requests.Timeout)):
        return transient("NeonUnavailable", f"Neon API unreachable: {type(err).__name__}")
    if not isinstance(err, NeonAPIError):
        return err
    status, retry_after = _status(err)
    text = str(err)[:300]
    if limit_error := _LIMIT_ERRORS.get(_error_code(err)):
        return limit_error(text)
    if status == 404:
        return NeonNotFound(text)
    if status == 423:
        return transient(
            "NeonLocked",
            f"Neon resource locked by a running operation: {text}",
            retry_after=retry_after or random.uniform(*LOCKED_RETRY_SECONDS),
        )
    if status == 429:
        return transient("NeonRateLimited", f"Neon rate limit: {text}", retry_after=rate_limited_delay(retry_after))
    if status is None or status >= 500:
        return transient("NeonServerError", f"Neon API error {status}: {text}")
    if status in (401, 403):
        return permanent("NeonAccessDenied", f"Neon refused the API key ({status}): {text}")
    return permanent("NeonRequestRejected", f"Neon rejected the request ({status}): {text}")


async def call_neon(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A synchronous neon-api call, run in a thread, its failure classified."""
    return await call_in_thread(classify, fn, *args, **kwargs)


# Neon refuses a 429 or 423 before doing anything, so the call is repeated in place, within this
# budget per activity attempt, before Temporal's retry (whose timer a time-skipping test server
# would fast-forward, while Neon's rate window and operation lock run on wall-clock time).
REFUSED_WAIT_SECONDS = 20.0
_REFUSED = {"NeonRateLimited", "NeonLocked"}


async def neon_json(client: NeonAPI, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One API call as raw JSON: no model of the pinned client parses it."""
    waited = 0.0
    while True:
        try:
            answer: dict[str, Any] = await call_neon(client._request, method, path, **kwargs)
            return answer
        except ApplicationError as err:
            pause = err.next_retry_delay.total_seconds() if err.next_retry_delay else 1.0
            if err.type not in _REFUSED or waited + pause > REFUSED_WAIT_SECONDS:
                raise
        if activity.in_activity():
            activity.heartbeat(f"Neon refused {method} {path} for now; trying again in {pause:.1f}s")
        await asyncio.sleep(pause)
        waited += pause


# -- lists -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NeonList:
    """One of Neon's paged lists: where it is, which key holds the items, which cursor it pages by."""

    path: str
    key: str
    cursor_field: str
    params: dict[str, Any]


def project_list(limit: int = PAGE_LIMITS["projects"]) -> NeonList:
    """Every project of the account."""
    return NeonList("projects", "projects", "cursor", {"limit": limit})


def branch_list(project_id: str, limit: int = PAGE_LIMITS["branches"]) -> NeonList:
    """Every branch of a project, oldest first (created_at never changes, so no page shifts)."""
    return NeonList(
        f"projects/{project_id}/branches",
        "branches",
        "next",
        {"limit": limit, "sort_by": "created_at", "sort_order": "asc"},
    )


def operation_list(project_id: str, limit: int = PAGE_LIMITS["operations"]) -> NeonList:
    """A project's operations, newest first."""
    return NeonList(f"projects/{project_id}/operations", "operations", "cursor", {"limit": limit})


async def neon_page(
    client: NeonAPI, listing: NeonList, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a list (from ``cursor``), and the cursor of the next (None after the last page)."""
    params = {**listing.params, **({"cursor": cursor} if cursor else {})}
    page = await neon_json(client, "GET", listing.path, params=params)
    items: list[dict[str, Any]] = page.get(listing.key) or []
    following = (page.get("pagination") or {}).get(listing.cursor_field)
    return items, (following if items and following and following != cursor else None)


async def neon_pages(client: NeonAPI, listing: NeonList) -> AsyncIterator[list[dict[str, Any]]]:
    """Every page of a list, following its cursor until an empty page (or a cursor seen before)."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        items, cursor = await neon_page(client, listing, cursor)
        yield items
        if cursor is None or cursor in seen:
            return
        seen.add(cursor)


def project_pages(client: NeonAPI, limit: int = PAGE_LIMITS["projects"]) -> AsyncIterator[list[dict[str, Any]]]:
    return neon_pages(client, project_list(limit))


def branch_pages(
    client: NeonAPI, project_id: str, limit: int = PAGE_LIMITS["branches"]
) -> AsyncIterator[list[dict[str, Any]]]:
    return neon_pages(client, branch_list(project_id, limit))


def operation_pages(
    client: NeonAPI, project_id: str, limit: int = PAGE_LIMITS["operations"]
) -> AsyncIterator[list[dict[str, Any]]]:
    return neon_pages(client, operation_list(project_id, limit))


def _ended(op: dict[str, Any]) -> bool:
    return op.get("status") in _DONE or op.get("status") in _ENDED_UNDONE


async def wait_operations(client: NeonAPI, project_id: str, operation_ids: list[str]) -> None:
    """Poll until every operation finished, heartbeating so a lost worker is noticed quickly.

    ``failed`` operations are retried by Neon and unknown statuses are newer than this code:
    both are waited for, within the step's deadline. ``cancelled`` ends the wait for good. A
    throttled or locked poll is not a failure of the wait: it backs off and polls again."""
    pending = list(operation_ids)
    delay = 0.2
    while pending:
        statuses: dict[str, str] = {}
        pause = delay
        for op_id in pending:
            try:
                op = (await neon_json(client, "GET", f"projects/{project_id}/operations/{op_id}"))["operation"]
            except NeonNotFound:
                continue  # Neon prunes old operations; a vanished one is no longer running.
            except ApplicationError as err:
                if err.non_retryable:
                    raise
                statuses[op_id] = f"not polled: {err.type}"
                told = err.next_retry_delay.total_seconds() if err.next_retry_delay else delay
                pause = max(pause, min(told, POLL_CAP_SECONDS))
                continue
            status = str(op.get("status"))
            if status in _ENDED_UNDONE:
                raise permanent(
                    "NeonOperationCancelled" if status == "cancelled" else "NeonOperationFailed",
                    f"Neon operation {op_id} ({op.get('action')}) on project {project_id} "
                    f"ended {status}, so its change was not made; retry the step to start it again",
                )
            if status not in _DONE:
                statuses[op_id] = status
        pending = list(statuses)
        activity.heartbeat({"pending": statuses})
        if pending:
            await asyncio.sleep(pause)
            delay = min(delay * 1.5, POLL_CAP_SECONDS)


class NeonActivities:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        client_factory: Callable[[], NeonAPI] | None = None,
        *,
        page_size: int | None = None,
    ):
        self._settings = settings
        self._ledger = ledger
        self._client_factory = client_factory or (lambda: make_neon_client(settings))
        self._limits = {kind: page_size or limit for kind, limit in PAGE_LIMITS.items()}

    # -- lookups -----------------------------------------------------------------------------

    async def _branches(self, client: NeonAPI, project_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        async for page in branch_pages(client, project_id, self._limits["branches"]):
            found += page
        return found

    async def _find_branch(self, client: NeonAPI, name: str) -> tuple[dict[str, Any] | None, int]:
        """The platform project's branch named ``name``, and how many branches the project has."""
        try:
            branches = await self._branches(client, self._settings.neon_project_id)
        except NeonNotFound as err:
            project_id = self._settings.neon_project_id
            raise permanent("NeonProjectNotFound", f"Neon project {project_id} not found") from err
        return next((b for b in branches if b.get("name") == name), None), len(branches)

    async def _find_project(self, client: NeonAPI, name: str) -> tuple[dict[str, Any] | None, int]:
        """The project named ``name``, and how many projects were seen looking for it."""
        seen = 0
        async for projects in project_pages(client, self._limits["projects"]):
            seen += len(projects)
            if found := next((p for p in projects if p.get("name") == name), None):
                return found, seen
        return None, seen

    async def _pending_operations(self, client: NeonAPI, project_id: str, branch_id: str | None) -> list[str]:
        """Unfinished operations (of one branch, or of the project). Neon refuses new operations
        while one is unfinished, so those are the newest: reading stops at a page that has a
        finished one."""
        pending: list[str] = []
        async for ops in operation_pages(client, project_id, self._limits["operations"]):
            pending += [
                op["id"] for op in ops if not _ended(op) and (branch_id is None or op.get("branch_id") == branch_id)
            ]
            if not ops or any(_ended(op) for op in ops):
                break
        return pending

    # -- plan ----------------------------------------------------------------------------------

    def _branch_allowance(self, project_id: str, branch_number: int, name: str, *, new: bool) -> str | None:
        """Refuse a new branch past the plan's cap; a cost warning when it is a billed extra."""
        plan = self._settings.neon_plan
        limits = PLANS[plan]
        if new and branch_number > limits.max_branches:
            raise branch_limit_error(
                f"Neon project {project_id} already has {branch_number - 1} branches, the {plan} plan's cap of "
                f"{limits.max_branches} per project: no branch for {name}"
            )
        if not limits.branch_is_billed(branch_number):
            return None
        return (
            f"Neon project {project_id} has {branch_number} branches, more than the {limits.included_branches} "
            f"included in the {plan} plan: {name} is billed as an extra branch "
            f"(${EXTRA_BRANCH_MONTHLY_USD:.2f} per branch-month, {PLANS_URL})"
        )

    # -- activities --------------------------------------------------------------------------

    @activity.defn
    async def ensure_tenant_database(self, req: TenantDatabaseInput) -> TenantDatabase:
        """Create the tenant's branch (or project) unless one with its name already exists."""
        name = resource_name(req.slug, req.org_id)
        kind = neon_kind(req.mode)
        key = f"{kind}:{name}"
        await self._ledger.reserve(org_id=req.org_id, org_slug=req.slug, kind=kind, business_key=key, actor=actor())
        client = self._client_factory()
        if req.mode == "branch":
            db = await self._ensure_branch(client, name)
            cloud_id = db.branch_id or ""
        else:
            db = await self._ensure_project(client, name)
            cloud_id = db.project_id
        await self._ledger.mark_created(key, cloud_id, actor=actor(), detail={"project_id": db.project_id})
        activity.logger.info("tenant database ready", extra={"org_slug": req.slug, "neon_id": cloud_id})
        if db.cost_warning:
            activity.logger.warning(
                "tenant database billed as an extra",
                extra={
                    "org_slug": req.slug,
                    "neon_id": cloud_id,
                    "neon_plan": self._settings.neon_plan,
                    "cost_warning": db.cost_warning,
                },
            )
        return db

    async def _ensure_branch(self, client: NeonAPI, name: str) -> TenantDatabase:
        project_id = self._settings.neon_project_id
        if not project_id:
            raise permanent("NeonMisconfigured", "branch mode needs TENANTFLOW_NEON_PROJECT_ID")
        existing, count = await self._find_branch(client, name)
        if existing is not None:
            return TenantDatabase(
                mode="branch",
                name=name,
                project_id=project_id,
                branch_id=existing["id"],
                operation_ids=await self._pending_operations(client, project_id, existing["id"]),
                cost_warning=self._branch_allowance(project_id, count, name, new=False),
            )
        warning = self._branch_allowance(project_id, count + 1, name, new=True)
        body: dict[str, Any] = {"name": name}
        if self._settings.neon_parent_branch_id:
            body["parent_id"] = self._settings.neon_parent_branch_id
        try:
            created = await neon_json(
                client,
                "POST",
                f"projects/{project_id}/branches",
                json={"branch": body, "endpoints": [{"type": "read_write"}]},
            )
        except NeonNotFound as err:
            raise permanent("NeonProjectNotFound", f"Neon project {project_id} not found") from err
        return TenantDatabase(
            mode="branch",
            name=name,
            project_id=project_id,
            branch_id=created["branch"]["id"],
            operation_ids=[op["id"] for op in created.get("operations") or []],
            cost_warning=warning,
        )

    async def _ensure_project(self, client: NeonAPI, name: str) -> TenantDatabase:
        existing, count = await self._find_project(client, name)
        if existing is not None:
            return TenantDatabase(
                mode="project",
                name=name,
                project_id=existing["id"],
                operation_ids=await self._pending_operations(client, existing["id"], None),
            )
        plan = self._settings.neon_plan
        if count >= PLANS[plan].projects:
            raise project_limit_error(
                f"the Neon account has {count} projects, the {plan} plan's limit of "
                f"{PLANS[plan].projects}: no project for {name}"
            )
        created = await neon_json(
            client, "POST", "projects", json={"project": {"name": name, "region_id": self._settings.neon_region_id}}
        )
        return TenantDatabase(
            mode="project",
            name=name,
            project_id=created["project"]["id"],
            branch_id=(created.get("branch") or {}).get("id"),
            operation_ids=[op["id"] for op in created.get("operations") or []],
        )

    @activity.defn
    async def wait_for_neon_operations(self, req: NeonOperationsInput) -> None:
        """Poll until every operation finished, heartbeating so a lost worker is noticed quickly."""
        await wait_operations(self._client_factory(), req.project_id, req.operation_ids)

    @activity.defn
    async def delete_tenant_database(self, req: TenantDatabaseInput) -> NeonOperationsInput:
        """Delete the tenant's branch (or project); already gone counts as deleted."""
        name = resource_name(req.slug, req.org_id)
        key = business_key(neon_kind(req.mode), name)
        client = self._client_factory()
        operations: list[str] = []
        if req.mode == "branch":
            project_id = self._settings.neon_project_id
            existing, _ = await self._find_branch(client, name)
            path = f"projects/{project_id}/branches/{existing['id']}" if existing else None
        else:
            existing, _ = await self._find_project(client, name)
            project_id = existing["id"] if existing else ""
            path = f"projects/{project_id}" if existing else None
        if path is not None:
            await self._ledger.mark_deleting(key, actor=actor())
            try:
                result = await neon_json(client, "DELETE", path)
                operations = [op["id"] for op in result.get("operations") or []]
            except NeonNotFound:
                pass
        await self._ledger.mark_deleted(key, actor=actor())
        activity.logger.info("tenant database deleted", extra={"org_slug": req.slug})
        # Project deletion removes its operations too; only branch deletions are worth waiting on.
        return NeonOperationsInput(project_id=project_id, operation_ids=operations if req.mode == "branch" else [])
