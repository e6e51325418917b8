"""A small Python API over the SQL functions: backup, migrate, validate, rollback, status.

Every function takes a psycopg 3 connection and calls one SQL function of the
infrastructure (or reads one of its tables), so what the gate, the fixtures, the
``rolemig`` CLI and a team's own tests do is what an operator would do in ``psql``.
It is the one Python caller of the infrastructure: a rule such as "which tables the
migration touches" or "which users are still pending" is asked of the SQL here, never
computed again in Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql as psql

from pytest_rolemig.checks import CheckReport
from pytest_rolemig.db.query import scalar
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class BackupResult:
    """What ``create_comprehensive_backup`` reports."""

    backup_id: str
    profiles_count: int
    sessions_count: int
    policies_count: int
    status: str


@dataclass(frozen=True)
class MigrationResult:
    """What ``execute_role_migration`` reports."""

    run_id: str
    batches: int
    users_migrated: int
    users_unchanged: int
    policies_rewritten: int
    status: str
    error: str | None


@dataclass(frozen=True)
class RollbackResult:
    """What ``execute_rollback`` / ``emergency_rollback`` report."""

    rollback_id: str
    status: str
    profiles_restored: int
    sessions_restored: int
    policies_restored: int
    conflicts: int


class OperationFailed(RuntimeError):
    """A migration step reported status ``failed``; the database kept its previous state.

    ``result`` is the step's row (a :class:`BackupResult`, :class:`MigrationResult` or
    :class:`RollbackResult`) and ``error`` the error the infrastructure recorded, so a caller
    that reports the failure (the CLI) needs to read nothing again.
    """

    def __init__(self, message: str, result: Any = None, error: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.error = error


def _one(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise OperationFailed(f"{query.split('(')[0]} returned no row")
    return row


def backup(conn: Conn, name: str = "pre_migration_backup") -> BackupResult:
    """Back up profiles, sessions and policies; raise if the backup failed."""
    result = BackupResult(*_one(
        conn,
        "SELECT backup_id, profiles_count, sessions_count, policies_count, status "
        "FROM migration_backup.create_comprehensive_backup(%s)", (name,),
    ))
    if result.status != "completed":
        error = conn.execute(
            "SELECT error FROM migration_backup.backup_log WHERE backup_id = %s", (result.backup_id,)
        ).fetchone()
        text = error[0] if error else None
        raise OperationFailed(f"backup {result.backup_id} failed: {text or 'no error recorded'}", result, text)
    return result


def validate_backup(conn: Conn, backup_id: str) -> CheckReport:
    """Recompute a backup's counts and checksums."""
    return CheckReport.from_rows(
        "validate_backup_completeness",
        conn.execute("SELECT * FROM migration_backup.validate_backup_completeness(%s)", (backup_id,)),
    )


def migrate(conn: Conn, *, batch_size: int | None = None, backup_id: str | None = None,
            max_batches: int | None = None, name: str = "role_system_migration",
            rewrite_policies: bool = True, run_id: str | None = None) -> MigrationResult:
    """Run (or resume) the role migration; raise :class:`OperationFailed` if it reports failure.

    ``run_id`` continues that run (its batches are counted as one run), as the CLI does batch by batch.
    """
    result = MigrationResult(*_one(
        conn,
        "SELECT run_id, batches, users_migrated, users_unchanged, policies_rewritten, status, error "
        "FROM migration_control.execute_role_migration(p_migration_name => %s, p_batch_size => %s, "
        "p_backup_id => %s, p_max_batches => %s, p_rewrite_policies => %s, p_run_id => %s)",
        (name, batch_size, backup_id, max_batches, rewrite_policies, run_id),
    ))
    if result.status == "failed":
        raise OperationFailed(f"migration {result.run_id} failed: {result.error}", result, result.error)
    return result


def pre_migration_checks(conn: Conn) -> CheckReport:
    """``validate_pre_migration_state()``."""
    return CheckReport.from_rows(
        "validate_pre_migration_state",
        conn.execute("SELECT * FROM migration_validation.validate_pre_migration_state()"),
    )


def post_migration_checks(conn: Conn, backup_id: str | None = None) -> CheckReport:
    """``validate_post_migration_state(backup_id)``."""
    return CheckReport.from_rows(
        "validate_post_migration_state",
        conn.execute("SELECT * FROM migration_validation.validate_post_migration_state(%s)", (backup_id,)),
    )


def authentication_checks(conn: Conn, sample_size: int = 50) -> CheckReport:
    """``test_user_authentication(sample_size)``: real users, through RLS, as ``authenticated``."""
    return CheckReport.from_rows(
        "test_user_authentication",
        conn.execute("SELECT * FROM migration_validation.test_user_authentication(%s)", (sample_size,)),
    )


def rls_checks(conn: Conn, phase: str = "auto") -> CheckReport:
    """``validate_rls_policies(phase)``."""
    return CheckReport.from_rows(
        "validate_rls_policies",
        conn.execute("SELECT * FROM migration_validation.validate_rls_policies(%s)", (phase,)),
    )


def validate(conn: Conn, phase: str = "pre_migration") -> CheckReport:
    """``run_comprehensive_validation(phase)``."""
    return CheckReport.from_rows(
        "run_comprehensive_validation",
        conn.execute("SELECT * FROM migration_validation.run_comprehensive_validation(%s)", (phase,)),
    )


def rollback(conn: Conn, backup_id: str | None, reason: str = "manual rollback", *,
             emergency: bool = False) -> RollbackResult:
    """Revert the migration (compare-and-swap), or with ``emergency`` restore the backup in full."""
    if emergency:
        row = _one(conn, "SELECT rollback_id, status, profiles_restored, sessions_restored, "
                   "policies_restored, conflicts FROM migration_backup.emergency_rollback(%s)", (backup_id,))
    else:
        row = _one(conn, "SELECT rollback_id, status, profiles_restored, sessions_restored, "
                   "policies_restored, conflicts FROM migration_backup.execute_rollback(%s, %s)",
                   (backup_id, reason))
    result = RollbackResult(*row)
    if result.status != "completed":
        error = conn.execute(
            "SELECT error FROM migration_backup.rollback_log WHERE rollback_id = %s", (result.rollback_id,)
        ).fetchone()
        text = error[0] if error else None
        raise OperationFailed(f"rollback {result.rollback_id} failed: {text or 'unknown'}", result, text)
    return result


def validate_rollback(conn: Conn, backup_id: str, rollback_id: str | None = None) -> CheckReport:
    """``validate_rollback_success(backup_id, rollback_id)``: content compared with the backup."""
    return CheckReport.from_rows(
        "validate_rollback_success",
        conn.execute("SELECT * FROM migration_backup.validate_rollback_success(%s, %s)",
                     (backup_id, rollback_id)),
    )


def infrastructure_status(conn: Conn) -> CheckReport:
    """``get_infrastructure_status()`` as a report (component, status, details)."""
    return CheckReport.from_rows(
        "get_infrastructure_status",
        conn.execute("SELECT * FROM migration_control.get_infrastructure_status()"),
    )


def initialize(conn: Conn) -> CheckReport:
    """``initialize_migration_infrastructure()``: exercises every component."""
    return CheckReport.from_rows(
        "initialize_migration_infrastructure",
        conn.execute("SELECT * FROM migration_control.initialize_migration_infrastructure()"),
    )


# ------------------------------------------ what an operator reads and runs (the CLI) ---

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
    conn.execute(*auth.configure_sql())


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
    row = _one(conn, """SELECT avg(d), percentile_cont(0.5) WITHIN GROUP (ORDER BY d), max(d)
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
        f"""SELECT a.pid, a.application_name, a.state, a.query_start
            FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
              AND ((l.classid::bigint << 32) | l.objid::bigint) = {LOCK_KEY_SQL}::bigint LIMIT 1""").fetchone()
    return LockHolder(*row) if row else None


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
    return MigrationState(*_one(
        conn, "SELECT state, users_on_legacy_roles, users_moved, policies_naming_legacy_roles, last_rollback, "
        "detail FROM migration_control.migration_state()"))


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


@dataclass(frozen=True)
class RoleMention:
    """One place outside the role column that names a legacy-only role."""

    kind: str  # policy, function, view, column default, check constraint, index, trigger, rule, enum type, data
    name: str  # schema-qualified, as SQL spells it (the key of [acknowledged_mentions])
    role: str
    context: str  # the text around the name, or "<n> row(s) hold '<role>'"


def role_mentions(conn: Conn) -> list[RoleMention]:
    """``find_role_mentions()``: every policy, function, view, default, constraint, index,
    trigger, rule, enum and data column that names a legacy-only role."""
    rows = conn.execute("SELECT object_kind, object_name, role_name, context "
                        "FROM migration_validation.find_role_mentions() ORDER BY 1, 2, 3").fetchall()
    return [RoleMention(*r) for r in rows]


@dataclass(frozen=True)
class MergedRow:
    """A role row the migration deleted because the user's other row ends on the same new role."""

    key: str  # the deleted row's key
    user: str | None  # the user it belonged to (the target's user column, from the backup)
    old_role: str
    new_role: str
    message: str  # names the unique index and the row kept


def merged_rows(conn: Conn, backup_id: str, user_column: str) -> list[MergedRow]:
    """Rows whose latest ``migration_log`` entry is 'merged' (deleted as merged duplicates), by key."""
    rows = conn.execute(
        """SELECT l.user_key, b.row_data ->> %s, l.old_role, l.new_role, coalesce(l.message, '')
             FROM migration_tracking.migration_log l
             LEFT JOIN migration_backup.user_profiles_complete_backup b
                    ON b.backup_id = %s AND b.user_key = l.user_key
            WHERE l.status = 'merged'
              AND NOT EXISTS (SELECT 1 FROM migration_tracking.migration_log m
                               WHERE m.user_key = l.user_key AND m.log_id > l.log_id)
            ORDER BY 2, 1""", (user_column, backup_id)).fetchall()
    return [MergedRow(*r) for r in rows]


def trigger_written_columns(conn: Conn) -> dict[str, str]:
    """``trigger_written_columns()``: profile columns a BEFORE UPDATE trigger sets -> the trigger."""
    rows = conn.execute("SELECT column_name, string_agg(trigger_name, ', ' ORDER BY trigger_name) "
                        "FROM migration_validation.trigger_written_columns() GROUP BY 1 ORDER BY 1").fetchall()
    return {column: trigger for column, trigger in rows}


@dataclass(frozen=True)
class RankComparison:
    """A policy or function that orders the enum role column's values (``role >= 'editor'``)."""

    kind: str  # policy | function
    name: str
    role_type: str
    detail: str


def rank_comparisons(conn: Conn) -> tuple[list[str], list[RankComparison]]:
    """The role enum's labels in rank order (empty unless the role column is an enum), and
    ``role_rank_comparisons()``: the policies and functions that compare them by rank."""
    labels = [r[0] for r in conn.execute(
        """SELECT e.enumlabel::text FROM migration_control.target_config c
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid = pg_catalog.to_regclass(
                      pg_catalog.format('%I.%I', c.profiles_schema, c.profiles_table))
              AND a.attname = c.role_column
             JOIN pg_catalog.pg_enum e ON e.enumtypid = a.atttypid
            ORDER BY e.enumsortorder""")]
    found = [RankComparison(*r) for r in conn.execute(
        "SELECT object_kind, object_name, role_type, detail "
        "FROM migration_validation.role_rank_comparisons()")]
    return labels, found


@dataclass(frozen=True)
class RoleDependent:
    """A policy, view or function of the API whose answer depends on the caller's role."""

    kind: str  # policy | view | materialized view | function
    name: str  # as SQL spells it: schema.table.policy, schema.view, schema.function
    relation: str | None  # the table or view as the access matrix names it (schema.name); None: function
    command: str  # a policy's command letter (r, a, w, d, *); r for views; x for functions
    api_roles: tuple[str, ...]  # the database roles a policy applies to ('public': all); () otherwise
    expression: str  # a policy's USING expression; a view's or function's definition
    roles: tuple[str, ...]  # the role names it decides on (legacy or new), directly or in a called function


def role_dependent_objects(conn: Conn) -> list[RoleDependent]:
    """``role_dependent_objects()``: what the API answers differently by role; each should let some role in."""
    rows = conn.execute("SELECT object_kind, object_name, relation, command, api_roles, expression, roles "
                        "FROM migration_validation.role_dependent_objects()").fetchall()
    return [RoleDependent(k, n, rel, c, tuple(a or ()), e or "", tuple(r)) for k, n, rel, c, a, e, r in rows]
