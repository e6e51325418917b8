"""Exit codes a CI job can act on, and the error that carries one."""

from __future__ import annotations

import re

import psycopg

from pytest_rolemig.errors import describe_pg_error

OK = 0
CHECKS_FAILED = 1   # a validation check failed, or an operation reported status 'failed'
USAGE = 2           # bad arguments, no DSN, bad mapping file, unknown backup id, no --yes without a terminal
CONNECTION = 3      # server unreachable, or the infrastructure is not installed
LOCKED = 4          # another migration (or rollback) holds the migration lock
DECLINED = 5        # the operator answered no at the confirmation prompt
INTERRUPTED = 130   # Ctrl-C: completed batches stay committed, `rolemig migrate` resumes

EXIT_CODES = {
    OK: "success",
    CHECKS_FAILED: "checks failed or the operation reported failure",
    USAGE: "usage error (arguments, DSN missing, mapping file, unknown backup id, confirmation needed)",
    CONNECTION: "cannot connect, or the migration infrastructure is missing",
    LOCKED: "a migration is already running",
    DECLINED: "cancelled at the confirmation prompt",
    INTERRUPTED: "interrupted (Ctrl-C); committed batches stay, run again to resume",
}

LOCK_MESSAGE = "another role migration is running"


# SQL names the server's HINTs mention -> what a CLI user runs or types instead. Keys are routine,
# table and parameter names (schema left out) or whole phrases; longest match first. A value is the
# text that replaces the name (with its schema, its argument list and a "SELECT * FROM" / "CALL"
# before it); None marks a routine only SQL reaches, named unqualified with "(SQL only)".
SQL_TO_CLI: dict[str, str | None] = {
    # routines
    "prepare_for_migration": "`rolemig backup`",
    "create_comprehensive_backup": "`rolemig backup --name NAME`",
    "validate_backup_completeness": "`rolemig backups` (restorable or not), or a new `rolemig backup`",
    "list_available_backups": "`rolemig backups`",
    "load_role_mapping": "`rolemig install --mapping FILE`",
    "configure_target": "`rolemig install --profiles-table ... --role-column ...`",
    "ensure_target_configured": "`rolemig install`",
    "get_infrastructure_status": "`rolemig status`",
    "get_migration_status": "`rolemig status`",
    "execute_role_migration": "`rolemig migrate`",
    "start_migration_batch": "`rolemig migrate --name NAME`",
    "run_comprehensive_validation": "`rolemig validate`",
    "validate_rls_policies": "`rolemig validate`",
    "execute_rollback": "`rolemig rollback`",
    "emergency_rollback": "`rolemig emergency-rollback`",
    "run_online_migration": None,
    "online_alter_policy": None,
    "alter_role_policy": None,
    "rewrite_role_literals": None,
    "adjust_role_constraints": None,
    # tables
    "backup_log": "the backup log (`rolemig backups`)",
    "rollback_log": "the rollback log",
    "target_config.auth_role": "the target's auth_role (`rolemig status --json` shows it)",
    "target_config": "the stored target (`rolemig install` options)",
    # parameters and phrases
    "execute_role_migration without p_max_batches":
        "SQL: execute_role_migration without p_max_batches; `rolemig migrate` commits batch by batch",
    "pass NULL for the newest valid backup": "leave out --backup-id for the newest restorable backup",
    "pass NULL to migrate everybody": "leave out --max-batches to migrate everybody",
    "p_profiles_table": "--profiles-table",
    "p_sessions_table": "--sessions-table",
    "p_key_column": "--key-column",
    "p_role_column": "--role-column",
    "p_user_column": "--user-column",
    "p_sessions_user_column": "--sessions-user-column",
    "p_auth_role": "--api-role",
    "p_anon_role": "--anon-role",
    "p_jwt_claims": "--jwt-claims",
    "p_pre_request": "--pre-request",
    "p_policy_schemas": "--policy-schema",
    "p_batch_size": "--batch-size",
    "p_max_batches": "--max-batches",
    "p_backup_id": "--backup-id",
    "p_migration_name": "--name",
}

_SQL_REF = re.compile(
    r"(?P<verb>\b(?:call|Call|CALL|run|Run)\s+|SELECT\s+\*\s+FROM\s+)?"
    r"(?<!`)(?:\bmigration_[a-z]+\.)?\b(?P<name>"
    + "|".join(re.escape(k) for k in sorted(SQL_TO_CLI, key=len, reverse=True))
    + r")\b(?P<args>\s*\([^()]*\))?"
)
_LEFTOVER = re.compile(r"\bCALL\s+|\bSELECT\s+\*\s+FROM\s+|\bmigration_[a-z]+\.(?=[a-z_])")


def cli_hint(hint: str) -> str:
    """A server HINT as a CLI user reads it: the rolemig command or option instead of the SQL routine."""

    def run(m: re.Match[str]) -> str:  # "call" -> "run", "Call" -> "Run"; CALL, SELECT: as the sentence says
        verb, before = m[0].split()[0], m.string[:m.start()].rstrip()
        upper = verb[0].isupper() if not verb.isupper() else not before or before.endswith(".")
        return "Run " if upper else "run "

    def replace(m: re.Match[str]) -> str:
        name, value = m["name"], SQL_TO_CLI[m["name"]]
        if name.startswith("p_") or " " in name:  # a parameter or a phrase: only the words change
            return (m["verb"] or "") + (value or name) + (m["args"] or "")
        text = value if value is not None else f"`{name}{(m['args'] or '()').strip()}` (SQL only)"
        return (run(m) if m["verb"] else "") + text

    out = _SQL_REF.sub(replace, hint)
    # a routine the table does not know yet: never print SQL syntax or a schema-qualified name
    return _LEFTOVER.sub(lambda m: "" if m[0].startswith("migration_") else run(m), out)


def translate_hints(text: str) -> str:
    """Rewrite the ``HINT:`` part of each line of a server error text with :func:`cli_hint`."""
    return re.sub(r"(HINT: )(.*)", lambda m: m[1] + cli_hint(m[2]), text)


class CliError(Exception):
    """An error the CLI reports in one or two lines and turns into an exit code."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


def describe(exc: psycopg.Error) -> str:
    """The server's message with its DETAIL and HINT, one per line; the HINT names CLI commands."""
    return translate_hints(describe_pg_error(exc, sep="\n"))


def from_database(exc: psycopg.Error) -> CliError:
    """Classify an error raised by the server into an exit code."""
    text = describe(exc)
    if LOCK_MESSAGE in text:
        return CliError(f"a migration is already running: {text}", LOCKED,
                        hint="wait for it to finish (`rolemig status` shows it), then run the command again")
    if isinstance(exc, (psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName,
                        psycopg.errors.UndefinedTable)):
        return CliError(f"the migration infrastructure is missing or incomplete: {text}", CONNECTION,
                        hint="run `rolemig install`")
    if isinstance(exc, psycopg.OperationalError):
        return CliError(f"lost the connection to the server: {text}", CONNECTION)
    if isinstance(exc, psycopg.errors.LockNotAvailable):
        return CliError(f"a lock could not be taken in time: {text}", LOCKED,
                        hint="the application or another migration holds locks on the target tables; "
                             "retry later")
    return CliError(text, CHECKS_FAILED)
