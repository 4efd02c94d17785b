"""ValidateOrgNetworkWorkflow: whether an org's VPC and subnets exist in EC2, asked by the API before
it accepts the org. The API holds no cloud credentials, so the worker answers; the API waits for
the answer (``domain.operations.network_check_start`` bounds the run)."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ec2 import Ec2Activities
    from domain.validate_org_network import NetworkVerdict, OrgNetwork
    from workflows.common import CALL_TIMEOUT, run_activity


@workflow.defn
class ValidateOrgNetworkWorkflow:
    @workflow.run
    async def run(self, network: OrgNetwork) -> NetworkVerdict:
        return await run_activity(
            Ec2Activities.check_org_network,
            network,
            f"check {network.vpc_id} and its subnets",
            # Someone waits for the answer: throttling is retried only briefly.
            deadline=CALL_TIMEOUT,
        )
