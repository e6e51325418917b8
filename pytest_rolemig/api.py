"""A small Python API over the SQL functions: backup, migrate, validate, rollback, status.

Every function takes a psycopg 3 connection and calls exactly one SQL function
of the infrastructure, so what the gate, the fixtures and a team's own tests do
is what an operator would do in ``psql``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pytest_rolemig.checks import CheckReport

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
    """A migration step reported status ``failed``; the database kept its previous state."""


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
        raise OperationFailed(f"backup {result.backup_id} failed: {error[0] if error else 'no error recorded'}")
    return result


def validate_backup(conn: Conn, backup_id: str) -> CheckReport:
    """Recompute a backup's counts and checksums."""
    return CheckReport.from_rows(
        "validate_backup_completeness",
        conn.execute("SELECT * FROM migration_backup.validate_backup_completeness(%s)", (backup_id,)),
    )


def migrate(conn: Conn, *, batch_size: int | None = None, backup_id: str | None = None,
            max_batches: int | None = None, name: str = "role_system_migration",
            rewrite_policies: bool = True) -> MigrationResult:
    """Run (or resume) the role migration; raise :class:`OperationFailed` if it reports failure."""
    result = MigrationResult(*_one(
        conn,
        "SELECT run_id, batches, users_migrated, users_unchanged, policies_rewritten, status, error "
        "FROM migration_control.execute_role_migration(p_migration_name => %s, p_batch_size => %s, "
        "p_backup_id => %s, p_max_batches => %s, p_rewrite_policies => %s)",
        (name, batch_size, backup_id, max_batches, rewrite_policies),
    ))
    if result.status == "failed":
        raise OperationFailed(f"migration {result.run_id} failed: {result.error}")
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
        raise OperationFailed(f"rollback {result.rollback_id} failed: {error[0] if error else 'unknown'}")
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
