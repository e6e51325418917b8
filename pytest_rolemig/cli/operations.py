"""The commands that change the database: backup, migrate, validate, rollback (and list backups)."""

from __future__ import annotations

import signal
from dataclasses import asdict
from typing import Any

import psycopg

from pytest_rolemig import api
from pytest_rolemig.cli import errors, render
from pytest_rolemig.cli.context import (
    Context,
    backup_exists,
    base_backup,
    check_rows,
    confirm,
    release_lock,
    require_infrastructure,
    status_of,
    take_lock,
)
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.cli.progress import ProgressBar

# ------------------------------------------------------------------ backup ---

def cmd_backup(ctx: Context) -> int:
    """Take a backup and validate it."""
    require_infrastructure(ctx)
    try:
        result, error = api.backup(ctx.conn, ctx.args.name), None
    except api.OperationFailed as exc:
        result, error = exc.result, exc.error or "no error recorded"
    checks = check_rows(api.validate_backup(ctx.conn, result.backup_id))
    data = {**asdict(result), "error": error, "validation": checks}
    text = (f"Backup {result.backup_id}: {result.status} — {result.profiles_count} profiles, "
            f"{result.sessions_count} sessions, {result.policies_count} policies"
            + (f"\n  error: {error}" if error else "") + "\n" + render.checks(checks))
    ctx.emit(data, text)
    return errors.CHECKS_FAILED if error or status_of(checks) else errors.OK


def cmd_backups(ctx: Context) -> int:
    """List backups, newest first, with sizes and whether each is restorable."""
    require_infrastructure(ctx)
    rows = [asdict(b) for b in api.backups(ctx.conn, sizes=True)]
    ctx.emit(rows, render.table(
        ["backup_id", "name", "created", "status", "profiles", "sessions", "policies", "size", "restorable"],
        [[r["backup_id"], r["backup_name"], r["created_at"], r["status"], r["profiles_count"], r["sessions_count"],
          r["policies_count"], r["size_bytes"], r["restorable"]] for r in rows]))
    return errors.OK


# ----------------------------------------------------------------- migrate ---

class _StopAfterBatch:
    """First Ctrl-C: ask the server to stop after the batch in flight. Second Ctrl-C: abort it (it rolls back).

    The migration runs as one ``CALL`` that commits batch by batch, so the request goes to the
    server from a second connection (:func:`api.request_stop`), held until the call returns.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.requested = False
        self._previous: Any = None
        self._side: Any = None

    def __enter__(self) -> _StopAfterBatch:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C raises KeyboardInterrupt as usual
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        from pytest_rolemig.cli import connect

        try:  # said once the server has the request, so that it is true when read
            self._side = connect(self.ctx.dsn)
            api.request_stop(self._side, self.ctx.conn.info.backend_pid)
            self.ctx.err.write("\ninterrupt: stopping after the current batch (Ctrl-C again to abort it)\n")
        except (CliError, psycopg.Error) as exc:
            self.ctx.err.write(f"\ninterrupt: could not ask the server to stop ({exc}); "
                               "Ctrl-C again aborts the batch\n")
        self.ctx.err.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self._side is not None:
            self._side.close()


def _validation(ctx: Context, phase: str) -> list[dict[str, Any]]:
    return check_rows(api.validate(ctx.conn, phase))


def cmd_migrate(ctx: Context) -> int:
    """Run or resume the migration one committed batch at a time, with a progress bar."""
    a = ctx.args
    require_infrastructure(ctx, ("migration_control.execute_role_migration",))
    take_lock(ctx)
    try:
        if a.backup_id:
            backup_exists(ctx, a.backup_id)
            backup_id = a.backup_id
        else:  # resuming: the backup the migration started from, so one run has one base
            backup_id = base_backup(ctx)
            if backup_id is None:
                raise CliError(f"no restorable backup in database {ctx.dbname()!r}; the migration needs one",
                               errors.CHECKS_FAILED, hint="run `rolemig backup` first")
        size = a.batch_size or api.target_row(ctx.conn)["batch_size"]
        total = api.pending_users(ctx.conn, a.name)
        bar = ProgressBar(total, "migrate", stream=ctx.err, enabled=not a.quiet)
        # the run's totals so far, from its progress after each committed batch (all there is
        # when a second Ctrl-C aborts the call)
        run: dict[str, Any] = {"run_id": None, "batches": 0, "users_migrated": 0, "users_unchanged": 0,
                               "policies_rewritten": 0, "status": "partial", "error": None}

        def committed(totals: dict[str, Any]) -> None:
            # the bar counts the users who move (its total, pending_count); identity-mapped users
            # are never batched and are counted once, by the batch that finishes the run
            bar.advance(totals["users_migrated"] - run["users_migrated"], note=f"[{totals['run_id']}]")
            run.update(totals)

        interrupted = False
        with _StopAfterBatch(ctx) as stop:
            try:
                try:
                    step = api.migrate_committed(ctx.conn, name=a.name, batch_size=size, backup_id=backup_id,
                                                 max_batches=a.max_batches, on_batch=committed)
                except api.OperationFailed as exc:
                    step = exc.result
                run.update(asdict(step))
                interrupted = stop.requested and run["status"] == "partial"
            except KeyboardInterrupt:
                interrupted = True
        bar.close()
        left = api.users_on_legacy_roles(ctx.conn)
    finally:
        release_lock(ctx)

    failed = run["status"] == "failed"
    summary = {
        "backup_id": backup_id, "batch_size": size,
        "batches": run["batches"], "users_migrated": run["users_migrated"],
        "users_unchanged": run["users_unchanged"], "policies_rewritten": run["policies_rewritten"],
        "users_left": left, "interrupted": interrupted, "complete": run["status"] == "completed",
        "error": run["error"] if failed else None, "runs": [run["run_id"]] if run["run_id"] else [],
    }
    lines = [f"Migrated {summary['users_migrated']} users ({summary['users_unchanged']} unchanged) in "
             f"{summary['batches']} batches of up to {size}; policies rewritten: {summary['policies_rewritten']}; "
             f"users still on a legacy role: {left}"]
    code = errors.OK
    if failed:
        lines.append(f"FAILED: {summary['error']} (the failing batch was rolled back; earlier batches stay)")
        code = errors.CHECKS_FAILED
    elif interrupted:
        lines.append("Interrupted: every completed batch is committed, none is half-applied; "
                     "run `rolemig migrate` again to resume.")
        code = errors.INTERRUPTED
    elif left and a.max_batches:
        lines.append(f"Stopped after {a.max_batches} batch(es) as asked; run `rolemig migrate` to continue.")
    if summary["complete"] and not a.no_validate:
        checks = _validation(ctx, "post_migration")
        summary["validation"] = checks
        lines += ["", "Post-migration validation", render.checks(checks)]
        if code == errors.OK:
            code = status_of(checks)
    ctx.emit(summary, "\n".join(lines))
    return code


# ---------------------------------------------------------------- validate ---

def cmd_validate(ctx: Context) -> int:
    """Run the comprehensive validation of a phase; exit 1 when a check fails."""
    require_infrastructure(ctx)
    phase = ctx.args.phase
    if phase == "auto":
        migrated = api.has_completed_batch(ctx.conn)
        phase = ("post_migration" if migrated and api.state(ctx.conn).users_on_legacy_roles == 0
                 else "pre_migration")
    checks = _validation(ctx, phase)
    code = status_of(checks)
    counts = {s: sum(1 for c in checks if c["status"] == s) for s in ("pass", "warn", "fail")}
    ctx.emit({"phase": phase, "ok": code == errors.OK, "counts": counts, "checks": checks},
             f"Validation {phase}: {counts['pass']} passed, {counts['warn']} warnings, {counts['fail']} failed\n"
             + render.checks(checks))
    return code


# ---------------------------------------------------------------- rollback ---

def _rollback(ctx: Context, emergency: bool) -> int:
    require_infrastructure(ctx)
    backup_id = ctx.args.backup_id
    if backup_id:
        backup_exists(ctx, backup_id)
    else:  # the backup the migration started from; a later one would not undo it
        backup_id = base_backup(ctx)
        if backup_id is None:
            raise CliError(f"no restorable backup in database {ctx.dbname()!r}", errors.CHECKS_FAILED,
                           hint="`rolemig backups` lists the backups")
    # refused before the question: a backup taken after users moved cannot undo the migration
    api.refuse_backup_after_migration(ctx.conn, backup_id)
    what = "EMERGENCY-restore every backed-up row" if emergency else "roll back the role migration"
    confirm(ctx, f"{what} of database {ctx.dbname()!r} from backup {backup_id}")
    take_lock(ctx)
    # the rollback is one SQL statement (one transaction): the bar has one step, honestly
    bar = ProgressBar(1, "emergency-rollback" if emergency else "rollback", stream=ctx.err,
                      enabled=not ctx.args.quiet, unit="steps", step="step")
    error = None
    try:
        try:
            result = api.rollback(ctx.conn, backup_id, ctx.args.reason if not emergency else "",
                                  emergency=emergency)
        except api.OperationFailed as exc:
            result, error = exc.result, exc.error
        bar.advance(1)
    finally:
        bar.close()
        release_lock(ctx)
    data: dict[str, Any] = {**asdict(result), "backup_id": backup_id, "mode": "emergency" if emergency else "revert"}
    if result.status != "completed":
        data["error"] = error
        ctx.emit(data, f"Rollback {result.rollback_id} FAILED, nothing was changed: {error}")
        return errors.CHECKS_FAILED
    checks = check_rows(api.validate_rollback(ctx.conn, backup_id, result.rollback_id))
    data["validation"] = checks
    ctx.emit(data, f"Rollback {result.rollback_id} from {backup_id}: {result.profiles_restored} profiles, "
                   f"{result.sessions_restored} sessions, {result.policies_restored} policies restored; "
                   f"{result.conflicts} conflicts\n" + render.checks(checks))
    return status_of(checks)


def cmd_rollback(ctx: Context) -> int:
    """Revert what the migration changed (compare-and-swap), after confirmation."""
    return _rollback(ctx, emergency=False)


def cmd_emergency_rollback(ctx: Context) -> int:
    """Restore every backed-up row, constraint and policy, after confirmation."""
    return _rollback(ctx, emergency=True)
