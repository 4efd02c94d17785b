"""Reconciliation: what exists in AWS and Neon against what the ledger and the org rows record.

Orphans are managed resources whose org row is gone, that have no ledger row, or whose ledger row
says deleted; drift is a ledger row saying ``created`` for a resource that no longer exists. The
models the reconcile workflows and activities exchange, and the rules that decide (pure).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, computed_field

from domain.resources import LedgerStatus, ResourceKind, business_key, instance_key, name_of_key
from domain.status import OrphanDeletionStatus

OrphanReason = Literal["org_missing", "unrecorded", "ledger_deleted", "workspace_missing"]
DriftReason = Literal["missing_in_cloud"]
DeletionOutcome = Literal["deleted", "already_gone", "no_longer_orphaned", "failed"]

# Instances first (they hold the security groups), Neon last. Each phase finishes before the next.
DELETE_PHASES = [
    (ResourceKind.ec2_instance,),
    (ResourceKind.security_group,),
    (ResourceKind.neon_branch, ResourceKind.neon_project),
]
# The order the inventory is read in, one kind (and one page) at a time.
INVENTORY_KINDS = [
    ResourceKind.ec2_instance,
    ResourceKind.security_group,
    ResourceKind.neon_branch,
    ResourceKind.neon_project,
]


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
        if self.kind == ResourceKind.ec2_instance:
            return instance_key(self.workspace_id) if self.workspace_id else None
        return business_key(self.kind, self.name) if self.name else None


class LedgerEntry(BaseModel):
    business_key: str
    kind: ResourceKind
    cloud_id: str | None = None
    status: LedgerStatus
    org_id: str
    org_slug: str
    updated_at: datetime


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
        return cls(
            problem="orphan",
            reason=reason,
            business_key=resource.business_key,
            **resource.model_dump(exclude={"org_slug"}),
            org_slug=resource.org_slug or org_slug,
        )

    @classmethod
    def drift(cls, entry: LedgerEntry) -> Finding:
        key_name = name_of_key(entry.business_key)
        is_instance = entry.kind == ResourceKind.ec2_instance
        return cls(
            problem="drift",
            reason="missing_in_cloud",
            kind=entry.kind,
            cloud_id=entry.cloud_id,
            business_key=entry.business_key,
            org_id=entry.org_id,
            org_slug=entry.org_slug,
            name=None if is_instance else key_name,
            workspace_id=key_name if is_instance else None,
        )

    def resource(self) -> CloudResource:
        return CloudResource.model_validate(self.model_dump(include=set(CloudResource.model_fields)))


class Deletion(BaseModel):
    kind: ResourceKind
    cloud_id: str
    org_id: str | None = None
    outcome: DeletionOutcome
    error: str | None = None


class DeleteBudget(BaseModel):
    """Deletion is allowed only if the orphans are within both caps."""

    orphans: int
    fleet_size: int  # every managed resource that exists, of all kinds, whatever the org filter
    max_deletes: int
    max_delete_fraction: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def within_caps(self) -> bool:
        return self.orphans <= self.max_deletes and self.orphans <= self.max_delete_fraction * max(self.fleet_size, 1)

    @property
    def caps_text(self) -> str:
        """The orphans against both caps, as the UI, the API and the CLI say it."""
        return (
            f"{self.orphans} orphans; at most {self.max_deletes}, and at most "
            f"{self.max_delete_fraction:.0%} of the fleet of {self.fleet_size}"
        )


class ReconcileInput(BaseModel):
    delete: bool = False
    max_deletes: int = Field(default=10, ge=0)
    max_delete_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    # Limit orphans and drift to these orgs (None: all).
    org_ids: list[str] | None = None
    # How many resources (or ledger rows) one step reads (ReconcileWorkflowV2).
    page_size: int = Field(default=500, ge=5, le=1000)


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


# -- ReconcileWorkflow (the first version: the whole inventory in one activity result) -------------


class Inventory(BaseModel):
    resources: list[CloudResource] = []


class RecordsRequest(BaseModel):
    business_keys: list[str]
    org_ids: list[str]
    workspace_ids: list[str]
    # Whose ``created`` ledger rows to return for the drift check; None: every org's.
    created_in_orgs: list[str] | None = None

    @classmethod
    def about(cls, resources: Iterable[CloudResource], created_in_orgs: list[str] | None = None) -> RecordsRequest:
        """The records that account (or fail to account) for these resources."""
        listed = list(resources)
        return cls(
            business_keys=sorted({r.business_key for r in listed if r.business_key}),
            org_ids=sorted({r.org_id for r in listed if r.org_id}),
            workspace_ids=sorted({r.workspace_id for r in listed if r.workspace_id}),
            created_in_orgs=created_in_orgs,
        )


# -- ReconcileWorkflowV2: pages and ids through history, never the whole fleet ---------------------


class InventoryPageRequest(BaseModel):
    kind: ResourceKind
    # Where the previous page ended (None: the first page).
    cursor: str | None = None
    page_size: int
    # Orphans are looked for among these orgs' resources only (None: every org's); every resource
    # listed counts towards the fleet.
    org_ids: list[str] | None = None


class InventoryPage(BaseModel):
    """One page of one kind: how many managed resources it held, and which of them are orphans."""

    listed: int
    orphans: list[Finding] = []
    next_cursor: str | None = None


class DriftPageRequest(BaseModel):
    # Ledger rows after this row id (0: from the first).
    after: int = 0
    page_size: int
    org_ids: list[str] | None = None
    # Rows changed since the run began are left out: their resource may be in the middle of a create.
    recorded_before: datetime


class DriftPage(BaseModel):
    drift: list[Finding] = []
    # The last ledger row read (None: that was the last page).
    next_after: int | None = None


class ReportPart(BaseModel):
    """A run's report, stored in parts: the first (``offset`` 0) carries everything with the first
    findings, each further part the findings from ``offset`` on."""

    report: ReconcileReport
    offset: int = 0


class ReconcileOutcome(BaseModel):
    """What ReconcileWorkflowV2 returns: the stored report's id and counts (the report itself is
    in the database, and in the ``report`` query)."""

    report_id: int
    workflow_id: str
    run_id: str
    dry_run: bool
    cap_exceeded: bool
    budget: DeleteBudget
    orphans: int
    drift: int
    deleted: int
    failed: int


# -- DeleteOrphanWorkflow: an operator deletes one orphan a report names ----------------------------

# The re-check found the resource accounted for by the records.
NOT_AN_ORPHAN = "NOT_AN_ORPHAN"


class DeleteOrphanInput(BaseModel):
    deletion_id: int  # its row in orphan_deletions, where the outcome is recorded
    report_id: int
    orphan: Finding  # as the report found it; re-checked before anything is deleted
    requested_by: str


class OrphanCheck(BaseModel):
    """A reported orphan as it is now: whether it exists, and if it is still an orphan, the
    finding to delete it by; if not, what accounts for it."""

    exists: bool
    orphan: Finding | None = None
    accounted_for: str | None = None


class OrphanDeletionResult(BaseModel):
    deletion_id: int
    kind: ResourceKind
    cloud_id: str
    status: OrphanDeletionStatus
    code: str | None = None
    reason: str | None = None


# -- rules ------------------------------------------------------------------------------------------


def orphan_reason(
    resource: CloudResource,
    orgs: Mapping[str, str],
    ledger: Mapping[str, LedgerEntry],
    workspace_ids: set[str] | frozenset[str],
) -> OrphanReason | None:
    """Why an existing resource is an orphan, or None if it is accounted for."""
    if resource.org_id and resource.org_id not in orgs:
        return "org_missing"
    entry = ledger.get(resource.business_key) if resource.business_key else None
    if entry is None:
        return "unrecorded"
    if entry.status == LedgerStatus.deleted:
        return "ledger_deleted"
    if resource.kind == ResourceKind.ec2_instance and resource.workspace_id not in workspace_ids:
        return "workspace_missing"
    return None


def accounted_for(resource: CloudResource, records: Records) -> str:
    """What the records hold about a resource ``orphan_reason`` found no reason against."""
    entry = next((e for e in records.ledger if e.business_key == resource.business_key), None)
    said = [f"its org {resource.org_id} has a row"] if resource.org_id else []
    if entry is not None:
        said.append(f"the ledger records {entry.business_key} as {entry.status.value}")
    if resource.kind == ResourceKind.ec2_instance:
        said.append(f"its workspace {resource.workspace_id} exists")
    return "no longer an orphan: " + ", ".join(said)


def find_orphans(candidates: Iterable[CloudResource], records: Records) -> list[Finding]:
    ledger = {e.business_key: e for e in records.ledger}
    workspaces = frozenset(records.workspace_ids)
    findings = []
    for resource in candidates:
        reason = orphan_reason(resource, records.orgs, ledger, workspaces)
        if reason is not None:
            entry = ledger.get(resource.business_key or "")
            findings.append(Finding.orphan(resource, reason, entry.org_slug if entry else None))
    return findings


def may_have_drifted(entry: LedgerEntry, org_ids: set[str] | None, recorded_before: datetime) -> bool:
    """A ``created`` row of a managed kind, in scope, unchanged since the inventory began (a row
    changed after it may describe a resource created after it was listed)."""
    return (
        entry.status == LedgerStatus.created
        and entry.updated_at < recorded_before
        and (org_ids is None or entry.org_id in org_ids)
    )


def find_drift(
    records: Records, existing: Iterable[CloudResource], org_ids: set[str] | None, *, recorded_before: datetime
) -> list[Finding]:
    """Ledger rows saying ``created`` for resources that do not exist."""
    present = {(r.kind, r.cloud_id) for r in existing}
    return [
        Finding.drift(entry)
        for entry in records.ledger
        if may_have_drifted(entry, org_ids, recorded_before) and (entry.kind, entry.cloud_id) not in present
    ]
