"""ValidateOrgNetworkWorkflow's input and answer, and the rule that turns what EC2 knows into it.

Availability zones are not checked: one subnet is a valid network, and workspaces are spread over
the org's subnets (by workspace id), not over zones; subnets in distinct zones are the operator's
choice for zone resilience.
"""

from __future__ import annotations

from pydantic import BaseModel


class OrgNetwork(BaseModel):
    """The VPC and subnets an org's creation names."""

    vpc_id: str
    subnet_ids: list[str]


class NetworkVerdict(BaseModel):
    """What is wrong with the network, one problem per wrong id (empty: valid)."""

    problems: list[str] = []

    @property
    def valid(self) -> bool:
        return not self.problems


def network_problems(network: OrgNetwork, vpc_exists: bool, subnet_vpcs: dict[str, str], region: str) -> list[str]:
    """Each wrong id and why, in the request's order. ``subnet_vpcs``: the VPC of every subnet
    that exists."""
    problems = [] if vpc_exists else [f"vpc {network.vpc_id} does not exist in {region}"]
    for subnet_id in network.subnet_ids:
        owner = subnet_vpcs.get(subnet_id)
        if owner is None:
            problems.append(f"subnet {subnet_id} does not exist in {region}")
        elif owner != network.vpc_id:
            problems.append(f"subnet {subnet_id} belongs to {owner} not {network.vpc_id}")
    return problems
