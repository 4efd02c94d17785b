"""The demo the run command shows: a VPC in moto and an org onboarded through the real API."""

from __future__ import annotations

import sys
from typing import TextIO

import boto3

from starter import ApiError, OperatorClient, follow_org

DEMO_VPC_TAG = "tenantflow-demo-vpc"


def ensure_demo_network(endpoint_url: str, region: str) -> tuple[str, list[str]]:
    """A VPC with two subnets, found by tag so that a restarted stack reuses it."""
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=endpoint_url,
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    found = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [DEMO_VPC_TAG]}])["Vpcs"]
    if found:
        vpc_id = found[0]["VpcId"]
    else:
        vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16", TagSpecifications=[
            {"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": DEMO_VPC_TAG}]}])["Vpc"]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    if not subnets:
        for i, zone in enumerate((f"{region}a", f"{region}b")):
            ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.42.{i}.0/24", AvailabilityZone=zone)
        subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    return vpc_id, sorted(s["SubnetId"] for s in subnets)


def onboard_demo_org(client: OperatorClient, slug: str, vpc_id: str, subnet_ids: list[str],
                     out: TextIO = sys.stdout) -> dict:
    try:
        org = client.org(slug)
    except ApiError as err:
        if err.status != 404:
            raise
        org = None
    if org is not None and org["status"] == "active":
        out.write(f"demo org '{slug}' is already active (saved state reused): {org['id']}\n")
        return org
    if org is None:
        created = client.onboard(name="Demo Org", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnet_ids)
        out.write(f"onboarding demo org '{slug}': {created['id']}\n")
    return follow_org(client, slug, out)
