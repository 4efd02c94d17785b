"""AWS EC2: network validation and the per-org security group (TCP 443 from the platform only).

boto3 is blocking, so calls run in a thread. Lookups go by name and tag, never by ClientToken,
so that a retried activity finds what an earlier attempt created (moto ignores ClientToken).
"""

from __future__ import annotations

from typing import Any, Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError
from temporalio import activity

from activities.errors import actor, call_in_thread, permanent, transient
from db.ledger import Ledger
from domain.models import NetworkCheckInput, SecurityGroup, SecurityGroupInput, resource_name
from domain.settings import Settings

_TRANSIENT_CODES = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "ServiceUnavailable", "Unavailable",
    "InternalError", "InternalFailure", "DependencyViolation", "IncorrectInstanceState",
}
MANAGED_TAG = "tenantflow:managed"
ORG_ID_TAG = "tenantflow:org-id"
ORG_SLUG_TAG = "tenantflow:org-slug"


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "Unknown")


def classify(err: Exception) -> Exception:
    if isinstance(err, ClientError):
        code = error_code(err)
        message = err.response.get("Error", {}).get("Message", str(err))[:300]
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return transient(code, f"EC2 {code}: {message}")
        return permanent(code, f"EC2 {code}: {message}")
    if isinstance(err, (EndpointConnectionError, BotoCoreError)):
        return transient("AwsUnavailable", f"AWS unreachable: {type(err).__name__}")
    if isinstance(err, ResponseParserError):
        # An error answer that is not AWS's XML, such as a proxy's or a crashed handler's HTML 500.
        return transient("AwsBadResponse", f"AWS answered with an unreadable error: {str(err)[:200]}")
    return err


async def call_ec2(client: Any, method: str, **kwargs: Any) -> dict:
    """One boto3 EC2 call off the event loop, its failure classified for Temporal's retries."""
    return await call_in_thread(classify, getattr(client, method), **kwargs)


def make_ec2_client(settings: Settings) -> Any:
    return boto3.client(
        "ec2",
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        # Temporal owns retries; botocore's own would hide throttling from the workflow history.
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


def org_tags(org_id: str, slug: str, name: str) -> list[dict[str, str]]:
    return [
        {"Key": "Name", "Value": name},
        {"Key": MANAGED_TAG, "Value": "true"},
        {"Key": ORG_ID_TAG, "Value": org_id},
        {"Key": ORG_SLUG_TAG, "Value": slug},
    ]


class Ec2Activities:
    def __init__(self, settings: Settings, ledger: Ledger, client_factory: Callable[[], Any] | None = None):
        self._settings = settings
        self._ledger = ledger
        self._ec2 = (client_factory or (lambda: make_ec2_client(settings)))()

    async def _call(self, method: str, **kwargs: Any) -> dict:
        return await call_ec2(self._ec2, method, **kwargs)

    @activity.defn
    async def validate_network(self, req: NetworkCheckInput) -> None:
        """The VPC exists and every subnet exists inside it; otherwise fail for good."""
        await self._call("describe_vpcs", VpcIds=[req.vpc_id])
        subnets = (await self._call("describe_subnets", SubnetIds=req.subnet_ids))["Subnets"]
        outside = sorted(s["SubnetId"] for s in subnets if s["VpcId"] != req.vpc_id)
        if outside:
            raise permanent("SubnetNotInVpc", f"subnets {', '.join(outside)} are not in {req.vpc_id}")

    async def _find_group(self, name: str, vpc_id: str) -> dict | None:
        groups = (await self._call("describe_security_groups", Filters=[
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]))["SecurityGroups"]
        return groups[0] if groups else None

    @activity.defn
    async def ensure_security_group(self, req: SecurityGroupInput) -> SecurityGroup:
        """Find or create the org's group, then make its ingress exactly TCP 443 from the platform."""
        name = resource_name(req.slug, req.org_id)
        key = f"security_group:{name}"
        await self._ledger.reserve(org_id=req.org_id, org_slug=req.slug, kind="security_group",
                                   business_key=key, actor=actor())
        group = await self._find_group(name, req.vpc_id)
        if group is None:
            try:
                group_id = (await self._call(
                    "create_security_group",
                    GroupName=name,
                    Description=f"tenantflow org {req.slug}: TCP 443 from the platform only",
                    VpcId=req.vpc_id,
                    TagSpecifications=[{"ResourceType": "security-group",
                                        "Tags": org_tags(req.org_id, req.slug, name)}],
                ))["GroupId"]
            except Exception as err:
                # A concurrent or earlier attempt created it between our lookup and create.
                if getattr(err, "type", None) != "InvalidGroup.Duplicate":
                    raise
                group = await self._find_group(name, req.vpc_id)
                if group is None:
                    raise
                group_id = group["GroupId"]
        else:
            group_id = group["GroupId"]
        # Recorded before the rules are touched, so a failure below still leaves the id on file.
        await self._ledger.mark_created(key, group_id, actor=actor(), detail={"vpc_id": req.vpc_id})
        await self._enforce_ingress(group_id)
        activity.logger.info("security group ready", extra={"org_slug": req.slug, "security_group_id": group_id})
        return SecurityGroup(group_id=group_id, name=name)

    async def _enforce_ingress(self, group_id: str) -> None:
        wanted = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                  "IpRanges": [{"CidrIp": self._settings.platform_cidr, "Description": "tenantflow platform"}]}
        group = (await self._call("describe_security_groups", GroupIds=[group_id]))["SecurityGroups"][0]
        present = False
        extra = []
        for perm in group.get("IpPermissions", []):
            is_https = perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 443 and perm.get("ToPort") == 443
            for ip_range in perm.get("IpRanges", []):
                if is_https and ip_range["CidrIp"] == self._settings.platform_cidr:
                    present = True
                else:
                    extra.append({**{k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm},
                                  "IpRanges": [{"CidrIp": ip_range["CidrIp"]}]})
            for other in ("Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
                if perm.get(other):
                    extra.append({**{k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm},
                                  other: perm[other]})
        if extra:
            await self._call("revoke_security_group_ingress", GroupId=group_id, IpPermissions=extra)
        if not present:
            try:
                await self._call("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[wanted])
            except Exception as err:
                if getattr(err, "type", None) != "InvalidPermission.Duplicate":
                    raise

    @activity.defn
    async def delete_security_group(self, req: SecurityGroupInput) -> None:
        """Delete the org's group; already gone counts as deleted. Retries while instances drain."""
        name = resource_name(req.slug, req.org_id)
        key = f"security_group:{name}"
        group = await self._find_group(name, req.vpc_id)
        if group is not None:
            await self._ledger.mark_deleting(key, actor=actor())
            try:
                await self._call("delete_security_group", GroupId=group["GroupId"])
            except Exception as err:
                if getattr(err, "type", None) != "InvalidGroup.NotFound":
                    raise
        await self._ledger.mark_deleted(key, actor=actor())
        activity.logger.info("security group deleted", extra={"org_slug": req.slug})
