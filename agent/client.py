"""Talking to a workspace agent over A2A, as the platform, the CLI and the tests do.

An agent answers only the platform's credential over TLS to its own certificate: pass an
``httpx.AsyncClient`` that carries both (the platform's is ``activities.a2a.pinned_client``).
"""

from __future__ import annotations

import httpx
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_stream_response_text, new_text_message
from a2a.types import Role, SendMessageRequest


async def ask(agent_url: str, text: str, *, http: httpx.AsyncClient | None = None) -> str:
    """Send one text message and return the agent's text reply."""
    client = await create_client(agent_url, client_config=ClientConfig(httpx_client=http) if http else None)
    try:
        request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
        replies = [get_stream_response_text(event) async for event in client.send_message(request)]
    finally:
        await client.close()
    return "".join(r for r in replies if r)
