"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from temporalio.client import Client

from api.progress import ProgressQueries
from db.audit import AuditRepo
from db.keys import OrgKeyRepo
from db.operators import OperatorTokenRepo
from db.orgs import OrgRepo
from db.pool import Pool
from db.reconcile import ReconcileRepo
from db.workspaces import WorkspaceRepo
from domain.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", Pool)
ORGS = web.AppKey("orgs", OrgRepo)
ORG_KEYS = web.AppKey("org_keys", OrgKeyRepo)
OPERATOR_TOKENS = web.AppKey("operator_tokens", OperatorTokenRepo)
WORKSPACES = web.AppKey("workspaces", WorkspaceRepo)
AUDIT = web.AppKey("audit", AuditRepo)
RECONCILE = web.AppKey("reconcile", ReconcileRepo)
TEMPORAL = web.AppKey("temporal", Client)
PROGRESS = web.AppKey("progress", ProgressQueries)
REQUEST_ID = web.RequestKey("request_id", str)
# The org a tenant request is authenticated as (from its key alone).
TENANT_ORG = web.RequestKey("tenant_org", dict[str, Any])
# Who an authenticated request acts as: "org:<org id>", "operator:<name>" or "operator:bootstrap".
PRINCIPAL = web.RequestKey("principal", str)
