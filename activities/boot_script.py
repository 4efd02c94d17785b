"""The EC2 user data that installs a workspace's agent as a boot service.

cloud-init runs user data once per instance, on its first boot. So the script does not run the
agent itself: it writes the agent's config and a systemd unit, enables the unit and starts it. On
every later boot (a resume is a stop and a start) systemd starts the agent again from the disk.

The agent listens on ``listen_port`` on every address and finds its own private address through
the instance metadata service; the platform dials ``https://<PrivateIpAddress>:<listen_port>``,
which the org's security group admits from the platform's CIDR only. At first boot the agent makes
a key and a self-signed certificate (kept in its state directory) and registers the certificate's
fingerprint with its one-time token; the worker accepts exactly that certificate.

The script carries the workspace id, the platform URL, the runtime settings, the one-time
registration token and the SHA-256 of the platform's agent-access credential (the agent refuses
any call whose bearer does not hash to it), and nothing long-lived: that hash lets nobody call the
agent, so whoever can read the user data (``DescribeInstanceAttribute``) learns no credential.
It never traces (`set -x` would print the token to the console output that the EC2 API exposes),
runs no debug server, keeps the token in a root-only file (never on a command line) and renders
byte-identical output for identical inputs, because a retried launch must render the same user
data.

Why the agent runs as root: it needs port 443 and nothing else. The unit takes every capability
away except CAP_NET_BIND_SERVICE and forbids gaining new ones, and on a real systemd the file
system is read-only to it except its state directory. A dedicated user would also need the
interpreter and the project to be readable by that user on every image, for no gain once the
capability set is already down to the one bind.
"""

from __future__ import annotations

import json

CONFIG_DIR = "/etc/tenantflow"
CONFIG_PATH = f"{CONFIG_DIR}/agent.json"
UNIT_NAME = "tenantflow-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
AGENT_PYTHON = "/opt/tenantflow/venv/bin/python"
CONFIG_MARKER = "TENANTFLOW_AGENT_CONFIG"
UNIT_MARKER = "TENANTFLOW_AGENT_UNIT"

# StateDirectory= gives the agent /var/lib/tenantflow (as $STATE_DIRECTORY): the one writable place,
# where it keeps its workspace token, TLS key and certificate across a stop and start.
# StartLimitIntervalSec=0: an agent that cannot reach the metadata service or the platform yet
# keeps retrying every RestartSec.
AGENT_UNIT = f"""\
[Unit]
Description=tenantflow workspace agent (A2A)
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart={AGENT_PYTHON} -m agent --config {CONFIG_PATH}
Restart=always
RestartSec=2
StateDirectory=tenantflow
StateDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def render_user_data(
    *,
    workspace_id: str,
    workspace_name: str,
    org_slug: str,
    role: str,
    runtime: str,
    model: str,
    tier: int,
    platform_url: str,
    registration_token: str,
    platform_credential_sha256: str,
    heartbeat_interval_seconds: float,
    listen_port: int,
) -> str:
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
        "platform_credential_sha256": platform_credential_sha256,
        "listen_port": listen_port,
        "heartbeat_interval_seconds": heartbeat_interval_seconds,
    }
    # json.dumps never emits a bare newline, so the quoted heredoc cannot be closed early and the
    # shell expands nothing inside it; umask 077 makes the file 0600 from its first byte.
    return "\n".join(
        [
            "#!/bin/bash",
            "set -euo pipefail",
            "umask 077",
            f"install -d -m 0700 {CONFIG_DIR}",
            f"cat > {CONFIG_PATH} <<'{CONFIG_MARKER}'",
            json.dumps(config, sort_keys=True),
            CONFIG_MARKER,
            f"chmod 0600 {CONFIG_PATH}",
            "install -d -m 0755 /etc/systemd/system",
            f"cat > {UNIT_PATH} <<'{UNIT_MARKER}'",
            AGENT_UNIT.rstrip("\n"),
            UNIT_MARKER,
            f"chmod 0644 {UNIT_PATH}",
            "systemctl daemon-reload",
            f"systemctl enable --now {UNIT_NAME}",
            "",
        ]
    )
