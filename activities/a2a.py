"""Checks a registered agent over A2A: its card must be served and must describe its workspace."""

from __future__ import annotations

import httpx
from a2a.client.card_resolver import A2ACardResolver
from a2a.client.errors import AgentCardResolutionError
from temporalio import activity

from activities.errors import permanent, transient
from domain.provision_workspace import AgentCardCheck

# The agent runtime tags a skill with this, so the platform can tell which workspace a card is.
WORKSPACE_SKILL_TAG = "workspace:{workspace_id}"


class AgentActivities:
    @activity.defn
    async def check_agent_card(self, check: AgentCardCheck) -> None:
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                card = await A2ACardResolver(http, check.agent_url).get_agent_card()
        except (httpx.TransportError, AgentCardResolutionError) as err:
            # Unreachable or not yet serving: the agent may still be starting, so retry until the
            # step's deadline, after which the workspace fails with this message.
            raise transient("AgentUnreachable", f"agent card at {check.agent_url} unavailable: {err}") from err
        tag = WORKSPACE_SKILL_TAG.format(workspace_id=check.workspace_id)
        tags = {t for skill in card.skills for t in skill.tags}
        if tag not in tags:
            raise permanent(
                "AgentCardMismatch", f"agent at {check.agent_url} does not serve workspace {check.workspace_id}"
            )
        if not card.skills:
            raise permanent("AgentCardMismatch", "agent card lists no skills")
        activity.logger.info(
            "agent card checked",
            extra={"workspace_id": check.workspace_id, "agent_name": card.name, "skills": len(card.skills)},
        )
