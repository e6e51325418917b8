"""The operations: backup, migrate, validate, roll back, each one SQL call with a typed result.

A step that reports ``failed`` raises :class:`OperationFailed` carrying its result and the
error the infrastructure recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from pytest_rolemig.checks import CheckReport
from pytest_rolemig.db.query import one

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


def backup(conn: Conn, name: str = "pre_migration_backup") -> BackupResult:
    """Back up profiles, sessions and policies; raise if the backup failed."""
    result = BackupResult(*one(
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
    result = MigrationResult(*one(
        conn,
        "SELECT run_id, batches, users_migrated, users_unchanged, policies_rewritten, status, error "
        "FROM migration_control.execute_role_migration(p_migration_name => %s, p_batch_size => %s, "
        "p_backup_id => %s, p_max_batches => %s, p_rewrite_policies => %s, p_run_id => %s)",
        (name, batch_size, backup_id, max_batches, rewrite_policies, run_id),
    ))
    if result.status == "failed":
        raise OperationFailed(f"migration {result.run_id} failed: {result.error}", result, result.error)
    return result


PROGRESS = "rolemig progress: "


def migrate_committed(conn: Conn, *, batch_size: int | None = None, backup_id: str | None = None,
                      max_batches: int | None = None, name: str = "role_system_migration",
                      on_batch: Callable[[dict[str, Any]], None] | None = None) -> MigrationResult:
    """Run (or resume) the migration with one COMMIT per batch (``run_role_migration``), as ``rolemig migrate`` does.

    ``conn`` must be in autocommit mode (the procedure commits). ``on_batch`` gets the run's totals
    after every committed batch (``run_id``, ``batches``, ``users_migrated``), from the procedure's
    progress notices. The run stops early after ``max_batches``, or after the batch in flight once
    another session called :func:`request_stop` with this connection's backend pid. Raises
    :class:`OperationFailed` when the run reports failure (the committed batches stay).
    """
    def progress(diag: psycopg.errors.Diagnostic) -> None:
        text = diag.message_primary or ""
        if on_batch is not None and diag.severity_nonlocalized == "NOTICE" and text.startswith(PROGRESS):
            on_batch(json.loads(text[len(PROGRESS):]))

    conn.add_notice_handler(progress)
    try:
        row = one(conn, "CALL migration_control.run_role_migration(p_migration_name => %s, p_batch_size => %s, "
                        "p_backup_id => %s, p_max_batches => %s, p_progress => %s, p_result => NULL)",
                  (name, batch_size, backup_id, max_batches, on_batch is not None))
    finally:
        conn.remove_notice_handler(progress)
    out = row[0]
    result = MigrationResult(out["run_id"], out["batches"], out["users_migrated"], out["users_unchanged"],
                             out["policies_rewritten"], out["status"], out["error"])
    if result.status == "failed":
        raise OperationFailed(f"migration {result.run_id} failed: {result.error}", result, result.error)
    return result


def request_stop(side: Conn, pid: int) -> None:
    """From another connection (``side``): stop the ``migrate_committed`` run in backend ``pid`` after its batch.

    The request holds until ``side`` closes.
    """
    side.execute("SELECT migration_control.request_stop(%s)", (pid,))


def security_checks(conn: Conn) -> CheckReport:
    """``validate_security()``: the infrastructure opens no door (owners, privileges, search_path, RLS)."""
    return CheckReport.from_rows("validate_security",
                                 conn.execute("SELECT * FROM migration_validation.validate_security()"))


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
        row = one(conn, "SELECT rollback_id, status, profiles_restored, sessions_restored, "
                   "policies_restored, conflicts FROM migration_backup.emergency_rollback(%s)", (backup_id,))
    else:
        row = one(conn, "SELECT rollback_id, status, profiles_restored, sessions_restored, "
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
