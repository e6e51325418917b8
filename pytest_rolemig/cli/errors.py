"""Exit codes a CI job can act on, and the error that carries one."""

from __future__ import annotations

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


class CliError(Exception):
    """An error the CLI reports in one or two lines and turns into an exit code."""

    def __init__(self, message: str, code: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


def describe(exc: psycopg.Error) -> str:
    """The server's message with its DETAIL and HINT, one per line."""
    return describe_pg_error(exc, sep="\n")


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
                        hint="the application or another migration holds locks on the target tables; retry later")
    return CliError(text, CHECKS_FAILED)
