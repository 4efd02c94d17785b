"""What the audit anchor schedule starts: one activity that anchors every chain's head."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.audit_anchor import AuditAnchorActivities
    from domain.audit import AnchorWritten
    from workflows.common import run_activity


@workflow.defn
class AuditAnchorWorkflow:
    @workflow.run
    async def run(self) -> AnchorWritten:
        return await run_activity(AuditAnchorActivities.anchor_audit_heads, summary="Anchor every audit chain's head")
