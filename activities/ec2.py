"""AWS EC2: the org's network checked, and the per-org security group (the agent port from the platform
only).

boto3 is blocking, so calls run in a thread. The group is found by name, else by the id the
ledger recorded, so that a retried activity finds what an earlier attempt created. EC2 is
eventually consistent: right after CreateSecurityGroup, lookups by name miss the group and calls
by id answer ``InvalidGroup.NotFound``; such a NotFound means "not visible yet" until the last
create attempt is older than ``ec2_consistency_window_seconds``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.consistency import settle
from activities.errors import actor, call_in_thread, permanent, transient
from db.ledger import Ledger
from domain.onboard_org import NetworkCheckInput, SecurityGroup, SecurityGroupInput
from domain.resources import LedgerStatus, ResourceKind, business_key, org_tags, resource_name
from domain.settings import Settings
from domain.validate_org_network import NetworkVerdict, OrgNetwork, network_problems

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

_TRANSIENT_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "DependencyViolation",
    "IncorrectInstanceState",
}


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


async def call_ec2(client: EC2Client, method: str, **kwargs: Any) -> dict[str, Any]:
    """One boto3 EC2 call off the event loop, its failure classified for Temporal's retries."""
    answer: dict[str, Any] = await call_in_thread(classify, getattr(client, method), **kwargs)
    return answer


async def ec2_page(
    client: EC2Client, method: str, key: str, *, cursor: str | None, page_size: int | None, **kwargs: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a Describe* list: its items and the token of the next page (None: the last)."""
    if cursor:
        kwargs["NextToken"] = cursor
    if page_size:
        kwargs["MaxResults"] = page_size
    answer = await call_ec2(client, method, **kwargs)
    return list(answer.get(key) or []), answer.get("NextToken") or None


async def call_ec2_if_found(
    client: EC2Client, not_found_code: str, method: str, **kwargs: Any
) -> dict[str, Any] | None:
    """The call's answer, or None when EC2 answers ``not_found_code``."""
    try:
        return await call_ec2(client, method, **kwargs)
    except ApplicationError as err:
        if err.type != not_found_code:
            raise
        return None


def make_ec2_client(settings: Settings) -> EC2Client:
    return boto3.client(
        "ec2",
        region_name=settings.aws_region,
        endpoint_url=settings.aws_endpoint_url,
        # Temporal owns retries; botocore's own would hide throttling from the workflow history.
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=settings.aws_read_timeout_seconds,
        ),
    )


class Ec2Activities:
    def __init__(self, settings: Settings, ledger: Ledger, client_factory: Callable[[], EC2Client] | None = None):
        self._settings = settings
        self._ledger = ledger
        self._ec2 = (client_factory or (lambda: make_ec2_client(settings)))()

    async def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return await call_ec2(self._ec2, method, **kwargs)

    async def _verdict(self, network: OrgNetwork) -> NetworkVerdict:
        # Filters, not VpcIds/SubnetIds: a missing id is then an empty answer rather than a
        # NotFound error that names one id of several.
        vpcs = (await self._call("describe_vpcs", Filters=[{"Name": "vpc-id", "Values": [network.vpc_id]}]))["Vpcs"]
        subnets = (await self._call("describe_subnets", Filters=[{"Name": "subnet-id", "Values": network.subnet_ids}]))[
            "Subnets"
        ]
        problems = network_problems(
            network, bool(vpcs), {s["SubnetId"]: s["VpcId"] for s in subnets}, self._settings.aws_region
        )
        return NetworkVerdict(problems=problems)

    @activity.defn
    async def check_org_network(self, network: OrgNetwork) -> NetworkVerdict:
        """Whether the VPC exists and every subnet exists inside it: an answer, never a failure
        (only EC2 being unreachable or throttling is retried)."""
        return await self._verdict(network)

    @activity.defn
    async def validate_network(self, req: NetworkCheckInput) -> None:
        """The VPC exists and every subnet exists inside it; otherwise fail for good."""
        verdict = await self._verdict(OrgNetwork(vpc_id=req.vpc_id, subnet_ids=req.subnet_ids))
        if not verdict.valid:
            raise permanent("InvalidNetwork", "; ".join(verdict.problems))

    async def _find_group(self, name: str, vpc_id: str) -> dict[str, Any] | None:
        groups = (
            await self._call(
                "describe_security_groups",
                Filters=[
                    {"Name": "group-name", "Values": [name]},
                    {"Name": "vpc-id", "Values": [vpc_id]},
                ],
            )
        )["SecurityGroups"]
        return groups[0] if groups else None

    async def _settle(self, check: Callable[[], Awaitable[Any]], key: str, what: str) -> Any:
        async def may_be_invisible() -> bool:
            return await self._ledger.may_be_invisible(key, self._settings.ec2_consistency_window_seconds)

        return await settle(check, may_be_invisible, what)

    async def _if_found(self, code: str, method: str, **kwargs: Any) -> dict[str, Any] | None:
        return await call_ec2_if_found(self._ec2, code, method, **kwargs)

    @activity.defn
    async def ensure_security_group(self, req: SecurityGroupInput) -> SecurityGroup:
        """Find or create the org's group, then make its ingress exactly the agent port from the
        platform."""
        name = resource_name(req.slug, req.org_id)
        key = business_key(ResourceKind.security_group, name)
        row = await self._ledger.reserve(
            org_id=req.org_id, org_slug=req.slug, kind="security_group", business_key=key, actor=actor()
        )
        group = await self._find_group(name, req.vpc_id)
        group_id = group["GroupId"] if group else row["cloud_id"]
        if group_id is None:
            await self._ledger.attempting_create(key)
            try:
                group_id = (
                    await self._call(
                        "create_security_group",
                        GroupName=name,
                        Description=f"tenantflow org {req.slug}: TCP {self._settings.agent_port} "
                        "from the platform only",
                        VpcId=req.vpc_id,
                        TagSpecifications=[
                            {"ResourceType": "security-group", "Tags": org_tags(req.org_id, req.slug, name)}
                        ],
                    )
                )["GroupId"]
            except ApplicationError as err:
                if err.type != "InvalidGroup.Duplicate":
                    raise
                # An earlier attempt created it (its answer lost); lookups may not show it yet.
                group = await self._settle(lambda: self._find_group(name, req.vpc_id), key, f"group {name}")
                if group is None:
                    raise
                group_id = group["GroupId"]
        # Recorded before the rules are touched, so a failure below still leaves the id on file.
        await self._ledger.mark_created(key, group_id, actor=actor(), detail={"vpc_id": req.vpc_id})
        found = await self._settle(
            lambda: self._if_found("InvalidGroup.NotFound", "describe_security_groups", GroupIds=[group_id]),
            key,
            f"group {group_id}",
        )
        if found is None:
            raise permanent("SecurityGroupGone", f"security group {group_id} of {req.slug} no longer exists")
        await self._enforce_ingress(group_id, found["SecurityGroups"][0])
        activity.logger.info("security group ready", extra={"org_slug": req.slug, "security_group_id": group_id})
        return SecurityGroup(group_id=group_id, name=name)

    async def _enforce_ingress(self, group_id: str, group: dict[str, Any]) -> None:
        port = self._settings.agent_port
        wanted = {
            "IpProtocol": "tcp",
            "FromPort": port,
            "ToPort": port,
            "IpRanges": [{"CidrIp": self._settings.platform_cidr, "Description": "tenantflow platform"}],
        }
        present = False
        extra = []
        for perm in group.get("IpPermissions", []):
            is_agent_port = (
                perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == port and perm.get("ToPort") == port
            )
            for ip_range in perm.get("IpRanges", []):
                if is_agent_port and ip_range["CidrIp"] == self._settings.platform_cidr:
                    present = True
                else:
                    extra.append(
                        {
                            **{k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm},
                            "IpRanges": [{"CidrIp": ip_range["CidrIp"]}],
                        }
                    )
            for other in ("Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
                if perm.get(other):
                    extra.append(
                        {**{k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}, other: perm[other]}
                    )
        if extra:
            await self._call("revoke_security_group_ingress", GroupId=group_id, IpPermissions=extra)
        if not present:
            try:
                await self._call("authorize_security_group_ingress", GroupId=group_id, IpPermissions=[wanted])
            except ApplicationError as err:
                if err.type != "InvalidPermission.Duplicate":
                    raise

    @activity.defn
    async def delete_security_group(self, req: SecurityGroupInput) -> None:
        """Delete the org's group; gone counts as deleted once EC2's answer can be believed.
        Retries while instances drain (DependencyViolation)."""
        name = resource_name(req.slug, req.org_id)
        key = business_key(ResourceKind.security_group, name)
        row = await self._ledger.get(key)
        group = await self._find_group(name, req.vpc_id)
        # Not visible by name: the id on file, unless the ledger records it deleted already.
        group_id = (
            group["GroupId"] if group else (row["cloud_id"] if row and row["status"] != LedgerStatus.deleted else None)
        )
        if group_id is not None:
            await self._ledger.mark_deleting(key, actor=actor())
            await self._settle(
                lambda: self._if_found("InvalidGroup.NotFound", "delete_security_group", GroupId=group_id),
                key,
                f"group {group_id}",
            )
        elif row and row["status"] == LedgerStatus.pending:
            # A create was attempted and nothing is on file: it may yet appear under its name.
            late = await self._settle(lambda: self._find_group(name, req.vpc_id), key, f"group {name}")
            if late is not None:
                await self._ledger.mark_deleting(key, actor=actor())
                await self._call("delete_security_group", GroupId=late["GroupId"])
        if row:
            await self._ledger.mark_deleted(key, actor=actor())
        activity.logger.info("security group deleted", extra={"org_slug": req.slug})
