"""The local stack's settings: the product's, plus where the stack keeps its state and which
loopback ports its servers listen on (``TENANTFLOW_STATE_DIR``, ``TENANTFLOW_TEMPORAL_PORT`` ...)
and what the demo is called."""

from __future__ import annotations

from domain.settings import Settings


class StackSettings(Settings):
    state_dir: str = ".tenantflow"
    temporal_port: int = 7233
    temporal_ui_port: int = 8233
    postgres_port: int = 55432
    moto_port: int = 5055
    neon_port: int = 4444
    boot_emulator_port: int = 5056
    # moto's S3 server: the audit anchors' bucket (Object Lock). In memory: a restart forgets them.
    s3_port: int = 5057

    demo_org_slug: str = "demo"
    demo_workspace_name: str = "demo-agent"
