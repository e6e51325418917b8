"""What an operator reads: backups, runs, the migration's state, the stored target, tables, policies, roles."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from psycopg import sql as psql

from pytest_rolemig.api.operations import Conn
from pytest_rolemig.db.query import one, scalar
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target


def backup_known(conn: Conn, backup_id: str) -> bool:
    """Whether ``backup_log`` has a backup of that id (restorable or not)."""
    return conn.execute("SELECT 1 FROM migration_backup.backup_log WHERE backup_id = %s",
                        (backup_id,)).fetchone() is not None


def migration_base(conn: Conn) -> str | None:
    """``migration_base()``: the backup the current migration started from (None before any user moved)."""
    base: str | None = scalar(conn, "SELECT backup_id FROM migration_backup.migration_base()")
    return base


def newest_restorable(conn: Conn) -> str | None:
    """The newest backup whose counts and checksums still match (``list_available_backups()``)."""
    row = conn.execute("SELECT backup_id FROM migration_backup.list_available_backups() "
                       "WHERE restorable LIMIT 1").fetchone()
    return row[0] if row else None


def refuse_backup_after_migration(conn: Conn, backup_id: str) -> None:
    """Raise (a database error with DETAIL and HINT) when the backup was taken after users moved."""
    conn.execute("SELECT migration_backup.refuse_backup_after_migration(%s)", (backup_id,))


@dataclass(frozen=True)
class BackupInfo:
    """One row of ``list_available_backups()``, with its size from ``get_backup_summary()``."""

    backup_id: str
    backup_name: str
    created_at: datetime
    status: str
    profiles_count: int | None
    sessions_count: int | None
    policies_count: int | None
    restorable: bool
    size_bytes: int | None = None


def backups(conn: Conn, limit: int | None = None, sizes: bool = False) -> list[BackupInfo]:
    """Backups, newest first, whether each is restorable (and with ``sizes``, its size in bytes)."""
    found = [BackupInfo(*r) for r in conn.execute(
        "SELECT backup_id, backup_name, created_at, status, profiles_count, sessions_count, policies_count, "
        "restorable FROM migration_backup.list_available_backups() LIMIT %s", (limit,))]
    if not sizes:
        return found
    size = dict(conn.execute("SELECT backup_id, size_bytes FROM migration_backup.get_backup_summary()").fetchall())
    return [replace(b, size_bytes=size.get(b.backup_id)) for b in found]


@dataclass(frozen=True)
class MigrationRun:
    """One row of ``migration_runs()``: a migration run or a rollback."""

    kind: str
    id: str
    started_at: datetime | None
    finished_at: datetime | None
    status: str
    batches: int | None
    users: int | None
    backup_id: str | None
    error: str | None


def runs(conn: Conn, limit: int = 20) -> list[MigrationRun]:
    """``migration_runs(limit)``: migration runs and rollbacks, newest first."""
    return [MigrationRun(*r) for r in conn.execute(
        "SELECT kind, id, started_at, finished_at, status, batches, users, backup_id, error "
        "FROM migration_control.migration_runs(%s)", (limit,))]


@dataclass(frozen=True)
class MigrationState:
    """``migration_state()``: what the database is in now, in one word an operator acts on."""

    state: str  # not migrated | migrating | migrated | rolled back
    users_on_legacy_roles: int
    users_moved: int
    policies_naming_legacy_roles: int
    last_rollback: str | None
    detail: str


def state(conn: Conn) -> MigrationState:
    """``migration_state()``; its ``users_on_legacy_roles`` are the users the migration has yet to move."""
    return MigrationState(*one(
        conn, "SELECT state, users_on_legacy_roles, users_moved, policies_naming_legacy_roles, last_rollback, "
        "detail FROM migration_control.migration_state()"))


def users_on_legacy_roles(conn: Conn) -> int:
    """``users_on_legacy_roles()``: users on a legacy role the mapping moves, as ``state`` counts them."""
    return int(scalar(conn, "SELECT migration_control.users_on_legacy_roles()"))


def pending_users(conn: Conn, migration_name: str = "role_system_migration") -> int:
    """``pending_count()``: users a batch of ``migration_name`` would still pick up, since the newest
    completed rollback (what ``execute_role_migration`` and the online procedure count)."""
    return int(scalar(
        conn, "SELECT migration_control.pending_count(%s, (SELECT coalesce(max(r.started_at), '-infinity') "
        "FROM migration_backup.rollback_log r WHERE r.status = 'completed'))", (migration_name,)))


def has_completed_batch(conn: Conn) -> bool:
    """Whether any migration batch completed (a migration ran at all)."""
    return bool(scalar(conn, "SELECT EXISTS (SELECT 1 FROM migration_tracking.migration_batch "
                             "WHERE status = 'completed')"))


@dataclass(frozen=True)
class ValidationSummary:
    """The newest stored validation run: its counts and failing checks."""

    validation_run: str
    checked_at: datetime
    passed: int
    warnings: int
    failed: int
    failing: list[str]


def last_validation(conn: Conn) -> ValidationSummary | None:
    """The newest run of the stored validation results, or None before any validation."""
    row = conn.execute("""
        SELECT validation_run, max(checked_at),
               count(*) FILTER (WHERE status = 'pass'), count(*) FILTER (WHERE status = 'warn'),
               count(*) FILTER (WHERE status = 'fail'),
               coalesce(array_agg(check_name ORDER BY check_name) FILTER (WHERE status = 'fail'), '{}')
        FROM migration_validation.validation_results
        GROUP BY validation_run ORDER BY max(checked_at) DESC LIMIT 1""").fetchone()
    return ValidationSummary(*row) if row else None


def target_row(conn: Conn) -> dict[str, Any]:
    """The stored target (``migration_control.target_config``) as a dict of its columns."""
    row = conn.execute("SELECT to_jsonb(t) FROM migration_control.target_config AS t").fetchone()
    if row is None:
        raise LookupError("migration_control.target_config has no row (run the install)")
    return dict(row[0])


def stored_auth(conn: Conn) -> AuthSettings:
    """How requests authenticate, as stored with the target; the defaults before an install."""
    from pytest_rolemig.postgrest import from_config

    if not scalar(conn, "SELECT pg_catalog.to_regclass('migration_control.target_config') IS NOT NULL"):
        return AuthSettings()
    row = conn.execute("SELECT to_jsonb(t) FROM migration_control.target_config AS t").fetchone()
    return from_config(row[0]) if row else AuthSettings()


def token_fields(conn: Conn, user: str) -> dict[str, Any]:
    """``token_fields(user)``: what the platform copies from the user's auth row into their token.

    ``{}`` without the infrastructure (a bare database) or without an auth row for ``user``.
    """
    if not scalar(conn, "SELECT pg_catalog.to_regprocedure('migration_control.token_fields(text)') IS NOT NULL"):
        return {}
    return dict(scalar(conn, "SELECT migration_control.token_fields(%s)", (user,)) or {})


def stored_target(conn: Conn) -> tuple[Target, AuthSettings]:
    """The stored target and request settings, as the settings that configured them spell them."""
    from pytest_rolemig.postgrest import from_config
    from pytest_rolemig.target import quote_name

    cfg = target_row(conn)

    def table(schema: str | None, name: str | None) -> str | None:
        return None if name is None else f"{quote_name(schema or 'public')}.{quote_name(name)}"

    target = Target(
        profiles_table=table(cfg["profiles_schema"], cfg["profiles_table"]) or "",
        key_column=cfg["key_column"], role_column=cfg["role_column"], user_column=cfg.get("user_column"),
        sessions_table=table(cfg.get("sessions_schema"), cfg.get("sessions_table")),
        sessions_user_column=cfg["sessions_user_column"], policy_schemas=tuple(cfg["policy_schemas"]),
        batch_size=cfg["batch_size"],
    )
    return target, from_config(cfg)


@dataclass(frozen=True)
class MigratedTable:
    """One row of ``migrated_tables()``: a table the migration may touch."""

    schema_name: str
    table_name: str
    table_oid: int
    rls_enabled: bool
    rls_forced: bool
    policy_count: int


def migrated_tables(conn: Conn) -> list[MigratedTable]:
    """``migration_validation.migrated_tables()``: every table of the policy schemas with RLS or a
    policy, and the profiles table (of the stored target)."""
    return [MigratedTable(*r) for r in conn.execute(
        "SELECT schema_name, table_name, table_oid::int8, rls_enabled, rls_forced, policy_count "
        "FROM migration_validation.migrated_tables()")]


@dataclass(frozen=True)
class Policy:
    """One row-level security policy, as ``describe_policies()`` describes it for backup and restore."""

    schema_name: str
    table_name: str
    policy_name: str
    permissive: bool
    command: str  # SELECT | INSERT | UPDATE | DELETE | ALL
    roles: tuple[str, ...]  # sorted; 'public' for every role
    using_expr: str | None
    check_expr: str | None


def migrated_policies(conn: Conn) -> list[Policy]:
    """The policies of the tables the migration may touch (``describe_policies()`` on
    ``migrated_tables()``): the same description the backup stores and the rollback compares."""
    return [Policy(s, t, p, permissive == "PERMISSIVE", command, tuple(roles), using, check)
            for s, t, p, permissive, command, roles, using, check in conn.execute(
                """SELECT d.schema_name, d.table_name, d.policy_name, d.permissive, d.command, d.roles,
                          d.using_expr, d.check_expr
                     FROM migration_backup.describe_policies() AS d
                     JOIN migration_validation.migrated_tables() AS t USING (schema_name, table_name)
                    ORDER BY 1, 2, 3""")]


@dataclass(frozen=True)
class RoleCount:
    """Users on one role now, the role it maps to, and what the migration does to them."""

    legacy_role: str
    new_role: str | None
    users: int
    action: str  # moves | unchanged | already new | UNMAPPED


def role_counts(conn: Conn) -> list[RoleCount]:
    """Users per current role of the stored target's profiles table, with their mapping."""
    cfg = target_row(conn)
    query = psql.SQL(
        """SELECT p.{role}::text AS role, m.new_role, count(*) AS users,
                  EXISTS (SELECT 1 FROM migration_control.new_roles n WHERE n.role_name = p.{role}::text)
           FROM {profiles} AS p
           LEFT JOIN migration_control.role_mapping AS m ON m.legacy_role = p.{role}::text
           GROUP BY 1, 2 ORDER BY 1"""
    ).format(role=psql.Identifier(cfg["role_column"]),
             profiles=psql.Identifier(cfg["profiles_schema"], cfg["profiles_table"]))
    out = []
    for role, new_role, users, is_new in conn.execute(query):
        if new_role is None:
            action = "already new" if is_new else "UNMAPPED"
        else:
            action = "unchanged" if new_role == role else "moves"
        out.append(RoleCount(role, new_role, users, action))
    return out


def sample_users(conn: Conn) -> list[tuple[str, str, str]]:
    """(role, row key, user id) of one row per mapped legacy role of the stored target: the user id
    is what the JWT claims carry (a roles table's user column, else the key)."""
    cfg = target_row(conn)
    query = psql.SQL(
        """SELECT DISTINCT ON (p.{role}::text) p.{role}::text, p.{key}::text, p.{user}::text
           FROM {profiles} AS p
           JOIN migration_control.role_mapping AS m ON m.legacy_role = p.{role}::text
           ORDER BY p.{role}::text, p.{key}::text"""
    ).format(role=psql.Identifier(cfg["role_column"]), key=psql.Identifier(cfg["key_column"]),
             user=psql.Identifier(cfg.get("user_column") or cfg["key_column"]),
             profiles=psql.Identifier(cfg["profiles_schema"], cfg["profiles_table"]))
    return [(r[0], r[1], r[2]) for r in conn.execute(query)]


def legacy_roles(conn: Conn) -> list[tuple[str, list[str], str | None]]:
    """``discover_legacy_roles()``: (role, where found, mapped to)."""
    return [tuple(r) for r in conn.execute(
        "SELECT role_name, sources, mapped_to FROM migration_control.discover_legacy_roles() ORDER BY 1"
    )]
