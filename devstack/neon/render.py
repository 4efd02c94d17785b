"""Neon API v2 response shapes, with every field the ``neon-api`` schema models require."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from devstack.neon.control import Row
from devstack.neon.operations import FAILURE_MESSAGE, phase

PLATFORM_ID = "aws"
PROVISIONER = "k8s-neonvm"
CREATION_SOURCE = "console"
OWNER_ID = "devstack-local-user"
# Neon reports 0001-01-01 for a consumption period that is still open.
OPEN_PERIOD_END = "0001-01-01T00:00:00Z"
_ZERO_USAGE = {
    "cpu_used_sec": 0,
    "compute_time_seconds": 0,
    "active_time_seconds": 0,
    "written_data_bytes": 0,
    "data_transfer_bytes": 0,
}


def ts(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def operation(op: Row, now: datetime) -> dict[str, Any]:
    current = phase(op, now)
    duration = min(now, op["finished_at"]) - op["running_at"]
    body = {
        "id": str(op["id"]),
        "project_id": op["project_id"],
        "branch_id": op["branch_id"],
        "endpoint_id": op["endpoint_id"],
        "action": op["action"],
        "status": current.status,
        "failures_count": current.failures_count,
        "created_at": ts(op["created_at"]),
        "updated_at": ts(current.since),
        "total_duration_ms": max(0, int(duration.total_seconds() * 1000)),
    }
    if current.status == "failed":
        body["error"] = FAILURE_MESSAGE
        body["retry_at"] = ts(current.since + timedelta(seconds=op["retry_seconds"]))
    return body


def project(p: Row, proxy_host: str) -> dict[str, Any]:
    created, updated = ts(p["created_at"]), ts(p["updated_at"])
    return {
        "id": p["id"],
        "platform_id": PLATFORM_ID,
        "region_id": p["region_id"],
        "name": p["name"],
        "provisioner": PROVISIONER,
        "default_endpoint_settings": {
            "autoscaling_limit_min_cu": 0.25,
            "autoscaling_limit_max_cu": 0.25,
            "suspend_timeout_seconds": 0,
        },
        "settings": {
            "allowed_ips": {"ips": [], "protected_branches_only": False},
            "enable_logical_replication": False,
        },
        "pg_version": p["pg_version"],
        "proxy_host": proxy_host,
        "branch_logical_size_limit": 8192,
        "branch_logical_size_limit_bytes": 8192 * 1024 * 1024,
        "store_passwords": True,
        "active_time": 0,
        **_ZERO_USAGE,
        "data_storage_bytes_hour": 0,
        "synthetic_storage_size": 0,
        "creation_source": CREATION_SOURCE,
        "history_retention_seconds": 86400,
        "created_at": created,
        "updated_at": updated,
        "consumption_period_start": created,
        "consumption_period_end": OPEN_PERIOD_END,
        "owner_id": OWNER_ID,
    }


def branch(b: Row, now: datetime) -> dict[str, Any]:
    ready = now >= b["ready_at"]
    body = {
        "id": b["id"],
        "project_id": b["project_id"],
        "parent_id": b["parent_id"],
        "parent_lsn": b["parent_lsn"],
        "parent_timestamp": ts(b["created_at"]) if b["parent_id"] else None,
        "name": b["name"],
        "current_state": "ready" if ready else "init",
        "state_changed_at": ts(b["ready_at"] if ready else b["created_at"]),
        "creation_source": CREATION_SOURCE,
        "primary": b["is_default"],
        "default": b["is_default"],
        "protected": False,
        **_ZERO_USAGE,
        "created_at": ts(b["created_at"]),
        "updated_at": ts(b["ready_at"] if ready else b["created_at"]),
        "init_source": "parent-data",
    }
    if not ready:
        body["pending_state"] = "ready"
    return body


def endpoints(b: Row, p: Row, host: str, now: datetime) -> list[dict[str, Any]]:
    if not b["endpoint_id"]:
        return []
    active = now >= b["ready_at"]
    body = {
        "host": host,
        "id": b["endpoint_id"],
        "project_id": b["project_id"],
        "branch_id": b["id"],
        "autoscaling_limit_min_cu": 0.25,
        "autoscaling_limit_max_cu": 0.25,
        "region_id": p["region_id"],
        "type": b["endpoint_type"],
        "current_state": "active" if active else "init",
        "settings": {},
        "pooler_enabled": False,
        "pooler_mode": "transaction",
        "disabled": False,
        "passwordless_access": True,
        "creation_source": CREATION_SOURCE,
        "created_at": ts(b["created_at"]),
        "updated_at": ts(b["ready_at"] if active else b["created_at"]),
        "proxy_host": host,
        "suspend_timeout_seconds": 0,
        "provisioner": PROVISIONER,
    }
    if not active:
        body["pending_state"] = "active"
    return [body]


def roles(b: Row, p: Row, *, with_password: bool) -> list[dict[str, Any]]:
    role = {
        "branch_id": b["id"],
        "name": p["pg_role"],
        "protected": False,
        "created_at": ts(b["created_at"]),
        "updated_at": ts(b["created_at"]),
    }
    if with_password:
        role["password"] = p["pg_password"]
    return [role]


def databases(b: Row, p: Row) -> list[dict[str, Any]]:
    return [
        {
            "id": b["seq"],
            "branch_id": b["id"],
            "name": p["database_name"],
            "owner_name": p["pg_role"],
            "created_at": ts(b["created_at"]),
            "updated_at": ts(b["created_at"]),
        }
    ]


def connection_uri(b: Row, p: Row, host: str, port: int) -> str:
    # Physically each branch is its own database; the logical name ("neondb") is what the API shows.
    return (
        f"postgresql://{quote(p['pg_role'], safe='')}:{quote(p['pg_password'], safe='')}"
        f"@{host}:{port}/{quote(b['physical_db'], safe='')}?sslmode=disable"
    )


def connection_uris(b: Row, p: Row, host: str, port: int) -> list[dict[str, Any]]:
    return [
        {
            "connection_uri": connection_uri(b, p, host, port),
            "connection_parameters": {
                "database": b["physical_db"],
                "password": p["pg_password"],
                "role": p["pg_role"],
                "host": host,
                "pooler_host": host,
            },
        }
    ]
