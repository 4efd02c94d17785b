"""Connecting to Temporal, identically from the worker, the API and the tools.

Address, namespace, TLS and API key come from the SDK's environment configuration
(``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, ``TEMPORAL_TLS``,
``TEMPORAL_TLS_CLIENT_CERT_PATH`` ..., or a profile in ``temporal.toml``), so the same code runs
against the local dev server, a self-hosted cluster or Temporal Cloud.
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime


async def connect_temporal(*, lazy: bool = False, runtime: Runtime | None = None) -> Client:
    """``lazy`` defers the connection to the first call, so the API starts (and answers from its
    database) while Temporal is still coming up."""
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", "localhost:7233")
    return await Client.connect(**config, data_converter=pydantic_data_converter, lazy=lazy, runtime=runtime)
