"""Reconciliation: what exists in AWS and Neon against what the ledger and the org rows record.

Orphans are managed resources whose org row is gone, that have no ledger row, or whose ledger row
says deleted; drift is a ledger row saying ``created`` for a resource that no longer exists. The
workflow compares (``orphan_reason``, pure) and decides; these activities list, re-check, delete
and store the report.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any, Callable, Literal, Mapping

from neon_api import NeonAPI
from pydantic import BaseModel, Field, computed_field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.ec2 import MANAGED_TAG, ORG_ID_TAG, ORG_SLUG_TAG, call_ec2, classify, make_ec2_client
from activities.errors import call_in_thread, permanent
from activities.instances import WORKSPACE_TAG, instance_key
from activities.neon import NeonNotFound, TimedNeonAPI, branch_pages, neon_json, project_pages, wait_operations
from db.reconcile import ReconcileRepo
from domain.settings import Settings

ResourceKind = Literal["ec2_instance", "security_group", "neon_branch", "neon_project"]
OrphanReason = Literal["org_missing", "unrecorded", "ledger_deleted", "workspace_missing"]
DriftReason = Literal["missing_in_cloud"]

NAME_PREFIX = "tf-"
# resource_name(): tf-<slug>-<the org id's 12 hex digits>
_RESOURCE_NAME = re.compile(r"^tf-(?P<slug>[a-z][a-z0-9-]*[a-z0-9])-(?P<hex>[0-9a-f]{12})$")
_INSTANCE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


# --- models ----------------------------------------------------------------------------------

class CloudResource(BaseModel):
    kind: ResourceKind
    cloud_id: str
    name: str | None = None
    org_id: str | None = None
    org_slug: str | None = None
    workspace_id: str | None = None
    project_id: str | None = None  # the Neon project a branch lives in

    @property
    def business_key(self) -> str | None:
        """The ledger key its creating activity recorded it under."""
        if self.kind == "ec2_instance":
            return instance_key(self.workspace_id) if self.workspace_id else None
        return f"{self.kind}:{self.name}" if self.name else None


class Inventory(BaseModel):
    resources: list[CloudResource] = []


class LedgerEntry(BaseModel):
    business_key: str
    kind: str
    cloud_id: str | None = None
    status: str
    org_id: str
    org_slug: str
    updated_at: datetime


class RecordsRequest(BaseModel):
    business_keys: list[str]
    org_ids: list[str]
    workspace_ids: list[str]
    # Whose ``created`` ledger rows to return for the drift check; None: every org's.
    created_in_orgs: list[str] | None = None


class Records(BaseModel):
    orgs: dict[str, str] = {}  # id -> slug, of the orgs asked about that still have rows
    ledger: list[LedgerEntry] = []
    workspace_ids: list[str] = []


class Finding(BaseModel):
    problem: Literal["orphan", "drift"]
    reason: OrphanReason | DriftReason
    kind: ResourceKind
    cloud_id: str | None
    name: str | None = None
    business_key: str | None = None
    org_id: str | None = None
    org_slug: str | None = None
    workspace_id: str | None = None
    project_id: str | None = None

    @classmethod
    def orphan(cls, resource: CloudResource, reason: OrphanReason, org_slug: str | None) -> Finding:
        return cls(problem="orphan", reason=reason, business_key=resource.business_key,
                   **resource.model_dump(exclude={"org_slug"}), org_slug=resource.org_slug or org_slug)

    def resource(self) -> CloudResource:
        return CloudResource.model_validate(self.model_dump(include=set(CloudResource.model_fields)))


class Deletion(BaseModel):
    kind: ResourceKind
    cloud_id: str
    org_id: str | None = None
    outcome: Literal["deleted", "already_gone", "no_longer_orphaned", "failed"]
    error: str | None = None


class DeleteBudget(BaseModel):
    """Deletion is allowed only if the orphans are within both caps."""

    orphans: int
    fleet_size: int  # every managed resource that exists, of all kinds, whatever the org filter
    max_deletes: int
    max_delete_fraction: float

    @computed_field
    @property
    def within_caps(self) -> bool:
        return self.orphans <= self.max_deletes and self.orphans <= self.max_delete_fraction * max(self.fleet_size, 1)


class ReconcileInput(BaseModel):
    delete: bool = False
    max_deletes: int = Field(default=10, ge=0)
    max_delete_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    # Limit orphans and drift to these orgs (None: all).
    org_ids: list[str] | None = None


class ReconcileReport(BaseModel):
    id: int | None = None
    workflow_id: str
    run_id: str
    started_at: datetime
    finished_at: datetime | None = None
    dry_run: bool
    org_ids: list[str] | None = None
    budget: DeleteBudget
    # Deletion was asked for and refused because the orphans exceed a cap (a dry run tells
    # whether it would be by ``budget.within_caps``).
    cap_exceeded: bool = False
    findings: list[Finding] = []
    deleted: list[Deletion] = []

    @property
    def orphans(self) -> list[Finding]:
        return [f for f in self.findings if f.problem == "orphan"]

    @property
    def drift(self) -> list[Finding]:
        return [f for f in self.findings if f.problem == "drift"]


def orphan_reason(resource: CloudResource, orgs: Mapping[str, str], ledger: Mapping[str, LedgerEntry],
                  workspace_ids: set[str] | frozenset[str]) -> OrphanReason | None:
    """Why an existing resource is an orphan, or None if it is accounted for. Pure."""
    if resource.org_id and resource.org_id not in orgs:
        return "org_missing"
    entry = ledger.get(resource.business_key) if resource.business_key else None
    if entry is None:
        return "unrecorded"
    if entry.status == "deleted":
        return "ledger_deleted"
    if resource.kind == "ec2_instance" and resource.workspace_id not in workspace_ids:
        return "workspace_missing"
    return None


def org_of_name(name: str) -> tuple[str | None, str | None]:
    """(org id, slug) from a ``resource_name``, or (None, None) if it is not one."""
    match = _RESOURCE_NAME.match(name)
    return (f"org_{match['hex']}", match["slug"]) if match else (None, None)


# --- activities ------------------------------------------------------------------------------

def make_neon_client(settings: Settings) -> NeonAPI:
    return TimedNeonAPI(settings.neon_api_key.get_secret_value(), base_url=settings.neon_base_url,
                        timeout=settings.neon_request_timeout_seconds)


def _tags(item: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in item.get("Tags", [])}


class ReconcileActivities:
    def __init__(self, settings: Settings, repo: ReconcileRepo, ec2_client_factory: Callable[[], Any] | None = None,
                 neon_client_factory: Callable[[], NeonAPI] | None = None):
        self._settings = settings
        self._repo = repo
        self._ec2 = (ec2_client_factory or (lambda: make_ec2_client(settings)))()
        self._neon_factory = neon_client_factory or (lambda: make_neon_client(settings))

    async def _ec2_call(self, method: str, **kwargs: Any) -> dict:
        return await call_ec2(self._ec2, method, **kwargs)

    async def _ec2_pages(self, method: str, key: str, **kwargs: Any) -> list[dict]:
        def collect() -> list[dict]:
            return [item for page in self._ec2.get_paginator(method).paginate(**kwargs) for item in page[key]]
        return await call_in_thread(classify, collect)

    # -- inventory ----------------------------------------------------------------------------

    @activity.defn
    async def inventory_aws(self) -> Inventory:
        """Live instances and security groups tagged ``tenantflow:managed=true``."""
        managed = {"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}
        reservations = await self._ec2_pages("describe_instances", "Reservations", Filters=[
            managed, {"Name": "instance-state-name", "Values": _INSTANCE_STATES}])
        groups = await self._ec2_pages("describe_security_groups", "SecurityGroups", Filters=[managed])
        instances = [
            CloudResource(kind="ec2_instance", cloud_id=i["InstanceId"], name=tags.get("Name"),
                          org_id=tags.get(ORG_ID_TAG), org_slug=tags.get(ORG_SLUG_TAG),
                          workspace_id=tags.get(WORKSPACE_TAG))
            for r in reservations for i in r["Instances"] for tags in [_tags(i)]
        ]
        security_groups = [
            CloudResource(kind="security_group", cloud_id=g["GroupId"], name=g["GroupName"],
                          org_id=tags.get(ORG_ID_TAG), org_slug=tags.get(ORG_SLUG_TAG))
            for g in groups for tags in [_tags(g)]
        ]
        activity.logger.info("AWS inventory", extra={"instances": len(instances),
                                                     "security_groups": len(security_groups)})
        return Inventory(resources=instances + security_groups)

    @activity.defn
    async def inventory_neon(self) -> Inventory:
        """``tf-`` branches of the platform project and ``tf-`` projects (never the platform's own)."""
        client = self._neon_factory()
        platform = self._settings.neon_project_id
        resources: list[CloudResource] = []
        if platform:
            try:
                async for branches in branch_pages(client, platform):
                    resources += [self._neon_resource("neon_branch", b["id"], b["name"], platform)
                                  for b in branches if b["name"].startswith(NAME_PREFIX)]
            except NeonNotFound as err:
                raise permanent("NeonProjectNotFound", f"Neon project {platform} not found") from err
        async for projects in project_pages(client):
            resources += [self._neon_resource("neon_project", p["id"], p["name"], p["id"])
                          for p in projects if p["name"].startswith(NAME_PREFIX) and p["id"] != platform]
        activity.logger.info("Neon inventory", extra={
            "branches": sum(r.kind == "neon_branch" for r in resources),
            "projects": sum(r.kind == "neon_project" for r in resources)})
        return Inventory(resources=resources)

    @staticmethod
    def _neon_resource(kind: ResourceKind, cloud_id: str, name: str, project_id: str) -> CloudResource:
        org_id, slug = org_of_name(name)
        return CloudResource(kind=kind, cloud_id=cloud_id, name=name, org_id=org_id, org_slug=slug,
                             project_id=project_id)

    @activity.defn
    async def read_records(self, req: RecordsRequest) -> Records:
        found = await self._repo.records(business_keys=req.business_keys, org_ids=req.org_ids,
                                         workspace_ids=req.workspace_ids, created_in_orgs=req.created_in_orgs)
        return Records(orgs=found["orgs"], ledger=[LedgerEntry.model_validate(r) for r in found["ledger"]],
                       workspace_ids=found["workspaces"])

    # -- deletion -----------------------------------------------------------------------------

    @activity.defn
    async def delete_orphan(self, orphan: Finding) -> Deletion:
        """Delete one orphan if it still is one; already gone is success. Ledger and audit follow."""
        resource = orphan.resource()
        reason = await self._current_reason(resource)
        if reason is None:
            activity.logger.info("no longer an orphan", extra={"kind": resource.kind, "cloud_id": resource.cloud_id})
            return Deletion(kind=resource.kind, cloud_id=resource.cloud_id, org_id=resource.org_id,
                            outcome="no_longer_orphaned")
        delete = {"ec2_instance": self._terminate_instance, "security_group": self._delete_security_group,
                  "neon_branch": self._delete_neon_branch, "neon_project": self._delete_neon_project}[resource.kind]
        outcome = "already_gone" if await delete(resource) else "deleted"
        await self._repo.record_deletion(
            kind=resource.kind, cloud_id=resource.cloud_id, business_key=resource.business_key,
            org_id=resource.org_id, org_slug=orphan.org_slug, outcome=outcome,
            detail={"reason": reason, "name": resource.name, "workflow_id": activity.info().workflow_id})
        activity.logger.info("orphan deleted", extra={"kind": resource.kind, "cloud_id": resource.cloud_id,
                                                      "org_id": resource.org_id, "reason": reason, "outcome": outcome})
        return Deletion(kind=resource.kind, cloud_id=resource.cloud_id, org_id=resource.org_id, outcome=outcome)

    async def _current_reason(self, resource: CloudResource) -> OrphanReason | None:
        """Re-checked right before deleting: the records may have changed since the comparison."""
        key = resource.business_key
        found = await self._repo.records(
            business_keys=[key] if key else [], org_ids=[resource.org_id] if resource.org_id else [],
            workspace_ids=[resource.workspace_id] if resource.workspace_id else [], created_in_orgs=[])
        ledger = {r["business_key"]: LedgerEntry.model_validate(r) for r in found["ledger"]}
        return orphan_reason(resource, found["orgs"], ledger, set(found["workspaces"]))

    async def _terminate_instance(self, resource: CloudResource) -> bool:
        """Terminate and wait until terminated; True if it already was."""
        state = await self._instance_state(resource.cloud_id)
        if state == "terminated":
            return True
        try:
            await self._ec2_call("terminate_instances", InstanceIds=[resource.cloud_id])
        except ApplicationError as err:
            if err.type != "InvalidInstanceID.NotFound":
                raise
            return True
        delay = 0.2
        while (state := await self._instance_state(resource.cloud_id)) != "terminated":
            activity.heartbeat(state)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return False

    async def _instance_state(self, instance_id: str) -> str:
        try:
            found = (await self._ec2_call("describe_instances", InstanceIds=[instance_id]))["Reservations"]
        except ApplicationError as err:
            # Terminated instances eventually vanish from EC2: gone is as good as terminated.
            if err.type == "InvalidInstanceID.NotFound":
                return "terminated"
            raise
        return found[0]["Instances"][0]["State"]["Name"] if found else "terminated"

    async def _delete_security_group(self, resource: CloudResource) -> bool:
        # DependencyViolation (instances still draining) is classified retryable.
        try:
            await self._ec2_call("delete_security_group", GroupId=resource.cloud_id)
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

    # -- report -------------------------------------------------------------------------------

    @activity.defn
    async def save_report(self, report: ReconcileReport) -> ReconcileReport:
        report_id = await self._repo.save_report(
            workflow_id=report.workflow_id, run_id=report.run_id, started_at=report.started_at,
            finished_at=report.finished_at or report.started_at, dry_run=report.dry_run,
            cap_exceeded=report.cap_exceeded,
            findings=[f.model_dump(mode="json") for f in report.findings],
            deleted=[d.model_dump(mode="json") for d in report.deleted],
            detail={"org_ids": report.org_ids, "budget": report.budget.model_dump(mode="json")},
        )
        activity.logger.info("reconcile report stored", extra={
            "report_id": report_id, "orphans": len(report.orphans), "drift": len(report.drift),
            "deleted": len(report.deleted), "dry_run": report.dry_run, "cap_exceeded": report.cap_exceeded})
        return report.model_copy(update={"id": report_id})
