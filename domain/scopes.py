"""What an org API key may do. Every tenant route requires exactly one scope (declared next to
the route with ``api.auth.requires``); a key holds a set of them."""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    read = "read"  # list and get workspaces and keys
    workspaces_write = "workspaces:write"  # create and delete workspaces
    keys_admin = "keys:admin"  # mint and revoke the org's keys


ALL_SCOPES: tuple[str, ...] = tuple(s.value for s in Scope)
