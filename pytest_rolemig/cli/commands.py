"""One function per subcommand: read or change the database, print for people or as JSON."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import psycopg

from pytest_rolemig.cli import errors, plan, render
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.cli.progress import ProgressBar
from pytest_rolemig.db import scalar

SCHEMAS = ("migration_tracking", "migration_backup", "migration_validation", "migration_control")
LOCK_SQL = "hashtext('pytest_rolemig.migration')"


@dataclass
class Context:
    """What every command gets: its arguments, an autocommit connection, the output streams."""

    args: argparse.Namespace
    conn: psycopg.Connection[Any]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def json(self) -> bool:
        """True with ``--json``: print machine-readable output."""
        return bool(self.args.json)

    def emit(self, data: Any, text: str) -> None:
        """Print ``data`` as JSON with ``--json``, else ``text``."""
        self.out.write((render.to_json(data) if self.json else text) + "\n")
        self.out.flush()

    def dbname(self) -> str:
        """The connected database's name, for messages."""
        return self.conn.info.dbname


def _rows(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def query(conn: psycopg.Connection[Any], text: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a query as dicts."""
    return _rows(conn.execute(text, params))


def require_infrastructure(ctx: Context, functions: tuple[str, ...] = ()) -> None:
    """Fail with exit code 3 and a hint to run ``rolemig install`` when schemas or functions are missing."""
    missing = [r[0] for r in ctx.conn.execute(
        "SELECT s FROM unnest(%s::text[]) AS s WHERE to_regnamespace(s) IS NULL", (list(SCHEMAS),))]
    if not missing and functions:
        missing = [r[0] for r in ctx.conn.execute(
            """SELECT f FROM unnest(%s::text[]) AS f
               WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                                 WHERE n.nspname = split_part(f, '.', 1) AND p.proname = split_part(f, '.', 2))""",
            (list(functions),))]
    if missing:
        raise CliError(
            f"the migration infrastructure is not installed in database {ctx.dbname()!r} "
            f"(missing: {', '.join(missing)})",
            errors.CONNECTION, hint="run `rolemig install` (see `rolemig install --help`)",
        )


def take_lock(ctx: Context) -> None:
    """Hold the migration advisory lock for the session, or fail with exit code 4."""
    if not scalar(ctx.conn, f"SELECT pg_try_advisory_lock({LOCK_SQL})"):
        holder = ctx.conn.execute(
            f"""SELECT a.pid, a.application_name, a.state, a.query_start
                FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
                  AND ((l.classid::bigint << 32) | l.objid::bigint) = {LOCK_SQL}::bigint LIMIT 1"""
        ).fetchone()
        who = (f" (server process {holder[0]}, {holder[1] or 'no application name'}, since {holder[3]})"
               if holder else "")
        raise CliError(f"a migration is already running on database {ctx.dbname()!r}{who}", errors.LOCKED,
                       hint="wait for it to finish (`rolemig status`), then run the command again")


def release_lock(ctx: Context) -> None:
    """Give the session lock back (the connection closing would too)."""
    if not ctx.conn.closed:
        ctx.conn.execute(f"SELECT pg_advisory_unlock({LOCK_SQL})")


def confirm(ctx: Context, question: str, stdin: TextIO | None = None) -> None:
    """Ask before a destructive step unless ``--yes``; without a terminal, refuse."""
    if ctx.args.yes:
        return
    stdin = stdin or sys.stdin
    if stdin is None or not stdin.isatty():
        raise CliError(f"refusing to {question} without confirmation: standard input is not a terminal",
                       errors.USAGE, hint="pass --yes to confirm non-interactively")
    ctx.err.write(f"About to {question}.\nType 'yes' to continue: ")
    ctx.err.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("cancelled; nothing was changed", errors.DECLINED)


def backup_exists(ctx: Context, backup_id: str) -> None:
    """Fail with exit code 2 (naming where to look) when the backup id is unknown."""
    if not ctx.conn.execute("SELECT 1 FROM migration_backup.backup_log WHERE backup_id = %s",
                            (backup_id,)).fetchone():
        raise CliError(f"unknown backup id {backup_id!r} in database {ctx.dbname()!r}", errors.USAGE,
                       hint="`rolemig backups` lists the backups and whether each is restorable")


def migration_base(ctx: Context) -> str | None:
    """The backup the current migration started from (None before any user moved)."""
    base: str | None = scalar(ctx.conn, "SELECT backup_id FROM migration_backup.migration_base()")
    return base


def newest_restorable(ctx: Context) -> str | None:
    """The newest backup whose counts and checksums still match."""
    row = ctx.conn.execute(
        "SELECT backup_id FROM migration_backup.list_available_backups() WHERE restorable LIMIT 1").fetchone()
    return row[0] if row else None


def _status_of(rows: list[dict[str, Any]]) -> int:
    return errors.CHECKS_FAILED if any(r["status"] == "fail" for r in rows) else errors.OK


# ----------------------------------------------------------------- install ---

def cmd_install(ctx: Context) -> int:
    """Install (or re-install) the infrastructure, configure the target, load the mapping."""
    from pytest_rolemig import installer, resources
    from pytest_rolemig.errors import ConfigError, InstallError, MappingRefused
    from pytest_rolemig.mapping import load_mapping
    from pytest_rolemig.postgrest import AuthSettings, parse_claims
    from pytest_rolemig.target import Target

    a = ctx.args
    try:
        mapping = load_mapping(a.mapping or resources.demo_mapping())
    except ConfigError as exc:
        raise CliError(str(exc), errors.USAGE) from None
    try:
        auth = AuthSettings(auth_role=a.api_role, anon_role=a.anon_role, pre_request=a.pre_request or None,
                            jwt_claims=parse_claims(a.jwt_claims) if a.jwt_claims else None)
    except ValueError as exc:
        raise CliError(f"--jwt-claims: {exc}", errors.USAGE) from None
    sessions = None if a.sessions_table.strip().lower() in ("", "none") else a.sessions_table
    target = Target(profiles_table=a.profiles_table, key_column=a.key_column, role_column=a.role_column,
                    user_column=a.user_column,
                    sessions_table=sessions, sessions_user_column=a.sessions_user_column,
                    policy_schemas=tuple(a.policy_schema or ("public", "auth")), batch_size=a.batch_size)
    seeded = None
    try:
        if a.demo:
            from pytest_rolemig.databases import load_schema_file

            exists = scalar(ctx.conn, "SELECT to_regclass(%s) IS NOT NULL", (target.profiles_table,))
            if not exists:
                with ctx.conn.transaction():
                    load_schema_file(ctx.conn, resources.demo_schema())
        installer.install(ctx.conn, target, mapping, auth)
        if a.demo and a.demo_users:
            from pytest_rolemig.seeding import seed_users

            users = plan.remaining_users(ctx.conn, plan.target_config(ctx.conn))
            if users == 0:
                with ctx.conn.transaction():
                    seeded = seed_users(ctx.conn, target, list(mapping.legacy_roles), a.demo_users)
    except MappingRefused as exc:  # the database said no; nothing was installed or changed
        raise CliError(str(exc), errors.CHECKS_FAILED) from None
    except InstallError as exc:
        raise CliError(str(exc), errors.CONNECTION,
                       hint="load the application schema first, or name its tables with --profiles-table etc."
                       + ("" if a.demo else " (or use --demo for the bundled demo application)")) from None
    except ConfigError as exc:
        raise CliError(str(exc), errors.USAGE) from None
    status = query(ctx.conn, "SELECT * FROM migration_control.get_infrastructure_status()")
    data = {"installed": True, "database": ctx.dbname(), "mapping": mapping.source,
            "target": plan.target_config(ctx.conn),
            "seeded_users": seeded.users if seeded else 0, "status": status}
    lines = [f"Installed the migration infrastructure in {ctx.dbname()!r}",
             f"  mapping: {mapping.source} ({len(mapping.mapping)} legacy roles -> {len(mapping.new_roles)} new roles)",
             f"  target:  {target.profiles_table}.{target.role_column} (key {target.key_column}), "
             f"sessions {target.sessions_table or 'none'}"]
    if seeded:
        lines.append(f"  demo:    {seeded.users} users, {seeded.sessions} sessions seeded")
    lines += ["", render.checks(status)]
    ctx.emit(data, "\n".join(lines))
    return _status_of([r for r in status if r["component"] in ("schemas", "tables", "functions", "target", "mapping")])


# ------------------------------------------------------------------ status ---

_NEXT_STEP = {
    "not migrated": "Next: `rolemig backup`, then `rolemig migrate`.",
    "migrating": "Next: `rolemig migrate` resumes and finishes the migration; `rolemig rollback` undoes it.",
    "migrated": "Next: `rolemig validate`; `rolemig rollback` undoes the migration.",
    "rolled back": "Next: `rolemig validate --phase post_rollback`; `rolemig migrate` starts again.",
}

def cmd_status(ctx: Context) -> int:
    """Infrastructure, backups, batches, users left, last validation: one screen."""
    require_infrastructure(ctx)
    infra = query(ctx.conn, "SELECT * FROM migration_control.get_infrastructure_status()")
    backups = query(ctx.conn, "SELECT * FROM migration_backup.list_available_backups() LIMIT 5")
    runs = query(ctx.conn, "SELECT * FROM migration_control.migration_runs(10)")
    last_validation = query(ctx.conn, """
        SELECT validation_run, max(checked_at) AS checked_at,
               count(*) FILTER (WHERE status = 'pass') AS passed,
               count(*) FILTER (WHERE status = 'warn') AS warnings,
               count(*) FILTER (WHERE status = 'fail') AS failed,
               coalesce(array_agg(check_name ORDER BY check_name) FILTER (WHERE status = 'fail'), '{}') AS failing
        FROM migration_validation.validation_results
        GROUP BY validation_run ORDER BY max(checked_at) DESC LIMIT 1""")
    try:
        state = query(ctx.conn, "SELECT * FROM migration_control.migration_state()")[0]
        roles = plan.role_counts(ctx.conn, plan.target_config(ctx.conn))
    except (LookupError, psycopg.Error):
        state, roles = None, []
    data = {"database": ctx.dbname(), "infrastructure": infra, "backups": backups, "state": state,
            "runs": runs, "users_to_migrate": state["users_on_legacy_roles"] if state else None,
            "users_per_role": roles, "last_validation": last_validation[0] if last_validation else None}
    lines = [f"Database {ctx.dbname()!r}", "", "Infrastructure", render.checks(infra), "",
             "Backups (newest first)",
             render.table(["backup_id", "name", "created", "status", "profiles", "sessions", "policies",
                           "restorable"],
                          [[b["backup_id"], b["backup_name"], b["created_at"], b["status"], b["profiles_count"],
                            b["sessions_count"], b["policies_count"], b["restorable"]] for b in backups]), ""]
    if state:
        lines.append(f"State: {state['state']} ({state['detail']}); "
                     f"users still on a legacy role: {state['users_on_legacy_roles']}")
        lines.append(_NEXT_STEP[state["state"]])
    else:
        lines.append("State: unknown (the target tables cannot be read; see the infrastructure checks)")
    lines += ["", "Runs (newest first)",
              render.table(["kind", "id", "started", "finished", "status", "batches", "users", "backup"],
                           [[r["kind"], r["id"], r["started_at"], r["finished_at"], r["status"], r["batches"],
                             r["users"], r["backup_id"]] for r in runs])]
    lines.append("")
    if last_validation:
        v = last_validation[0]
        lines.append(f"Last validation {v['validation_run']} at {render._cell(v['checked_at'])}: "
                     f"{v['passed']} passed, {v['warnings']} warnings, {v['failed']} failed"
                     + (f" ({', '.join(v['failing'])})" if v["failing"] else ""))
    else:
        lines.append("Last validation: none yet (`rolemig validate`)")
    ctx.emit(data, "\n".join(lines))
    return _status_of([r for r in infra if r["component"] in ("schemas", "tables", "functions", "target")])


# -------------------------------------------------------------------- plan ---

def cmd_plan(ctx: Context) -> int:
    """Dry run: the migration in a rolled-back transaction, and what it would change."""
    require_infrastructure(ctx, ("migration_control.execute_role_migration",))
    data = plan.build_plan(ctx.conn, ctx.args.batch_size, with_access=not ctx.args.no_access)
    lines = [f"Plan for database {ctx.dbname()!r} (dry run: the migration ran in a transaction that was "
             "rolled back; nothing was written)", "", "Users per role"]
    lines.append(render.table(["legacy role", "new role", "users", "action"],
                              [[r["legacy_role"], r["new_role"], r["users"], r["action"]]
                               for r in data["users_per_role"]]))
    lines += ["", f"Batches: {data['batches']} of up to {data['batch_size']} users; "
                  f"measured sample: {data['sample']['users']} users in {data['sample']['seconds']:.3f}s; "
                  f"estimated time: {data['estimated_seconds']:.1f}s "
                  f"(the whole dry run took {data['dry_run_seconds']:.2f}s)", "",
              f"Policies rewritten: {len(data['policies_rewritten'])}"]
    for p in data["policies_rewritten"]:
        lines.append(f"  {p['schema']}.{p['table']} \"{p['policy']}\" ({p['change']})")
        for clause in ("using", "check"):
            if p[f"old_{clause}"] != p[f"new_{clause}"]:
                lines.append(f"    {clause.upper():5} old: {p[f'old_{clause}']}")
                lines.append(f"    {'':5} new: {p[f'new_{clause}']}")
    if data["access_method"]:
        lines += ["", "Access changes per legacy role (rows of other users; own rows are unaffected)",
                  f"  method: {data['access_method']}"]
        for role, change in data["access_changes"].items():
            if not change["gains"] and not change["loses"] and not change["errors"]:
                lines.append(f"  {role} -> {change['new_role']}: no change")
                continue
            lines.append(f"  {role} -> {change['new_role']}:")
            for label in ("gains", "loses"):
                for table, ops in change[label].items():
                    lines.append(f"    {label} {', '.join(ops)} on {table}")
            for err in change["errors"]:
                lines.append(f"    could not evaluate: {err}")
    for note in data["notes"]:
        lines.append(f"note: {note}")
    if data["unmapped_roles"]:
        lines.append(f"UNMAPPED roles (the migration will refuse): {', '.join(data['unmapped_roles'])}")
    for err in data["errors"]:
        lines.append(f"the migration would FAIL: {err}")
    ctx.emit(data, "\n".join(lines))
    return errors.CHECKS_FAILED if data["errors"] or data["unmapped_roles"] else errors.OK


# ------------------------------------------------------------------ backup ---

def cmd_backup(ctx: Context) -> int:
    """Take a backup and validate it."""
    require_infrastructure(ctx)
    row = query(ctx.conn, "SELECT * FROM migration_backup.create_comprehensive_backup(%s)", (ctx.args.name,))[0]
    error = None
    if row["status"] != "completed":
        error = scalar(ctx.conn, "SELECT error FROM migration_backup.backup_log WHERE backup_id = %s",
                       (row["backup_id"],))
    checks = query(ctx.conn, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (row["backup_id"],))
    data = {**row, "error": error, "validation": checks}
    text = (f"Backup {row['backup_id']}: {row['status']} — {row['profiles_count']} profiles, "
            f"{row['sessions_count']} sessions, {row['policies_count']} policies"
            + (f"\n  error: {error}" if error else "") + "\n" + render.checks(checks))
    ctx.emit(data, text)
    return errors.CHECKS_FAILED if error or _status_of(checks) else errors.OK


def cmd_backups(ctx: Context) -> int:
    """List backups, newest first, with sizes and whether each is restorable."""
    require_infrastructure(ctx)
    rows = query(ctx.conn, "SELECT * FROM migration_backup.list_available_backups()")
    sizes = {r["backup_id"]: r["size_bytes"] for r in
             query(ctx.conn, "SELECT backup_id, size_bytes FROM migration_backup.get_backup_summary()")}
    for r in rows:
        r["size_bytes"] = sizes.get(r["backup_id"])
    ctx.emit(rows, render.table(
        ["backup_id", "name", "created", "status", "profiles", "sessions", "policies", "size", "restorable"],
        [[r["backup_id"], r["backup_name"], r["created_at"], r["status"], r["profiles_count"], r["sessions_count"],
          r["policies_count"], r["size_bytes"], r["restorable"]] for r in rows]))
    return errors.OK


# ----------------------------------------------------------------- migrate ---

class _StopAfterBatch:
    """First Ctrl-C: finish the current batch, then stop. Second Ctrl-C: interrupt now (the batch rolls back)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.requested = False
        self._previous: Any = None

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
        self.ctx.err.write("\ninterrupt: stopping after the current batch (Ctrl-C again to abort it)\n")
        self.ctx.err.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _validation(ctx: Context, phase: str) -> list[dict[str, Any]]:
    return query(ctx.conn, "SELECT * FROM migration_validation.run_comprehensive_validation(%s)", (phase,))


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
            backup_id = migration_base(ctx) or newest_restorable(ctx)
            if backup_id is None:
                raise CliError(f"no restorable backup in database {ctx.dbname()!r}; the migration needs one",
                               errors.CHECKS_FAILED, hint="run `rolemig backup` first")
        cfg = plan.target_config(ctx.conn)
        size = a.batch_size or cfg["batch_size"]
        total = plan.pending_users(ctx.conn, cfg, a.name)
        bar = ProgressBar(total, "migrate", stream=ctx.err, enabled=not a.quiet)
        calls: list[dict[str, Any]] = []
        interrupted = False
        with _StopAfterBatch(ctx) as stop:
            try:
                while True:
                    cur = ctx.conn.execute(
                        "SELECT * FROM migration_control.execute_role_migration(p_migration_name => %s, "
                        "p_batch_size => %s, p_backup_id => %s, p_max_batches => 1, p_run_id => %s)",
                        (a.name, size, backup_id, calls[0]["run_id"] if calls else None))
                    result = _rows(cur)[0]
                    calls.append(result)
                    if result["batches"]:
                        bar.advance((result["users_migrated"] or 0) + (result["users_unchanged"] or 0),
                                    note=f"[{result['run_id']}]")
                    if result["status"] != "partial":  # 'completed' (policies rewritten) or 'failed'
                        break
                    if a.max_batches and sum(c["batches"] or 0 for c in calls) >= a.max_batches:
                        break
                    if stop.requested:
                        interrupted = True
                        break
            except KeyboardInterrupt:
                interrupted = True
        bar.close()
        left = plan.remaining_users(ctx.conn, cfg)
    finally:
        release_lock(ctx)

    failed = [c for c in calls if c["status"] == "failed"]
    summary = {
        "backup_id": backup_id, "batch_size": size,
        "batches": sum(c["batches"] or 0 for c in calls),
        "users_migrated": sum(c["users_migrated"] or 0 for c in calls),
        "users_unchanged": sum(c["users_unchanged"] or 0 for c in calls),
        "policies_rewritten": sum(c["policies_rewritten"] or 0 for c in calls),
        "users_left": left, "interrupted": interrupted,
        "complete": bool(calls) and calls[-1]["status"] == "completed",
        "error": failed[0]["error"] if failed else None, "runs": sorted({c["run_id"] for c in calls if c["run_id"]}),
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
            code = _status_of(checks)
    ctx.emit(summary, "\n".join(lines))
    return code


# ---------------------------------------------------------------- validate ---

def cmd_validate(ctx: Context) -> int:
    """Run the comprehensive validation of a phase; exit 1 when a check fails."""
    require_infrastructure(ctx)
    phase = ctx.args.phase
    if phase == "auto":
        cfg = plan.target_config(ctx.conn)
        migrated = scalar(ctx.conn, "SELECT EXISTS (SELECT 1 FROM migration_tracking.migration_batch "
                                    "WHERE status = 'completed')")
        phase = "post_migration" if migrated and plan.remaining_users(ctx.conn, cfg) == 0 else "pre_migration"
    checks = _validation(ctx, phase)
    code = _status_of(checks)
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
        backup_id = migration_base(ctx) or newest_restorable(ctx)
        if backup_id is None:
            raise CliError(f"no restorable backup in database {ctx.dbname()!r}", errors.CHECKS_FAILED,
                           hint="`rolemig backups` lists the backups")
    # refused before the question: a backup taken after users moved cannot undo the migration
    ctx.conn.execute("SELECT migration_backup.refuse_backup_after_migration(%s)", (backup_id,))
    what = "EMERGENCY-restore every backed-up row" if emergency else "roll back the role migration"
    confirm(ctx, f"{what} of database {ctx.dbname()!r} from backup {backup_id}")
    take_lock(ctx)
    # the rollback is one SQL statement (one transaction): the bar has one step, honestly
    bar = ProgressBar(1, "emergency-rollback" if emergency else "rollback", stream=ctx.err,
                      enabled=not ctx.args.quiet, unit="steps", step="step")
    try:
        if emergency:
            cur = ctx.conn.execute("SELECT * FROM migration_backup.emergency_rollback(%s)", (backup_id,))
        else:
            cur = ctx.conn.execute("SELECT * FROM migration_backup.execute_rollback(%s, %s)",
                                   (backup_id, ctx.args.reason))
        result = _rows(cur)[0]
        bar.advance(1)
    finally:
        bar.close()
        release_lock(ctx)
    data: dict[str, Any] = {**result, "backup_id": backup_id, "mode": "emergency" if emergency else "revert"}
    if result["status"] != "completed":
        data["error"] = scalar(ctx.conn, "SELECT error FROM migration_backup.rollback_log WHERE rollback_id = %s",
                               (result["rollback_id"],))
        ctx.emit(data, f"Rollback {result['rollback_id']} FAILED, nothing was changed: {data['error']}")
        return errors.CHECKS_FAILED
    checks = query(ctx.conn, "SELECT * FROM migration_backup.validate_rollback_success(%s, %s)",
                   (backup_id, result["rollback_id"]))
    data["validation"] = checks
    ctx.emit(data, f"Rollback {result['rollback_id']} from {backup_id}: {result['profiles_restored']} profiles, "
                   f"{result['sessions_restored']} sessions, {result['policies_restored']} policies restored; "
                   f"{result['conflicts']} conflicts\n" + render.checks(checks))
    return _status_of(checks)


def cmd_rollback(ctx: Context) -> int:
    """Revert what the migration changed (compare-and-swap), after confirmation."""
    return _rollback(ctx, emergency=False)


def cmd_emergency_rollback(ctx: Context) -> int:
    """Restore every backed-up row, constraint and policy, after confirmation."""
    return _rollback(ctx, emergency=True)


COMMANDS = {
    "install": cmd_install, "status": cmd_status, "plan": cmd_plan, "backup": cmd_backup,
    "migrate": cmd_migrate, "validate": cmd_validate, "rollback": cmd_rollback,
    "emergency-rollback": cmd_emergency_rollback, "backups": cmd_backups,
}

