"""The agent card, and how the platform reads the workspace identity back out of it.

The workspace identity travels in two places of the card:

* the extension ``WORKSPACE_EXTENSION_URI`` in ``capabilities.extensions``, whose ``params`` are
  ``{"workspace_id", "workspace_name", "org_slug", "runtime", "model", "tier"}`` (the structured form:
  use ``workspace_id_from_card``);
* the ``echo`` skill's tags ``workspace:<id>``, ``org:<slug>``, ``runtime:<runtime>``, ``model:<model>``.

The card is served to the platform only (see ``agent.auth``) and declares its bearer scheme. It
lists the JSON-RPC endpoint (https) twice, as protocol 1.0 and 0.3: the 0.3 entry is what makes the
served JSON carry the legacy top-level ``url`` as well as ``supportedInterfaces[].url``.
"""

from __future__ import annotations

from typing import Any

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentExtension,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)
from google.protobuf.struct_pb2 import Struct

from agent import __version__
from agent.auth import SCHEME_NAME
from agent.config import BootConfig

WORKSPACE_EXTENSION_URI = "https://tenantflow.dev/a2a/extensions/workspace/v1"


def build_agent_card(config: BootConfig, public_url: str) -> AgentCard:
    identity = Struct()
    identity.update(
        {
            "workspace_id": config.workspace_id,
            "workspace_name": config.workspace_name,
            "org_slug": config.org_slug,
            "runtime": config.runtime,
            "model": config.model,
            "tier": config.tier,
        }
    )
    return AgentCard(
        name=config.workspace_name,
        description=config.role or config.workspace_name,
        version=__version__,
        supported_interfaces=[
            AgentInterface(url=public_url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=public_url, protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        capabilities=AgentCapabilities(
            streaming=False,
            extensions=[
                AgentExtension(
                    uri=WORKSPACE_EXTENSION_URI,
                    description="tenantflow workspace identity",
                    required=False,
                    params=identity,
                )
            ],
        ),
        security_schemes={
            SCHEME_NAME: SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer", description="the tenantflow platform's credential for this workspace"
                )
            )
        },
        security_requirements=[SecurityRequirement(schemes={SCHEME_NAME: StringList()})],
        default_input_modes=["text"],
        default_output_modes=["text"],
        skills=[
            AgentSkill(
                id="echo",
                name="Echo",
                description="Answers a text message with 'echo: <text>'.",
                tags=[
                    f"workspace:{config.workspace_id}",
                    f"org:{config.org_slug}",
                    f"runtime:{config.runtime}",
                    f"model:{config.model}",
                ],
                examples=["hello"],
                input_modes=["text"],
                output_modes=["text"],
            )
        ],
    )


def workspace_id_from_card(card: AgentCard | dict[str, Any]) -> str | None:
    """The workspace id a card claims (an ``AgentCard`` or the served JSON), or None."""
    if isinstance(card, AgentCard):
        for ext in card.capabilities.extensions:
            if ext.uri == WORKSPACE_EXTENSION_URI and "workspace_id" in ext.params.fields:
                return ext.params.fields["workspace_id"].string_value
        return None
    for ext in (card.get("capabilities") or {}).get("extensions") or []:
        if isinstance(ext, dict) and ext.get("uri") == WORKSPACE_EXTENSION_URI:
            value = (ext.get("params") or {}).get("workspace_id")
            return value if isinstance(value, str) else None
    return None
