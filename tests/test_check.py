"""``python -m tools.check`` reaches every dependency, and names what is wrong without secrets."""

from __future__ import annotations

import io

import pytest
from pydantic import SecretStr

from domain.operations import SEARCH_ATTRIBUTES
from tools.check import run_checks


@pytest.fixture
def temporal_env(dev_env, monkeypatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")


async def test_everything_reachable(settings, temporal_env):
    out = io.StringIO()
    assert await run_checks(settings, out), out.getvalue()
    text = out.getvalue()
    for name in ("settings", "postgres", "temporal", "aws", "neon"):
        assert f"ok   {name}" in text
    assert "search attributes registered" in text and len(SEARCH_ATTRIBUTES) == 3


async def test_problems_are_named_without_secrets(settings, temporal_env):
    bad = settings.model_copy(
        update={
            "neon_api_key": SecretStr("neon_wrong_key_0123456789"),
            "platform_cidr": "0.0.0.0/0",
            "provision_secret": SecretStr("short"),
        }
    )
    out = io.StringIO()
    assert not await run_checks(bad, out)
    text = out.getvalue()
    assert "FAIL settings: TENANTFLOW_PROVISION_SECRET" in text
    assert "whole internet" in text
    assert "FAIL neon" in text and "ok   postgres" in text
    assert "neon_wrong_key_0123456789" not in text and settings.database_url.get_secret_value() not in text
