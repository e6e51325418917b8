"""``rolemig``: run the role migration on a real database, and see what it will change.

Subcommands: install, config, status, plan, backup, migrate, validate, rollback,
emergency-rollback, backups. The connection comes from ``--dsn`` or
``DATABASE_URL``; the target and request settings from the options, else from
``[tool.rolemig]`` in ``pyproject.toml`` (the file the gate reads), else the
defaults (:mod:`pytest_rolemig.cli.settings`); ``--json`` prints machine-readable
output; the exit code says what happened (see :mod:`pytest_rolemig.cli.errors`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from pytest_rolemig.cli import errors
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.cli.settings import CONFIG_OPTION, default_help
from pytest_rolemig.settings import BY_NAME, INT_MAX, SECTION

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in errors.EXIT_CODES.items())


def build_parser(err: TextIO | None = None) -> argparse.ArgumentParser:
    """The argument parser: common options on every subcommand, so they go before or after its name.

    Usage errors go to ``err`` (default: standard error) as one line and exit with code 2.
    """
    # a _Parser too: the subparsers are _Parsers, and their parents must be of their class
    common = _Parser(add_help=False, err=err)
    common.add_argument("--dsn", default=argparse.SUPPRESS,
                        help="libpq connection string or URL (default: $DATABASE_URL)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for machines instead of tables")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bar")
    common.add_argument(CONFIG_OPTION, metavar="FILE", default=argparse.SUPPRESS,
                        help=f"pyproject.toml whose {SECTION} table holds the settings, as the gate reads them "
                             f"(default: the first pyproject.toml with {SECTION}, from the current folder up)")

    parser = _Parser(
        prog="rolemig", parents=[common], err=err, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the user-role migration (legacy roles -> new roles) on a real PostgreSQL database.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text, epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter, err=err)

    p = add("install",
            "install the migration infrastructure, configure the target tables, load the role mapping")
    # every target option falls back to [tool.rolemig] in pyproject.toml (the gate's settings too),
    # then to the registry's default (pytest_rolemig.settings)
    p.add_argument("--mapping", metavar="FILE",
                   help=f"role mapping TOML (default: {SECTION} mapping in pyproject.toml, "
                        "else the bundled demo mapping)")
    p.add_argument("--profiles-table", metavar="TABLE",
                   help="table holding each user's role, as SQL spells it (\"My Schema\".\"Users\"); "
                        + default_help("profiles_table"))
    p.add_argument("--key-column", metavar="COLUMN",
                   help="primary key column of the profiles table; " + default_help("key_column"))
    p.add_argument("--role-column", metavar="COLUMN",
                   help="column of the profiles table holding the legacy role; " + default_help("role_column"))
    p.add_argument("--user-column", metavar="COLUMN",
                   help="column of the profiles table holding the user's id, as the JWT claims carry it "
                        f"(a roles table: user_id; default: {SECTION} user_column in pyproject.toml, "
                        "else the key column)")
    p.add_argument("--sessions-table", metavar="TABLE",
                   help="table of user sessions; 'none' for an application without one; "
                        + default_help("sessions_table"))
    p.add_argument("--sessions-user-column", metavar="COLUMN",
                   help="column of the sessions table naming the user; " + default_help("sessions_user_column"))
    p.add_argument("--policy-schema", action="append", dest="policy_schemas", metavar="SCHEMA",
                   help="schema whose RLS policies are migrated (repeatable); " + default_help("policy_schemas"))
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="default batch size stored in the target; " + default_help("batch_size"))
    # requests as PostgREST makes them: stored with the target, used by plan, validate and the gate
    p.add_argument("--api-role", metavar="ROLE",
                   help="role a logged-in request switches to, PostgREST's JWT role (stored with the target; "
                        "plan and validate act through it); " + default_help("api_role"))
    p.add_argument("--anon-role", metavar="ROLE",
                   help="role of a request without a JWT, PostgREST's db-anon-role; " + default_help("anon_role"))
    p.add_argument("--jwt-claims", metavar="JSON",
                   help='claims of a logged-in request, a JSON object whose "{user}" and "{role}" become the '
                        f"user's id and app role (stored with the target; default: {SECTION} jwt_claims in "
                        "pyproject.toml, else Supabase's sub, role, user_role)")
    p.add_argument("--pre-request", metavar="FUNCTION",
                   help="function called after the claims are set and the role switched, PostgREST's "
                        f"db-pre-request (schema.function; stored with the target; default: {SECTION} "
                        "pre_request in pyproject.toml, else none)")
    p.add_argument("--demo", action="store_true",
                   help="load the bundled demo application first (when its tables are missing) "
                        "and seed users")
    p.add_argument("--demo-users", type=_count, metavar="N",
                   help="users to seed with --demo into an empty profiles table (0 seeds nobody; "
                        f"default: {SECTION} users in pyproject.toml, else {BY_NAME['users'].default})")

    add("config", "print the settings rolemig reads and where each value came from (an option, "
                  f"{SECTION} in pyproject.toml, the default); connects to no database")

    add("status", "infrastructure, backups, batches and the last validation at a glance")

    p = add("plan", "dry run: users per role, policies rewritten, batches, time estimate, access changes")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="batch size (default: the stored target's)")
    p.add_argument("--no-access", action="store_true", help="skip the access-change analysis")

    p = add("backup", "back up profiles, sessions and policies, and validate the backup")
    p.add_argument("--name", default="pre_migration_backup", help="label of the backup")

    p = add("migrate", "run or resume the migration batch by batch (Ctrl-C stops after the current batch)")
    p.add_argument("--batch-size", type=_positive, metavar="N",
                   help="users per batch (default: the stored target's)")
    p.add_argument("--backup-id", help="backup to rely on (default: the newest restorable one)")
    p.add_argument("--max-batches", type=_positive, metavar="N", help="stop after N batches (resume later)")
    p.add_argument("--name", default="role_system_migration", help="migration name recorded in the batches")
    p.add_argument("--no-validate", action="store_true", help="skip the post-migration validation")

    p = add("validate", "run the comprehensive validation; exit 1 when a check fails")
    p.add_argument("--phase", default="auto",
                   choices=["auto", "pre_migration", "post_migration", "post_rollback"],
                   help="auto: post_migration once every user is migrated, else pre_migration")

    for name, help_text in (("rollback", "revert what the migration changed (asks for confirmation)"),
                            ("emergency-rollback",
                             "restore every backed-up row, constraint and policy (asks for confirmation)")):
        p = add(name, help_text)
        p.add_argument("backup_id", nargs="?",
                       help="backup to restore from (default: the one the migration started from, else the "
                            "newest restorable; a backup taken after users moved is refused)")
        p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
        if name == "rollback":
            p.add_argument("--reason", default="manual rollback (rolemig)",
                           help="recorded in the rollback log")

    add("backups", "list backups, newest first, and whether each is restorable")
    return parser




def _integer(text: str, minimum: int, what: str) -> int:
    """Checked here, not by the server: an overflow there reads as a missing infrastructure."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what} at most {INT_MAX}, got {text!r}") from None
    if not minimum <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(f"must be {what} at most {INT_MAX}, got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _count(text: str) -> int:
    return _integer(text, 0, "a non-negative integer")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage error is one line on the caller's stream, naming the option.

    argparse's own prints the whole usage block to ``sys.stderr``, which ``main(err=...)`` never sees.
    """

    def __init__(self, *args: Any, err: TextIO | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.err = err

    def error(self, message: str) -> NoReturn:
        stream = self.err or sys.stderr
        stream.write(f"{self.prog}: error: {message}\n")
        stream.write(f"rolemig: hint: `{self.prog} --help` lists the options\n")
        stream.flush()
        raise SystemExit(errors.USAGE)


def _safe_dsn(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - shown only in an error message
        return "<unparsable DSN>"
    return make_conninfo("", **{k: v for k, v in params.items() if k != "password"})


def connect(dsn: str | None):  # type: ignore[no-untyped-def]
    """An autocommit connection, or a :class:`CliError` naming the server and the fix."""
    import psycopg

    if not dsn:
        raise CliError("no database given", errors.USAGE, hint="pass --dsn or set DATABASE_URL")
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, application_name="rolemig")
    except psycopg.ProgrammingError as exc:
        raise CliError(f"invalid DSN: {str(exc).strip()}", errors.USAGE) from None
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise CliError(f"cannot connect to {_safe_dsn(dsn)}: {first}", errors.CONNECTION,
                       hint="check that the server runs and the DSN (--dsn / DATABASE_URL) is right",
                       ) from None
    return conn


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one subcommand; return its exit code (the console script exits with it)."""
    import psycopg

    from pytest_rolemig.cli.commands import CHECK_FIRST, COMMANDS, OFFLINE
    from pytest_rolemig.cli.context import Context

    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser(err)
    try:
        with contextlib.redirect_stdout(out):  # --help
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, already reported on err)
        return int(exc.code or 0)
    for name, default in (("dsn", None), ("json", False), ("quiet", False), ("config", None)):
        if not hasattr(args, name):
            setattr(args, name, default)
    conn = None
    try:
        ctx = Context(args=args, out=out, err=err)
        if args.command in OFFLINE:
            return COMMANDS[args.command](ctx)
        if args.command in CHECK_FIRST:  # a bad setting is said before connecting
            CHECK_FIRST[args.command](ctx)
        conn = ctx.connection = connect(ctx.dsn)
        return COMMANDS[args.command](ctx)
    except CliError as exc:
        _report(exc, err)
        return exc.code
    except psycopg.Error as exc:
        cli_exc = errors.from_database(exc)
        _report(cli_exc, err)
        return cli_exc.code
    except KeyboardInterrupt:
        err.write("rolemig: interrupted\n")
        return errors.INTERRUPTED
    finally:
        if conn is not None:
            conn.close()


def _report(exc: CliError, err: TextIO) -> None:
    # a server error text embedded in the message (install wraps them) gets the CLI's hint too
    err.write(f"rolemig: error: {errors.translate_hints(str(exc))}\n")
    if exc.hint:
        err.write(f"rolemig: hint: {exc.hint}\n")
    err.flush()


def run() -> None:
    """Entry point that exits with :func:`main`'s code."""
    sys.exit(main())
