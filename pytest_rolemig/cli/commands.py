"""One function per subcommand: read or change the database, print for people or as JSON."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, TextIO

import psycopg

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.cli import errors, plan, render
from pytest_rolemig.cli import settings as cli_settings
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.cli.progress import ProgressBar
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target


@dataclass
class Context:
    """What every command gets: its arguments, an autocommit connection, the output streams.

    ``rolemig config`` connects to nothing: its context has no connection.
    """

    args: argparse.Namespace
    connection: psycopg.Connection[Any] | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The connection (every command but ``config`` has one)."""
        if self.connection is None:
            raise RuntimeError(f"rolemig {self.args.command} needs a database connection")
        return self.connection

    @cached_property
    def settings(self) -> cli_settings.CliSettings:
        """The options, ``[tool.rolemig]`` and the defaults, resolved once; a bad value exits 2 naming it."""
        try:
            return cli_settings.resolve(self.args)
        except ConfigError as exc:
            raise CliError(str(exc), errors.USAGE) from None

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


def check_rows(report: CheckReport, key: str = "check_name") -> list[dict[str, Any]]:
    """A check report as the rows the SQL function returned (``key`` names its first column)."""
    return [{**({"validation_type": c.group} if c.group else {}), key: c.name, "status": c.status,
             "details": c.details} for c in report.checks]


def require_infrastructure(ctx: Context, functions: tuple[str, ...] = ()) -> None:
    """Fail with exit code 3 and a hint to run ``rolemig install`` when schemas or functions are missing."""
    missing = api.missing_infrastructure(ctx.conn, functions)
    if missing:
        raise CliError(
            f"the migration infrastructure is not installed in database {ctx.dbname()!r} "
            f"(missing: {', '.join(missing)})",
            errors.CONNECTION, hint="run `rolemig install` (see `rolemig install --help`)",
        )


def take_lock(ctx: Context) -> None:
    """Hold the migration advisory lock for the session, or fail with exit code 4."""
    if not api.try_lock(ctx.conn):
        holder = api.lock_holder(ctx.conn)
        who = (f" (server process {holder.pid}, {holder.application_name or 'no application name'}, "
               f"since {holder.query_start})" if holder else "")
        raise CliError(f"a migration is already running on database {ctx.dbname()!r}{who}", errors.LOCKED,
                       hint="wait for it to finish (`rolemig status`), then run the command again")


def release_lock(ctx: Context) -> None:
    """Give the session lock back (the connection closing would too)."""
    if not ctx.conn.closed:
        api.unlock(ctx.conn)


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
    if not api.backup_known(ctx.conn, backup_id):
        raise CliError(f"unknown backup id {backup_id!r} in database {ctx.dbname()!r}", errors.USAGE,
                       hint="`rolemig backups` lists the backups and whether each is restorable")


def _base_backup(ctx: Context) -> str | None:
    """The backup the current migration started from, else the newest restorable one."""
    return api.migration_base(ctx.conn) or api.newest_restorable(ctx.conn)


def _status_of(rows: list[dict[str, Any]]) -> int:
    return errors.CHECKS_FAILED if any(r["status"] == "fail" for r in rows) else errors.OK


# ----------------------------------------------------------------- install ---

@dataclass(frozen=True)
class InstallInputs:
    """What ``rolemig install`` stores, from its options, ``[tool.rolemig]`` and the defaults."""

    target: Target
    auth: AuthSettings
    mapping: RoleMapping
    demo_users: int


def install_inputs(ctx: Context) -> InstallInputs:
    """The checked inputs of ``install``, before it connects: a bad value exits 2 naming it and its source."""
    from pytest_rolemig import resources
    from pytest_rolemig.mapping import load_mapping

    r = ctx.settings.resolved
    try:
        return InstallInputs(
            target=r.target(), auth=r.auth(),
            mapping=load_mapping(r.path("mapping") or resources.demo_mapping()),
            demo_users=ctx.args.demo_users if ctx.args.demo_users is not None else r.integer("users", 1))
    except ConfigError as exc:
        raise CliError(str(exc), errors.USAGE) from None


def cmd_install(ctx: Context) -> int:
    """Install (or re-install) the infrastructure, configure the target, load the mapping."""
    from pytest_rolemig import resources
    from pytest_rolemig.db import scalar
    from pytest_rolemig.errors import InstallError, MappingRefused

    a = ctx.args
    r = ctx.settings.resolved
    inputs = install_inputs(ctx)
    target, auth, mapping, demo_users = inputs.target, inputs.auth, inputs.mapping, inputs.demo_users
    seeded = None
    try:
        if a.demo:
            from pytest_rolemig.databases import load_schema_file

            exists = scalar(ctx.conn, "SELECT to_regclass(%s) IS NOT NULL", (target.profiles_table,))
            if not exists:
                with ctx.conn.transaction():
                    load_schema_file(ctx.conn, resources.demo_schema())
        api.install(ctx.conn, target, mapping, auth)
        if a.demo and demo_users:
            from pytest_rolemig.seeding import seed_users

            if api.state(ctx.conn).users_on_legacy_roles == 0:
                with ctx.conn.transaction():
                    seeded = seed_users(ctx.conn, target, list(mapping.legacy_roles), demo_users)
    except MappingRefused as exc:  # the database said no; nothing was installed or changed
        raise CliError(str(exc), errors.CHECKS_FAILED) from None
    except InstallError as exc:
        raise CliError(str(exc), errors.CONNECTION,
                       hint="load the application schema first, or name its tables with --profiles-table etc. "
                            "(or in [tool.rolemig] of pyproject.toml)"
                       + ("" if a.demo else " (or use --demo for the bundled demo application)")) from None
    except ConfigError as exc:
        raise CliError(str(exc), errors.USAGE) from None
    status = check_rows(api.infrastructure_status(ctx.conn), "component")
    data = {"installed": True, "database": ctx.dbname(), "mapping": mapping.source,
            "target": api.target_row(ctx.conn), "settings_file": ctx.settings.file and str(ctx.settings.file.path),
            "sources": {k: v for k, v in r.sources.items() if k in cli_settings.TARGET_KEYS},
            "seeded_users": seeded.users if seeded else 0, "status": status}
    lines = [f"Installed the migration infrastructure in {ctx.dbname()!r}",
             f"  mapping: {mapping.source} ({len(mapping.mapping)} legacy roles -> {len(mapping.new_roles)} new roles)",
             f"  target:  {target.profiles_table}.{target.role_column} (key {target.key_column}), "
             f"sessions {target.sessions_table or 'none'}",
             f"  settings: {ctx.settings.file_shown}"]
    if seeded:
        lines.append(f"  demo:    {seeded.users} users, {seeded.sessions} sessions seeded")
    lines += ["", render.checks(status)]
    ctx.emit(data, "\n".join(lines))
    return _status_of([r for r in status if r["component"] in ("schemas", "tables", "functions", "target", "mapping")])


# ------------------------------------------------------------------ config ---

def cmd_config(ctx: Context) -> int:
    """Print every setting the CLI reads, its value and where it came from; connect to nothing."""
    cfg = ctx.settings
    try:
        values, lines = cfg.values(), cfg.lines()
    except ConfigError as exc:
        raise CliError(str(exc), errors.USAGE) from None
    data = {"settings_file": str(cfg.file.path) if cfg.file else None,
            "settings": {name: {"value": value, "source": cfg.resolved.sources[name]}
                         for name, value in values.items()}}
    ctx.emit(data, "\n".join([f"Settings file: {cfg.file_shown}", *lines]))
    return errors.OK


def _stored_differences(ctx: Context) -> list[str]:
    """Target settings of ``[tool.rolemig]`` that the stored target does not hold (the file is not applied)."""
    cfg = ctx.settings
    if cfg.file is None:
        return []
    wanted_target, wanted_auth = cfg.resolved.target(), cfg.resolved.auth()
    stored_target, stored_auth = api.stored_target(ctx.conn)
    out = []
    for name in cli_settings.TARGET_KEYS:
        if name not in cfg.file.values:
            continue
        attr = "auth_role" if name == "api_role" else name
        if name in ("api_role", "anon_role", "jwt_claims", "pre_request"):
            have, want = getattr(stored_auth, attr), getattr(wanted_auth, attr)
        else:
            have, want = getattr(stored_target, attr), getattr(wanted_target, attr)
        if have != want:
            out.append(f"{name}: stored {have!r}, {cfg.resolved.sources[name]} says {want!r}")
    return out


# ------------------------------------------------------------------ status ---

_NEXT_STEP = {
    "not migrated": "Next: `rolemig backup`, then `rolemig migrate`.",
    "migrating": "Next: `rolemig migrate` resumes and finishes the migration; `rolemig rollback` undoes it.",
    "migrated": "Next: `rolemig validate`; `rolemig rollback` undoes the migration.",
    "rolled back": "Next: `rolemig validate --phase post_rollback`; `rolemig migrate` starts again.",
}

def _backup_row(b: api.BackupInfo) -> dict[str, Any]:
    row = asdict(b)
    row.pop("size_bytes")
    return row


def cmd_status(ctx: Context) -> int:
    """Infrastructure, backups, batches, users left, last validation, settings: one screen."""
    require_infrastructure(ctx)
    infra = check_rows(api.infrastructure_status(ctx.conn), "component")
    backups = [_backup_row(b) for b in api.backups(ctx.conn, limit=5)]
    runs = [asdict(r) for r in api.runs(ctx.conn, 10)]
    summary = api.last_validation(ctx.conn)
    last_validation = asdict(summary) if summary else None
    try:
        state: dict[str, Any] | None = asdict(api.state(ctx.conn))
        roles = [asdict(r) for r in api.role_counts(ctx.conn)]
    except (LookupError, psycopg.Error):
        state, roles = None, []
    settings_file, shown, differences = None, "", []
    try:
        settings_file = str(ctx.settings.file.path) if ctx.settings.file else None
        shown = ctx.settings.file_shown
        differences = _stored_differences(ctx)
    except (CliError, ConfigError) as exc:  # a bad [tool.rolemig] does not hide the database's state
        shown = shown or "unreadable"
        differences = [f"cannot compare: {exc}"]
    except (LookupError, psycopg.Error):
        pass
    data = {"database": ctx.dbname(), "infrastructure": infra, "backups": backups, "state": state,
            "runs": runs, "users_to_migrate": state["users_on_legacy_roles"] if state else None,
            "users_per_role": roles, "last_validation": last_validation,
            "settings_file": settings_file,
            "settings_differences": differences}
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
    if summary:
        lines.append(f"Last validation {summary.validation_run} at {render._cell(summary.checked_at)}: "
                     f"{summary.passed} passed, {summary.warnings} warnings, {summary.failed} failed"
                     + (f" ({', '.join(summary.failing)})" if summary.failing else ""))
    else:
        lines.append("Last validation: none yet (`rolemig validate`)")
    lines += ["", f"Settings file: {shown}"]
    if differences:
        lines.append("The stored target differs from the settings file (run `rolemig install` to store it):")
        lines += [f"  {d}" for d in differences]
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
    return errors.CHECKS_FAILED if error or _status_of(checks) else errors.OK


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
            backup_id = _base_backup(ctx)
            if backup_id is None:
                raise CliError(f"no restorable backup in database {ctx.dbname()!r}; the migration needs one",
                               errors.CHECKS_FAILED, hint="run `rolemig backup` first")
        size = a.batch_size or api.target_row(ctx.conn)["batch_size"]
        total = api.pending_users(ctx.conn, a.name)
        bar = ProgressBar(total, "migrate", stream=ctx.err, enabled=not a.quiet)
        calls: list[dict[str, Any]] = []
        interrupted = False
        with _StopAfterBatch(ctx) as stop:
            try:
                while True:
                    try:
                        step = api.migrate(ctx.conn, name=a.name, batch_size=size, backup_id=backup_id,
                                           max_batches=1, run_id=calls[0]["run_id"] if calls else None)
                    except api.OperationFailed as exc:
                        step = exc.result
                    result = asdict(step)
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
        left = api.state(ctx.conn).users_on_legacy_roles
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
        migrated = api.has_completed_batch(ctx.conn)
        phase = ("post_migration" if migrated and api.state(ctx.conn).users_on_legacy_roles == 0
                 else "pre_migration")
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
        backup_id = _base_backup(ctx)
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
    return _status_of(checks)


def cmd_rollback(ctx: Context) -> int:
    """Revert what the migration changed (compare-and-swap), after confirmation."""
    return _rollback(ctx, emergency=False)


def cmd_emergency_rollback(ctx: Context) -> int:
    """Restore every backed-up row, constraint and policy, after confirmation."""
    return _rollback(ctx, emergency=True)


COMMANDS = {
    "install": cmd_install, "config": cmd_config, "status": cmd_status, "plan": cmd_plan, "backup": cmd_backup,
    "migrate": cmd_migrate, "validate": cmd_validate, "rollback": cmd_rollback,
    "emergency-rollback": cmd_emergency_rollback, "backups": cmd_backups,
}

OFFLINE = frozenset({"config"})
"""The commands that connect to no database."""

CHECK_FIRST = {"install": install_inputs}
"""Per command, the check of its settings that runs before it connects."""
