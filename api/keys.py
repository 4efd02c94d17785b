"""Typed keys for what the app and each request carry."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool
from temporalio.client import Client

from db.orgs import OrgRepo
from domain.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", AsyncConnectionPool)
ORGS = web.AppKey("orgs", OrgRepo)
TEMPORAL = web.AppKey("temporal", Client)
REQUEST_ID = web.RequestKey("request_id", str)
