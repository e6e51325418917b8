"""Setting the infrastructure up and steering it: install, target, mapping, the online procedure, the lock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pytest_rolemig.api.operations import Conn
from pytest_rolemig.db.query import one, scalar
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target

SCHEMAS = ("migration_tracking", "migration_backup", "migration_validation", "migration_control")
"""The infrastructure's schemas, in install order."""

LOCK_KEY_SQL = "pg_catalog.hashtext('pytest_rolemig.migration')"
"""The advisory lock every migration and rollback takes (the SQL functions take it per transaction)."""


def install(conn: Conn, target: Target | None = None, mapping: RoleMapping | None = None,
            auth: AuthSettings | None = None) -> None:
    """Install (or re-install) the infrastructure, store the target and requests, load the mapping."""
    from pytest_rolemig.db import install as installer

    installer.install(conn, target, mapping, auth)


def configure_target(conn: Conn, target: Target) -> None:
    """``configure_target(...)``: store where the application keeps roles and sessions (checked there)."""
    conn.execute(
        "SELECT * FROM migration_control.configure_target("
        "p_profiles_table => %s, p_key_column => %s, p_role_column => %s, "
        "p_sessions_table => %s, p_sessions_user_column => %s, "
        "p_policy_schemas => %s, p_batch_size => %s, p_user_column => %s)",
        (target.profiles_table, target.key_column, target.role_column, target.sessions_table,
         target.sessions_user_column, list(target.policy_schemas), target.batch_size, target.user_column),
    )


def configure_requests(conn: Conn, auth: AuthSettings) -> None:
    """``configure_requests(...)``: store how requests authenticate, with the target."""
    conn.execute("SELECT * FROM migration_control.configure_requests(p_auth_role => %s, p_anon_role => %s, "
                 "p_jwt_claims => %s::jsonb, p_pre_request => %s)",
                 (auth.auth_role, auth.anon_role, auth.jwt_claims, auth.pre_request))


def load_role_mapping(conn: Conn, mapping: RoleMapping) -> None:
    """``load_role_mapping(mapping, new_roles)``: replace the stored mapping (in the caller's transaction)."""
    from psycopg.types.json import Jsonb

    conn.execute("SELECT * FROM migration_control.load_role_mapping(%s, %s)",
                 (Jsonb(mapping.mapping), list(mapping.new_roles)))


def role_mapping(conn: Conn) -> dict[str, str]:
    """The stored mapping (legacy -> new role); empty before the infrastructure is installed."""
    if scalar(conn, "SELECT pg_catalog.to_regclass('migration_control.role_mapping') IS NULL"):
        return {}
    return dict(conn.execute("SELECT legacy_role, new_role FROM migration_control.role_mapping").fetchall())


def run_online_migration(conn: Conn, **params: Any) -> dict[str, Any]:
    """``CALL run_online_migration(...)`` with named parameters (``p_batch_size=...``); its result document.

    The procedure commits per batch, so the connection must be in autocommit mode.
    """
    if not conn.autocommit:
        raise ValueError("run_online_migration commits per batch: call it on an autocommit connection")
    args = ", ".join(f"{name} => %({name})s" for name in params)
    result = scalar(conn, f"CALL migration_control.run_online_migration({args})", params)
    return result if isinstance(result, dict) else json.loads(result)


def batch_seconds(conn: Conn, run_id: str) -> tuple[float | None, float | None, float | None]:
    """Mean, median and longest duration of the migrate batches of one run, in seconds."""
    row = one(conn, """SELECT avg(d), percentile_cont(0.5) WITHIN GROUP (ORDER BY d), max(d)
                          FROM (SELECT extract(epoch FROM b.completed_at - b.started_at)::float8 AS d
                                  FROM migration_tracking.migration_batch b
                                 WHERE b.run_id = %s AND b.details ->> 'phase' = 'migrate') s""", (run_id,))
    return row[0], row[1], row[2]


def missing_infrastructure(conn: Conn, functions: Sequence[str] = ()) -> list[str]:
    """The infrastructure's schemas that are missing, else the named functions (``schema.fn``) missing."""
    missing = [r[0] for r in conn.execute(
        "SELECT s FROM unnest(%s::text[]) AS s WHERE pg_catalog.to_regnamespace(s) IS NULL", (list(SCHEMAS),))]
    if missing or not functions:
        return missing
    return [r[0] for r in conn.execute(
        """SELECT f FROM unnest(%s::text[]) AS f
           WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                             WHERE n.nspname = split_part(f, '.', 1) AND p.proname = split_part(f, '.', 2))""",
        (list(functions),))]


def try_lock(conn: Conn) -> bool:
    """Take the migration advisory lock for the session, if no one holds it."""
    return bool(scalar(conn, f"SELECT pg_catalog.pg_try_advisory_lock({LOCK_KEY_SQL})"))


def unlock(conn: Conn) -> None:
    """Give the session's migration lock back (closing the connection would too)."""
    conn.execute(f"SELECT pg_catalog.pg_advisory_unlock({LOCK_KEY_SQL})")


@dataclass(frozen=True)
class LockHolder:
    """The server process holding the migration lock."""

    pid: int
    application_name: str | None
    state: str | None
    query_start: datetime | None


def lock_holder(conn: Conn) -> LockHolder | None:
    """Who holds the migration lock for their session, or None."""
    row = conn.execute(
        """SELECT a.pid, a.application_name, a.state, a.query_start
            FROM migration_control.migration_lock_holders() AS h(pid)
            JOIN pg_catalog.pg_stat_activity a ON a.pid = h.pid LIMIT 1""").fetchone()
    return LockHolder(*row) if row else None
