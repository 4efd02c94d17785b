"""Pydantic models shared by the API, workflows and activities: one input/result per call."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# Slugs become subdomains, Neon branch names and AWS tags: DNS-label rules, 3 to 40 chars.
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$")]
# Lenient on the suffix alphabet on purpose: the tutorial's sample ids are not pure hex. Whether the
# VPC and subnets exist is checked by the onboarding workflow's first step.
VpcId = Annotated[str, StringConstraints(pattern=r"^vpc-[0-9a-z]{6,17}$")]
SubnetId = Annotated[str, StringConstraints(pattern=r"^subnet-[0-9a-z]{6,17}$")]
OrgName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]
Plan = Literal["free", "starter", "pro", "enterprise"]
NeonMode = Literal["branch", "project"]


def _unique(values: list[str]) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError("subnet_ids must not repeat")
    return values


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgCreateRequest(Strict):
    name: OrgName
    slug: Slug
    plan: Plan
    vpc_id: VpcId
    subnet_ids: Annotated[list[SubnetId], Field(min_length=1, max_length=16), AfterValidator(_unique)]

    def request_hash(self) -> str:
        """Identifies the request, so a repeated POST is recognised and a different one refused."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


class OrgStatus(StrEnum):
    provisioning = "provisioning"
    active = "active"
    failed = "failed"
    suspending = "suspending"
    suspended = "suspended"
    resuming = "resuming"
    deleting = "deleting"
    deleted = "deleted"


class Progress(BaseModel):
    """Live progress of a workflow, answered by its ``progress`` query."""

    operation: str
    step: str
    steps_done: int
    steps_total: int
    status: str
    failure_reason: str | None = None
    # A teardown step failed for good and waits for an operator's ``retry`` or ``abandon``.
    waiting_for_operator: bool = False


# --- onboarding workflow ---------------------------------------------------------------------

class OnboardOrgInput(BaseModel):
    org_id: str
    slug: str
    name: str
    plan: str
    vpc_id: str
    subnet_ids: list[str]
    neon_mode: NeonMode = "branch"


class OnboardOrgResult(BaseModel):
    org_id: str
    slug: str
    status: OrgStatus
    neon_project_id: str | None = None
    neon_branch_id: str | None = None
    security_group_id: str | None = None
    failure_reason: str | None = None
    # The tenant database costs extra on the Neon plan (a branch beyond the plan's included ones).
    cost_warning: str | None = None


# --- activity inputs and results -------------------------------------------------------------

class OrgRef(BaseModel):
    org_id: str
    slug: str


class NetworkCheckInput(BaseModel):
    org_id: str
    slug: str
    vpc_id: str
    subnet_ids: list[str]


class TenantDatabaseInput(BaseModel):
    org_id: str
    slug: str
    mode: NeonMode


class TenantDatabase(BaseModel):
    mode: NeonMode
    name: str
    project_id: str
    branch_id: str | None = None
    # Operations still to wait for; empty when the database already existed.
    operation_ids: list[str] = []
    # Set when the branch is beyond the Neon plan's included branches and is billed as an extra.
    cost_warning: str | None = None


class NeonOperationsInput(BaseModel):
    project_id: str
    operation_ids: list[str]


class SecurityGroupInput(BaseModel):
    org_id: str
    slug: str
    vpc_id: str


class SecurityGroup(BaseModel):
    group_id: str
    name: str


class OrgResources(BaseModel):
    org_id: str
    slug: str
    neon_project_id: str | None = None
    neon_branch_id: str | None = None
    security_group_id: str | None = None
    cost_warning: str | None = None


class OrgFailure(BaseModel):
    org_id: str
    slug: str
    reason: str


def resource_name(slug: str, org_id: str) -> str:
    """Name of an org's Neon branch/project and security group: found by it, unique per org."""
    return f"tf-{slug}-{org_id.removeprefix('org_')}"


# --- workspaces ------------------------------------------------------------------------------

WorkspaceName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
Runtime = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{1,31}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")]
Role = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
Tier = Annotated[int, Field(strict=True, ge=1, le=4)]

# Documented tier -> EC2 instance type mapping (README "Workspaces").
TIER_INSTANCE_TYPES = {1: "t3.small", 2: "t3.medium", 3: "t3.large", 4: "t3.xlarge"}


class WorkspaceCreateRequest(Strict):
    name: WorkspaceName
    role: Role
    runtime: Runtime
    tier: Tier
    model: ModelName


class OrgQuotaUpdate(Strict):
    max_workspaces: Annotated[int, Field(strict=True, ge=0, le=10_000)] | None = None
    max_tier: Tier | None = None
    billing_plan: Plan | None = None


class KeyCreateRequest(Strict):
    name: KeyName


# Older agents still send the URL they believe they serve on; it is accepted and ignored, because
# the platform dials the instance's private IP on the agent port (an agent-chosen URL made the
# worker fetch any host a token holder named).
IgnoredAgentUrl = Annotated[str, StringConstraints(max_length=500)] | None


class AgentRegisterRequest(Strict):
    workspace_id: Annotated[str, StringConstraints(pattern=r"^ws_[0-9a-f]{12}$")]
    agent_url: IgnoredAgentUrl = None


class AgentHeartbeatRequest(Strict):
    workspace_id: Annotated[str, StringConstraints(pattern=r"^ws_[0-9a-f]{12}$")]
    # Bounded so that sums over a fleet stay inside Postgres bigint / double precision.
    tasks_handled: Annotated[int, Field(strict=True, ge=0, le=2**40)]
    avg_response_time_ms: Annotated[float, Field(ge=0, le=86_400_000)] | None = None
    agent_url: IgnoredAgentUrl = None


class WorkspaceStatus(StrEnum):
    provisioning = "provisioning"
    running = "running"
    stopped = "stopped"
    failed = "failed"
    deleting = "deleting"
    deleted = "deleted"


class ProvisionWorkspaceInput(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str
    name: str
    role: str
    runtime: str
    tier: int
    model: str
    instance_type: str
    subnet_id: str
    security_group_id: str
    ami_id: str
    platform_url: str
    registration_timeout_seconds: float = 600
    agent_check_timeout_seconds: float = 120


class ProvisionWorkspaceResult(BaseModel):
    workspace_id: str
    status: WorkspaceStatus
    instance_id: str | None = None
    agent_url: str | None = None
    failure_reason: str | None = None


class AgentRegistration(BaseModel):
    # Histories recorded before the platform derived agent URLs carry the agent's own.
    agent_url: str | None = None


class InstanceRef(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str
    instance_id: str | None = None


class AgentCardCheck(BaseModel):
    workspace_id: str
    name: str
    agent_url: str


class WorkspaceRef(BaseModel):
    workspace_id: str


class WorkspaceInstance(BaseModel):
    workspace_id: str
    instance_id: str
    # http://<private IP>:<agent port>, derived by the platform (None in histories from before).
    agent_url: str | None = None


class WorkspaceFailure(BaseModel):
    workspace_id: str
    reason: str


class DeprovisionWorkspaceInput(BaseModel):
    workspace_id: str
    org_id: str
    org_slug: str


class WorkflowToStop(BaseModel):
    workflow_id: str


# --- org lifecycle: suspend, resume, hard delete ----------------------------------------------

class SuspendRequest(Strict):
    reason: Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")] | None = None
    stop_instances: bool = False


class DeleteOrgRequest(Strict):
    confirm: str | bool
    delete_workspaces: bool = False


class SuspendOrgInput(BaseModel):
    org_id: str
    slug: str
    reason: str | None = None
    stop_instances: bool = False


class ResumeOrgInput(BaseModel):
    org_id: str
    slug: str


class HardDeleteOrgInput(BaseModel):
    """Everything the cascade needs, so that it can re-run (or be reset) after the row is gone."""

    org_id: str
    slug: str
    vpc_id: str
    neon_mode: NeonMode
    actor: str = "operator"


class OrgStatusChange(BaseModel):
    org_id: str
    slug: str
    status: str
    reason: str | None = None
    # Only change the status when it is currently one of these (empty: any).
    only_from: list[str] = []


class OrgTransition(BaseModel):
    """A status change of the org entity: applied only while the status is one of ``only_from``.
    ``operation``, ``failure_reason`` and ``status_reason`` are written as given (None clears them)."""

    org_id: str
    status: OrgStatus
    only_from: list[OrgStatus]
    actor: str
    operation: str | None = None
    workflow_id: str | None = None
    failure_reason: str | None = None
    status_reason: str | None = None


class WorkspaceQuery(BaseModel):
    org_id: str
    statuses: list[str]


class WorkspaceInstances(BaseModel):
    org_id: str
    org_slug: str
    workspace_ids: list[str]


class AuditEntry(BaseModel):
    org_id: str
    slug: str
    action: str
    outcome: str = "ok"
    actor: str = "workflow"
    detail: dict = {}


class PurgeReceipt(BaseModel):
    org_id: str
    slug: str
    deleted_at: str
    workflow_id: str | None = None
    resources: list[dict]
    workspaces: list[dict]
    keys_revoked: int
