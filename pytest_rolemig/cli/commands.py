"""The commands that set up and look: install, config, status, plan."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from pytest_rolemig import api
from pytest_rolemig.cli import errors, operations, plan, render
from pytest_rolemig.cli import settings as cli_settings
from pytest_rolemig.cli.context import Context, check_rows, require_infrastructure, status_of
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.target import Target

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
    from pytest_rolemig.db.query import scalar
    from pytest_rolemig.errors import InstallError, MappingRefused

    a = ctx.args
    r = ctx.settings.resolved
    inputs = install_inputs(ctx)
    target, auth, mapping, demo_users = inputs.target, inputs.auth, inputs.mapping, inputs.demo_users
    seeded = None
    try:
        if a.demo:
            from pytest_rolemig.db.templates import load_schema_file

            exists = scalar(ctx.conn, "SELECT to_regclass(%s) IS NOT NULL", (target.profiles_table,))
            if not exists:
                with ctx.conn.transaction():
                    for path in resources.demo_schema_files():
                        load_schema_file(ctx.conn, path)
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
    return status_of([r for r in status if r["component"] in ("schemas", "tables", "functions", "target", "mapping")])


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
    return status_of([r for r in infra if r["component"] in ("schemas", "tables", "functions", "target")])


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


COMMANDS = {
    "install": cmd_install, "config": cmd_config, "status": cmd_status, "plan": cmd_plan,
    "backup": operations.cmd_backup, "migrate": operations.cmd_migrate, "validate": operations.cmd_validate,
    "rollback": operations.cmd_rollback, "emergency-rollback": operations.cmd_emergency_rollback,
    "backups": operations.cmd_backups,
}

OFFLINE = frozenset({"config"})
"""The commands that connect to no database."""

CHECK_FIRST = {"install": install_inputs}
"""Per command, the check of its settings that runs before it connects."""
