"""Talking to a workspace agent over A2A, as the platform, the CLI and the tests do."""

from __future__ import annotations

from a2a.client import create_client
from a2a.helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest


async def ask(agent_url: str, text: str) -> str:
    """Send one text message and return the agent's text reply."""
    client = await create_client(agent_url)
    try:
        request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
        replies = [get_stream_response_text(event) async for event in client.send_message(request)]
    finally:
        await client.close()
    return "".join(r for r in replies if r)
