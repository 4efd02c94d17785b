"""Regenerate the committed workflow histories that tests/test_replay.py replays.

    .venv/bin/python tests/record_histories.py            # writes tests/histories/<workflow>-<case>.json

Starts the whole local stack (Temporal dev server, Postgres, moto, local Neon, boot emulator, worker
and API) on free ports in a temporary directory, runs every workflow type through its happy path
and its failure paths, and saves each history as JSON (the case names say what era of the code
recorded them; the files recorded before the org entity workflow keep their plain names). Regenerate
only on purpose: after a change
that is *meant* to alter histories (behind ``workflow.patched`` or a new workflow type), add new
files next to the old ones rather than overwriting them, so that the old histories keep proving
that running workflows still replay. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from psycopg.rows import dict_row  # noqa: E402
from psycopg_pool import AsyncConnectionPool  # noqa: E402
from temporalio.client import WorkflowFailureError  # noqa: E402

from api.workspaces import provision_input  # noqa: E402
from db import audit  # noqa: E402
from db.orgs import OrgRepo  # noqa: E402
from db.workspaces import WorkspaceRepo  # noqa: E402
from domain.operations import (  # noqa: E402
    Operation,
    deprovision_workflow_id,
    network_check_workflow_id,
    operation_workflow_id,
    org_workflow_id,
    provision_workflow_id,
)
from domain.resources import TIER_INSTANCE_TYPES  # noqa: E402
from domain.validate_org_network import OrgNetwork  # noqa: E402
from starter import ApiError, TenantClient  # noqa: E402
from tools.soak import StackHarness, wait_for  # noqa: E402

HISTORIES = Path(__file__).resolve().parent / "histories"
WS = {"role": "Replay worker", "runtime": "hermes", "tier": 1, "model": "claude-sonnet-4"}


async def record(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="tf-record-") as tmp:
        h = StackHarness(Path(tmp) / "state", agent_heartbeat_interval_seconds=1.0)
        h.start()
        try:
            client = await h.temporal()
            op = h.operator
            vpc_id, subnets = h.network()

            async def save(workflow: str, case: str, workflow_id: str, *, expect_failure: bool = False) -> None:
                handle = client.get_workflow_handle(workflow_id)
                try:
                    await asyncio.wait_for(handle.result(), 180)
                    assert not expect_failure, f"{workflow_id} was expected to fail"
                except WorkflowFailureError:
                    assert expect_failure, f"{workflow_id} failed unexpectedly"
                history = await handle.fetch_history()
                path = out_dir / f"{workflow}-{case}.json"
                # Compact: the files are committed and replayed in CI.
                path.write_text(json.dumps(json.loads(history.to_json()), separators=(",", ":")) + "\n")
                written.append(path)
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                print(f"  {shown}  ({len(history.events)} events)", flush=True)

            def onboard(slug: str) -> dict:
                op.onboard(name=f"Replay {slug}", slug=slug, plan="pro", vpc_id=vpc_id, subnet_ids=subnets)
                return wait_for(lambda: op.org(slug), lambda o: o["status"] in ("active", "failed"), 120, slug)

            tag = uuid.uuid4().hex[:6]
            # 1. Onboarding, happy path (a child of the org's entity workflow).
            org = onboard(f"rh{tag}")
            assert org["status"] == "active", org
            await save("OnboardOrgWorkflow", "child-happy", org["workflow_id"])
            # 1b. The API's network checks before it accepts an org: that one, and one it refuses.
            network = OrgNetwork(vpc_id=vpc_id, subnet_ids=subnets)
            await save("ValidateOrgNetworkWorkflow", "valid", network_check_workflow_id(org["slug"], network))
            refused, unknown = f"rv{tag}", network.model_copy(update={"vpc_id": "vpc-0000000000"})
            try:
                op.onboard(name=f"Replay {refused}", slug=refused, plan="pro", **unknown.model_dump())
                raise AssertionError("an unknown VPC was accepted")
            except ApiError as err:
                assert err.status == 400, err
            await save("ValidateOrgNetworkWorkflow", "unknown-vpc", network_check_workflow_id(refused, unknown))

            # 2. Onboarding with a permanent Neon fault: compensation, org failed.
            h.neon_fault("/projects/{project_id}/branches", 403, method="POST", count=-1)
            bad = onboard(f"rf{tag}")
            h.clear_neon_faults()
            assert bad["status"] == "failed", bad
            await save(
                "OnboardOrgWorkflow", "child-neon-permanent-fault-compensates", bad["workflow_id"], expect_failure=True
            )

            # 3. Provisioning, happy path: the boot emulator boots the agent, it registers, answers.
            key = op.mint_key(org["slug"], "replay")["key"]
            tenant = TenantClient(h.api_url, key)
            ws = tenant.create_workspace(name="agent-ok", **WS)
            running = wait_for(
                lambda: tenant.workspace(ws["id"]), lambda w: w["status"] in ("running", "failed"), 180, ws["id"]
            )
            assert running["status"] == "running", running
            await save("ProvisionWorkspaceWorkflow", "derived-agent-url", provision_workflow_id(ws["id"]))

            # 4. Provisioning whose agent never registers, with a short timeout: cleanup.
            # The reservation appends to the org's audit chain, keyed like the stack's own records.
            audit.configure(h.secrets["audit_hmac_key"])
            pool = AsyncConnectionPool(h.database_url, kwargs={"row_factory": dict_row}, open=False)
            await pool.open()
            try:
                org_row = await OrgRepo(pool).get(org["id"])
                ws_id = f"ws_{uuid.uuid4().hex[:12]}"
                h.never_boot(ws_id)
                row = await WorkspaceRepo(pool).reserve(
                    org["id"],
                    workspace_id=ws_id,
                    name="agent-silent",
                    role=WS["role"],
                    runtime=WS["runtime"],
                    tier=1,
                    model=WS["model"],
                    instance_type=TIER_INSTANCE_TYPES[1],
                    subnet_id=subnets[0],
                    actor="record_histories",
                )
            finally:
                await pool.close()
            from workflows.provision_workspace import ProvisionWorkspaceWorkflow

            inp = provision_input(h.settings.model_copy(update={"public_url": h.api_url}), org_row, row)
            inp = inp.model_copy(update={"registration_timeout_seconds": 3})
            await client.start_workflow(
                ProvisionWorkspaceWorkflow.run, inp, id=provision_workflow_id(ws_id), task_queue=h.settings.task_queue
            )
            await save(
                "ProvisionWorkspaceWorkflow",
                "registration-timeout-derived-token",
                provision_workflow_id(ws_id),
                expect_failure=True,
            )

            # 5. Deleting the running workspace.
            tenant.delete_workspace(ws["id"])
            await save("DeprovisionWorkspaceWorkflow", "strict-ec2", deprovision_workflow_id(ws["id"]))

            # 6. Suspend (stopping instances) and resume, with one running workspace.
            ws2 = tenant.create_workspace(name="agent-two", **WS)
            wait_for(lambda: tenant.workspace(ws2["id"]), lambda w: w["status"] == "running", 180, ws2["id"])
            op.suspend(org["slug"], reason="replay", stop_instances=True)
            await save(
                "SuspendOrgWorkflow", "child-stop-instances", operation_workflow_id(Operation.suspend, org["id"])
            )
            op.resume(org["slug"])
            await save("ResumeOrgWorkflow", "child-start-instances", operation_workflow_id(Operation.resume, org["id"]))

            # 7. A reconcile dry run, limited to this org: the paged version (in pages of 5, so every kind
            # spans pages) and the first one, still registered for its open runs.
            from domain.reconcile import ReconcileInput
            from workflows.reconcile import ReconcileWorkflow, ReconcileWorkflowV2

            await client.start_workflow(
                ReconcileWorkflowV2.run,
                ReconcileInput(org_ids=[org["id"]], page_size=5),
                id=f"reconcile-v2-replay-{tag}",
                task_queue=h.settings.task_queue,
            )
            await save("ReconcileWorkflowV2", "dry-run-pages-of-5", f"reconcile-v2-replay-{tag}")
            await client.start_workflow(
                ReconcileWorkflow.run,
                ReconcileInput(org_ids=[org["id"]]),
                id=f"reconcile-replay-{tag}",
                task_queue=h.settings.task_queue,
            )
            await save("ReconcileWorkflow", "dry-run-paged-neon", f"reconcile-replay-{tag}")

            # 7a. An operator deletes one orphan a report names: a security group tagged for an org
            # that has no row, reported by a dry run limited to that org.
            from domain.operations import orphan_deletion_workflow_id
            from domain.resources import MANAGED_TAG, ORG_ID_TAG, resource_name

            stray = f"org_{uuid.uuid4().hex[:12]}"
            group_id = h.ec2().create_security_group(
                GroupName=resource_name(f"ro{tag}", stray),
                Description="orphan",
                VpcId=vpc_id,
                TagSpecifications=[
                    {
                        "ResourceType": "security-group",
                        "Tags": [{"Key": MANAGED_TAG, "Value": "true"}, {"Key": ORG_ID_TAG, "Value": stray}],
                    }
                ],
            )["GroupId"]
            wait_for(
                lambda: h.ec2().describe_security_groups(Filters=[{"Name": "group-id", "Values": [group_id]}]),
                lambda found: bool(found["SecurityGroups"]),
                30,
                "the orphan group",
            )
            found = await client.execute_workflow(
                ReconcileWorkflowV2.run,
                ReconcileInput(org_ids=[stray], max_delete_fraction=1.0),
                id=f"reconcile-orphan-replay-{tag}",
                task_queue=h.settings.task_queue,
            )
            status, _ = op.delete_orphan(found.report_id, group_id)
            assert status == 202, status
            await save("DeleteOrphanWorkflow", "deletes-named-orphan", orphan_deletion_workflow_id(group_id))

            # 7b. An audit anchor: every chain's head verified, then written to the Object Lock bucket.
            from workflows.audit_anchor import AuditAnchorWorkflow

            await client.start_workflow(
                AuditAnchorWorkflow.run, id=f"audit-anchor-replay-{tag}", task_queue=h.settings.task_queue
            )
            await save("AuditAnchorWorkflow", "anchors-heads", f"audit-anchor-replay-{tag}")

            # 8. Hard delete parked on a Neon fault, then retried by the operator.
            h.neon_fault("/projects/{project_id}/branches/{branch_id}", 403, method="DELETE", count=-1)
            op.delete(org["slug"], confirm=org["slug"], delete_workspaces=True)
            wait_for(
                lambda: op.org(org["slug"]),
                lambda o: (o.get("progress") or {}).get("waiting_for_operator"),
                120,
                "parked delete",
            )
            h.clear_neon_faults()
            op.decide(org["slug"], "retry")
            await save(
                "HardDeleteOrgWorkflow", "child-parked-then-retry", operation_workflow_id(Operation.delete, org["id"])
            )
            assert op.org(org["slug"])["status"] == "deleted"
            # The org's entity over its whole life: onboard, suspend, resume, delete (parked, retried).
            await save("OrgWorkflow", "lifecycle", org_workflow_id(org["id"]))

            # 9. A delete that preempts onboarding (held by Neon's lock on the branch create).
            h.neon_fault("/projects/{project_id}/branches", 423, method="POST", count=-1)
            early = f"rp{tag}"
            op.onboard(name=f"Replay {early}", slug=early, plan="pro", vpc_id=vpc_id, subnet_ids=subnets)
            pending = wait_for(
                lambda: op.org(early),
                lambda o: (o.get("progress") or {}).get("step") == "create_database",
                120,
                "onboarding in create_database",
            )
            op.delete(early, confirm=early, delete_workspaces=True)
            h.clear_neon_faults()
            await save("OrgWorkflow", "delete-preempts-onboarding", org_workflow_id(pending["id"]))
            assert op.org(early)["status"] == "deleted"
        finally:
            h.stop()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HISTORIES)
    args = parser.parse_args()
    started = time.monotonic()
    written = asyncio.run(record(args.out))
    print(f"wrote {len(written)} histories in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
