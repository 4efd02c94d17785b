"""Logs are JSON lines that carry org slug, workflow id and run id, and never a secret."""

from __future__ import annotations

import io
import json
import logging
import uuid

from domain.logs import configure_logging, get_logger
from tests.helpers import seed_org
from worker import build_worker
from workflows.onboard_org import OnboardOrgWorkflow


async def test_onboarding_logs_are_json_with_ids_and_no_secrets(skip_env, settings, pool, network, task_queue, pg):
    buf = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", stream=buf)
    try:
        inp = await seed_org(pool, f"l{uuid.uuid4().hex[:8]}", *network)
        async with build_worker(skip_env.client, settings, pool, task_queue=task_queue):
            handle = await skip_env.client.start_workflow(
                OnboardOrgWorkflow.run, inp, id=f"org-onboard:{inp.org_id}", task_queue=task_queue
            )
            await handle.result()
        # A careless log call must be scrubbed too.
        get_logger("test").info(
            "connecting",
            dsn=settings.database_url.get_secret_value(),
            detail=f"Authorization: Bearer {settings.provision_secret.get_secret_value()}",
        )
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    text = buf.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    ours = [r for r in lines if r.get("workflow_id") == handle.id]
    assert ours, text
    assert all(r.get("run_id") for r in ours)
    events = {r["event"] for r in ours if r.get("org_slug") == inp.slug}
    assert any("tenant database ready" in e for e in events), events
    assert any("security group ready" in e for e in events), events
    assert any("org onboarded" in e for e in events), events
    for secret in (settings.provision_secret.get_secret_value(), settings.neon_api_key.get_secret_value(), pg.password):
        assert secret not in text
