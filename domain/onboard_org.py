"""OnboardOrgWorkflow's input and result, and what its steps take and return (the teardown's
steps reuse the database and security-group ones)."""

from __future__ import annotations

from pydantic import BaseModel

from domain.resources import NeonMode
from domain.status import OrgStatus


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
    # The tenant database costs extra on the Neon plan (a branch beyond the plan's included ones).
    cost_warning: str | None = None


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
