"""What every ``rolemig`` command shares: its context (arguments, connection, settings, output) and the
checks and lock around a change; the database is reached through :mod:`pytest_rolemig.api`."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TextIO

import psycopg

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.cli import errors, render
from pytest_rolemig.cli import settings as cli_settings
from pytest_rolemig.cli.errors import CliError
from pytest_rolemig.errors import ConfigError


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

    @property
    def dsn(self) -> str | None:
        """The DSN the command connects with: ``--dsn``, else ``$DATABASE_URL``."""
        return getattr(self.args, "dsn", None) or os.environ.get("DATABASE_URL")

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


def base_backup(ctx: Context) -> str | None:
    """The backup the current migration started from, else the newest restorable one."""
    return api.migration_base(ctx.conn) or api.newest_restorable(ctx.conn)


def status_of(rows: list[dict[str, Any]]) -> int:
    """Exit code 1 when a check row failed, else 0."""
    return errors.CHECKS_FAILED if any(r["status"] == "fail" for r in rows) else errors.OK
