"""A local server compatible with the Neon API v2, backed by a real PostgreSQL.

``devstack.neon_server`` is the public entry point; the modules here are its parts:
``ids`` (Neon-like identifiers), ``cluster`` (DDL on the Postgres cluster), ``control``
(persistent state), ``render`` (response shapes), ``devtools`` (auth, errors, fault
injection, stats) and ``app`` (routes and server lifecycle).
"""
