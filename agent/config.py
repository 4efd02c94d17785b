"""The boot config the instance's boot script writes to /etc/tenantflow/agent.json."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BootConfig:
    workspace_id: str
    workspace_name: str
    platform_url: str
    registration_token: str = dataclasses.field(repr=False)
    # SHA-256 (hex) of the credential the platform presents when it calls the agent.
    platform_credential_sha256: str = ""
    org_slug: str = ""
    role: str = ""
    runtime: str = ""
    model: str = ""
    tier: int = 0
    listen_host: str = "0.0.0.0"
    listen_port: int = 443
    heartbeat_interval_seconds: float = 15.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.platform_credential_sha256):
            raise ValueError("platform_credential_sha256 must be 64 lowercase hex digits")

    @classmethod
    def from_dict(cls, data: dict) -> BootConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            "workspace_id",
            "workspace_name",
            "platform_url",
            "registration_token",
            "platform_credential_sha256",
        }
        missing = required - data.keys()
        if missing:
            raise ValueError(f"boot config lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> BootConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
