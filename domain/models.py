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


class Progress(BaseModel):
    """Live progress of a workflow, answered by its ``progress`` query."""

    operation: str
    step: str
    steps_done: int
    steps_total: int
    status: str
    failure_reason: str | None = None


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


class OrgFailure(BaseModel):
    org_id: str
    slug: str
    reason: str


def resource_name(slug: str, org_id: str) -> str:
    """Name of an org's Neon branch/project and security group: found by it, unique per org."""
    return f"tf-{slug}-{org_id.removeprefix('org_')}"
