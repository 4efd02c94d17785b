"""Reconciliation's activities: list what exists in AWS and Neon (a page at a time), read what the
ledger and the org rows record about it, re-check and delete an orphan, store the report, record
the outcome of an orphan an operator named.

The rules that decide what is an orphan or drift are pure and live in ``domain.reconcile``. The
paged activities (``inventory_page``, ``drift_page``, ``save_report_part``) serve
ReconcileWorkflowV2; ``inventory_aws``, ``inventory_neon``, ``read_records`` and ``save_report``
serve the runs of ReconcileWorkflow still open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from neon_api import NeonAPI
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ec2 import call_ec2, ec2_page, make_ec2_client
from activities.errors import permanent
from activities.instances import NOT_FOUND, instance_state, wait_for_state
from activities.neon import (
    NeonNotFound,
    branch_list,
    make_neon_client,
    neon_json,
    neon_page,
    project_list,
    wait_operations,
)
from db.reconcile import ReconcileRepo
from domain.reconcile import (
    CloudResource,
    Deletion,
    DeletionOutcome,
    DriftPage,
    DriftPageRequest,
    Finding,
    Inventory,
    InventoryPage,
    InventoryPageRequest,
    LedgerEntry,
    OrphanCheck,
    OrphanDeletionResult,
    OrphanReason,
    ReconcileReport,
    Records,
    RecordsRequest,
    ReportPart,
    accounted_for,
    find_orphans,
    may_have_drifted,
    orphan_reason,
)
from domain.resources import (
    MANAGED,
    NAME_PREFIX,
    ORG_ID_TAG,
    ORG_SLUG_TAG,
    PRESENT_STATES,
    WORKSPACE_TAG,
    ResourceKind,
    org_of_name,
    state_filter,
    tags_of,
)
from domain.settings import Settings

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

# EC2 takes up to 200 values per filter; ids are looked up this many at a time.
_IDS_PER_FILTER = 100


def _instance(item: dict[str, Any]) -> CloudResource:
    tags = tags_of(item)
    return CloudResource(
        kind=ResourceKind.ec2_instance,
        cloud_id=item["InstanceId"],
        name=tags.get("Name"),
        org_id=tags.get(ORG_ID_TAG),
        org_slug=tags.get(ORG_SLUG_TAG),
        workspace_id=tags.get(WORKSPACE_TAG),
    )


def _security_group(item: dict[str, Any]) -> CloudResource:
    tags = tags_of(item)
    return CloudResource(
        kind=ResourceKind.security_group,
        cloud_id=item["GroupId"],
        name=item["GroupName"],
        org_id=tags.get(ORG_ID_TAG),
        org_slug=tags.get(ORG_SLUG_TAG),
    )


def _neon_resource(kind: ResourceKind, cloud_id: str, name: str, project_id: str) -> CloudResource:
    org_id, slug = org_of_name(name)
    return CloudResource(kind=kind, cloud_id=cloud_id, name=name, org_id=org_id, org_slug=slug, project_id=project_id)


def _records(found: dict[str, Any]) -> Records:
    return Records(
        orgs=found["orgs"],
        ledger=[LedgerEntry.model_validate(r) for r in found["ledger"]],
        workspace_ids=found["workspaces"],
    )


class ReconcileActivities:
    def __init__(
        self,
        settings: Settings,
        repo: ReconcileRepo,
        ec2_client_factory: Callable[[], EC2Client] | None = None,
        neon_client_factory: Callable[[], NeonAPI] | None = None,
    ):
        self._settings = settings
        self._repo = repo
        self._ec2 = (ec2_client_factory or (lambda: make_ec2_client(settings)))()
        self._neon_factory = neon_client_factory or (lambda: make_neon_client(settings))

    # -- listing --------------------------------------------------------------------------------

    async def _ec2_all(self, method: str, key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every page of a Describe* list."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page, cursor = await ec2_page(self._ec2, method, key, cursor=cursor, page_size=None, **kwargs)
            items += page
            if cursor is None:
                return items

    async def _list_page(
        self, kind: ResourceKind, cursor: str | None, page_size: int | None
    ) -> tuple[list[CloudResource], str | None]:
        """One page of the managed resources of one kind, from ``cursor``."""
        if kind == ResourceKind.ec2_instance:
            reservations, cursor = await ec2_page(
                self._ec2,
                "describe_instances",
                "Reservations",
                cursor=cursor,
                page_size=page_size,
                Filters=[MANAGED, state_filter(*PRESENT_STATES)],
            )
            return [_instance(i) for r in reservations for i in r["Instances"]], cursor
        if kind == ResourceKind.security_group:
            groups, cursor = await ec2_page(
                self._ec2,
                "describe_security_groups",
                "SecurityGroups",
                cursor=cursor,
                page_size=page_size,
                Filters=[MANAGED],
            )
            return [_security_group(g) for g in groups], cursor
        platform = self._settings.neon_project_id
        if kind == ResourceKind.neon_branch:
            if not platform:
                return [], None
            try:
                branches, cursor = await neon_page(
                    self._neon_factory(), branch_list(platform, page_size or 1000), cursor
                )
            except NeonNotFound as err:
                raise permanent("NeonProjectNotFound", f"Neon project {platform} not found") from err
            return [
                _neon_resource(kind, b["id"], b["name"], platform)
                for b in branches
                if b["name"].startswith(NAME_PREFIX)
            ], cursor
        projects, cursor = await neon_page(self._neon_factory(), project_list(min(page_size or 400, 400)), cursor)
        return [
            _neon_resource(kind, p["id"], p["name"], p["id"])
            for p in projects
            if p["name"].startswith(NAME_PREFIX) and p["id"] != platform
        ], cursor

    async def _present(self, entries: Iterable[LedgerEntry]) -> set[tuple[str, str]]:
        """Which of these ledger rows' resources exist, as (kind, cloud id)."""
        ids: dict[ResourceKind, list[str]] = {}
        for entry in entries:
            if entry.cloud_id:
                ids.setdefault(entry.kind, []).append(entry.cloud_id)
        return {(kind, r.cloud_id) for kind, cloud_ids in ids.items() for r in await self._existing(kind, cloud_ids)}

    async def _existing(self, kind: ResourceKind, cloud_ids: list[str]) -> list[CloudResource]:
        """Those of these resources of one kind that exist, as they are now: the same resources
        the inventory lists, looked up by id."""
        if kind in (ResourceKind.ec2_instance, ResourceKind.security_group):
            found: list[CloudResource] = []
            for start in range(0, len(cloud_ids), _IDS_PER_FILTER):
                found += await self._ec2_by_id(kind, cloud_ids[start : start + _IDS_PER_FILTER])
            return found
        wanted = set(cloud_ids)
        found = []
        cursor: str | None = None
        while wanted:
            page, cursor = await self._list_page(kind, cursor, None)
            found += [r for r in page if r.cloud_id in wanted]
            wanted -= {r.cloud_id for r in page}
            if cursor is None:
                break
        return found

    async def _ec2_by_id(self, kind: ResourceKind, cloud_ids: list[str]) -> list[CloudResource]:
        if kind == ResourceKind.ec2_instance:
            reservations = await self._ec2_all(
                "describe_instances",
                "Reservations",
                Filters=[{"Name": "instance-id", "Values": cloud_ids}, MANAGED, state_filter(*PRESENT_STATES)],
            )
            return [_instance(i) for r in reservations for i in r["Instances"]]
        groups = await self._ec2_all(
            "describe_security_groups", "SecurityGroups", Filters=[{"Name": "group-id", "Values": cloud_ids}, MANAGED]
        )
        return [_security_group(g) for g in groups]

    async def _read(self, req: RecordsRequest) -> Records:
        return _records(
            await self._repo.records(
                business_keys=req.business_keys,
                org_ids=req.org_ids,
                workspace_ids=req.workspace_ids,
                created_in_orgs=req.created_in_orgs,
            )
        )

    # -- ReconcileWorkflowV2: a page at a time ---------------------------------------------------

    @activity.defn
    async def inventory_page(self, req: InventoryPageRequest) -> InventoryPage:
        """One page of one kind of managed resource: how many it held and which are orphans."""
        resources, cursor = await self._list_page(req.kind, req.cursor, req.page_size)
        scope = set(req.org_ids) if req.org_ids is not None else None
        candidates = [r for r in resources if scope is None or r.org_id in scope]
        orphans = find_orphans(candidates, await self._read(RecordsRequest.about(candidates, created_in_orgs=[])))
        activity.logger.info(
            "inventory page",
            extra={
                "kind": req.kind.value,
                "listed": len(resources),
                "orphans": len(orphans),
                "last_page": cursor is None,
            },
        )
        return InventoryPage(listed=len(resources), orphans=orphans, next_cursor=cursor)

    @activity.defn
    async def drift_page(self, req: DriftPageRequest) -> DriftPage:
        """One page of ``created`` ledger rows: those whose resource no longer exists."""
        rows = await self._repo.created_rows(after=req.after, limit=req.page_size, org_ids=req.org_ids)
        entries = [
            e for e in (LedgerEntry.model_validate(r) for r in rows) if may_have_drifted(e, None, req.recorded_before)
        ]
        present = await self._present(entries)
        drift = [Finding.drift(e) for e in entries if (e.kind, e.cloud_id) not in present]
        activity.logger.info("ledger page checked", extra={"rows": len(rows), "drift": len(drift)})
        return DriftPage(drift=drift, next_after=rows[-1]["id"] if len(rows) == req.page_size else None)

    @activity.defn
    async def save_report_part(self, part: ReportPart) -> int:
        """Store a part of the run's report; returns the report's id. A retried part overwrites
        itself, never duplicates."""
        report = part.report
        findings = [f.model_dump(mode="json") for f in report.findings]
        if part.offset:
            return await self._repo.extend_findings(
                workflow_id=report.workflow_id, run_id=report.run_id, offset=part.offset, findings=findings
            )
        return await self._store(report)

    async def _store(self, report: ReconcileReport) -> int:
        return await self._repo.save_report(
            workflow_id=report.workflow_id,
            run_id=report.run_id,
            started_at=report.started_at,
            finished_at=report.finished_at or report.started_at,
            dry_run=report.dry_run,
            cap_exceeded=report.cap_exceeded,
            findings=[f.model_dump(mode="json") for f in report.findings],
            deleted=[d.model_dump(mode="json") for d in report.deleted],
            detail={"org_ids": report.org_ids, "budget": report.budget.model_dump(mode="json")},
        )

    # -- DeleteOrphanWorkflow: one orphan an operator named ---------------------------------------

    @activity.defn
    async def recheck_orphan(self, orphan: Finding) -> OrphanCheck:
        """A reported orphan as it is now, by the reconciler's own rules: whether it still exists
        (read again from AWS or Neon, with its current tags) and is still an orphan."""
        found = await self._existing(orphan.kind, [orphan.cloud_id] if orphan.cloud_id else [])
        if not found:
            return OrphanCheck(exists=False)
        resource = found[0]
        records = await self._read(RecordsRequest.about([resource], created_in_orgs=[]))
        still = find_orphans([resource], records)
        activity.logger.info(
            "orphan re-checked",
            extra={"kind": resource.kind, "cloud_id": resource.cloud_id, "orphan": bool(still)},
        )
        if still:
            return OrphanCheck(exists=True, orphan=still[0])
        return OrphanCheck(exists=True, accounted_for=accounted_for(resource, records))

    @activity.defn
    async def finish_orphan_deletion(self, result: OrphanDeletionResult) -> None:
        """Record a named deletion's outcome (audited as the operator who asked); once."""
        await self._repo.finish_orphan_deletion(
            result.deletion_id, status=result.status.value, code=result.code, reason=result.reason
        )

    # -- ReconcileWorkflow: the whole inventory at once -----------------------------------------

    @activity.defn
    async def inventory_aws(self) -> Inventory:
        """Live instances and security groups tagged ``tenantflow:managed=true``."""
        reservations = await self._ec2_all(
            "describe_instances", "Reservations", Filters=[MANAGED, state_filter(*PRESENT_STATES)]
        )
        groups = await self._ec2_all("describe_security_groups", "SecurityGroups", Filters=[MANAGED])
        instances = [_instance(i) for r in reservations for i in r["Instances"]]
        security_groups = [_security_group(g) for g in groups]
        activity.logger.info(
            "AWS inventory", extra={"instances": len(instances), "security_groups": len(security_groups)}
        )
        return Inventory(resources=instances + security_groups)

    @activity.defn
    async def inventory_neon(self) -> Inventory:
        """``tf-`` branches of the platform project and ``tf-`` projects (never the platform's own)."""
        resources: list[CloudResource] = []
        for kind in (ResourceKind.neon_branch, ResourceKind.neon_project):
            cursor: str | None = None
            while True:
                page, cursor = await self._list_page(kind, cursor, None)
                resources += page
                if cursor is None:
                    break
        activity.logger.info(
            "Neon inventory",
            extra={
                "branches": sum(r.kind == ResourceKind.neon_branch for r in resources),
                "projects": sum(r.kind == ResourceKind.neon_project for r in resources),
            },
        )
        return Inventory(resources=resources)

    @activity.defn
    async def read_records(self, req: RecordsRequest) -> Records:
        return await self._read(req)

    @activity.defn
    async def save_report(self, report: ReconcileReport) -> ReconcileReport:
        report_id = await self._store(report)
        activity.logger.info(
            "reconcile report stored",
            extra={
                "report_id": report_id,
                "orphans": len(report.orphans),
                "drift": len(report.drift),
                "deleted": len(report.deleted),
                "dry_run": report.dry_run,
                "cap_exceeded": report.cap_exceeded,
            },
        )
        return report.model_copy(update={"id": report_id})

    # -- deletion (both versions) ---------------------------------------------------------------

    @activity.defn
    async def delete_orphan(self, orphan: Finding) -> Deletion:
        """Delete one orphan if it still is one; already gone is success. Ledger and audit follow."""
        resource = orphan.resource()
        reason = await self._current_reason(resource)
        if reason is None:
            activity.logger.info("no longer an orphan", extra={"kind": resource.kind, "cloud_id": resource.cloud_id})
            return Deletion(
                kind=resource.kind, cloud_id=resource.cloud_id, org_id=resource.org_id, outcome="no_longer_orphaned"
            )
        delete = {
            ResourceKind.ec2_instance: self._terminate_instance,
            ResourceKind.security_group: self._delete_security_group,
            ResourceKind.neon_branch: self._delete_neon_branch,
            ResourceKind.neon_project: self._delete_neon_project,
        }[resource.kind]
        outcome: DeletionOutcome = "already_gone" if await delete(resource) else "deleted"
        await self._repo.record_deletion(
            kind=resource.kind,
            cloud_id=resource.cloud_id,
            business_key=resource.business_key,
            org_id=resource.org_id,
            org_slug=orphan.org_slug,
            outcome=outcome,
            detail={"reason": reason, "name": resource.name, "workflow_id": activity.info().workflow_id},
        )
        activity.logger.info(
            "orphan deleted",
            extra={
                "kind": resource.kind,
                "cloud_id": resource.cloud_id,
                "org_id": resource.org_id,
                "reason": reason,
                "outcome": outcome,
            },
        )
        return Deletion(kind=resource.kind, cloud_id=resource.cloud_id, org_id=resource.org_id, outcome=outcome)

    async def _current_reason(self, resource: CloudResource) -> OrphanReason | None:
        """Re-checked right before deleting: the records may have changed since the comparison."""
        records = await self._read(RecordsRequest.about([resource], created_in_orgs=[]))
        ledger = {e.business_key: e for e in records.ledger}
        return orphan_reason(resource, records.orgs, ledger, set(records.workspace_ids))

    async def _terminate_instance(self, resource: CloudResource) -> bool:
        """Terminate and wait until terminated; True if it already was."""
        if (await instance_state(self._ec2, resource.cloud_id) or "terminated") == "terminated":
            return True
        try:
            await call_ec2(self._ec2, "terminate_instances", InstanceIds=[resource.cloud_id])
        except ApplicationError as err:
            if err.type != NOT_FOUND:
                raise
            return True
        # Terminated instances eventually vanish from EC2: gone is as good as terminated.
        await wait_for_state(self._ec2, resource.cloud_id, {"terminated"}, set())
        return False

    async def _delete_security_group(self, resource: CloudResource) -> bool:
        # DependencyViolation (instances still draining) is classified retryable.
        try:
            await call_ec2(self._ec2, "delete_security_group", GroupId=resource.cloud_id)
        except ApplicationError as err:
            if err.type != "InvalidGroup.NotFound":
                raise
            return True
        return False

    async def _delete_neon_branch(self, resource: CloudResource) -> bool:
        client = self._neon_factory()
        project_id = resource.project_id or self._settings.neon_project_id
        try:
            result = await neon_json(client, "DELETE", f"projects/{project_id}/branches/{resource.cloud_id}")
        except NeonNotFound:
            return True
        # Neon locks the project until the deletion's operations finish: wait, so that the next
        # deletion is not refused with 423 and "deleted" means deleted.
        await wait_operations(client, project_id, [op["id"] for op in result.get("operations") or []])
        return False

    async def _delete_neon_project(self, resource: CloudResource) -> bool:
        try:
            await neon_json(self._neon_factory(), "DELETE", f"projects/{resource.cloud_id}")
        except NeonNotFound:
            return True
        return False
