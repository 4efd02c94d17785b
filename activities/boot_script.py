"""The EC2 user data that boots a workspace's agent.

It carries the workspace id, the platform URL, the runtime settings and the one-time registration
token, and nothing long-lived. It never traces (`set -x` would print the token to the console
that the EC2 API exposes), runs no debug server, and keeps the config file private.
"""

from __future__ import annotations

import json

CONFIG_MARKER = "TENANTFLOW_AGENT_CONFIG"
AGENT_PORT = 8000


def render_user_data(*, workspace_id: str, workspace_name: str, org_slug: str, role: str, runtime: str, model: str,
                     tier: int, platform_url: str, registration_token: str, heartbeat_interval_seconds: float) -> str:
    config = {
        "workspace_id": workspace_id,
        "workspace_name": workspace_name,
        "org_slug": org_slug,
        "role": role,
        "runtime": runtime,
        "model": model,
        "tier": tier,
        "platform_url": platform_url,
        "registration_token": registration_token,
        "listen_port": AGENT_PORT,
        "heartbeat_interval_seconds": heartbeat_interval_seconds,
    }
    # json.dumps never emits a bare newline, so the quoted heredoc cannot be closed early and the
    # shell expands nothing inside it.
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        "umask 077",
        "install -d -m 700 /etc/tenantflow",
        f"cat > /etc/tenantflow/agent.json <<'{CONFIG_MARKER}'",
        json.dumps(config, sort_keys=True),
        CONFIG_MARKER,
        "exec /opt/tenantflow/venv/bin/python -m agent --config /etc/tenantflow/agent.json",
        "",
    ])
