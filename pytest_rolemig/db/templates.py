"""Servers and databases the fixtures hand out: ephemeral or existing, template and clones.

The template database holds the target schema, the installed infrastructure,
the role mapping and the seeded users; it is built once per test session, and
each test gets a copy (``CREATE DATABASE ... TEMPLATE``), which costs a file copy
instead of a schema load.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

from pytest_rolemig import api
from pytest_rolemig.db import install as installer
from pytest_rolemig.db.query import scalar
from pytest_rolemig.db.statements import split_statements
from pytest_rolemig.errors import ConfigError, InstallError, ServerError, describe_pg_error
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.seeding import SeedSummary, seed_users
from pytest_rolemig.target import Target, quote_name, split_qualified


class Server(Protocol):
    """What fixtures need of a server: a DSN per database and a line saying what it is."""

    def dsn(self, dbname: str = "postgres") -> str:
        """Connection string for ``dbname`` on this server."""
        ...

    def describe(self) -> str:
        """One line for the end of the run: what server, where."""
        ...


class ExistingServer:
    """A server the user runs (``--rolemig-dsn`` / ``ROLEMIG_DSN``): we only create and drop databases."""

    def __init__(self, dsn: str, label: str = "existing") -> None:
        self.label = label
        try:
            self._params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"--rolemig-dsn / ROLEMIG_DSN / rolemig_dsn is not a valid libpq DSN: {exc}"
            ) from exc
        self._maintenance = str(self._params.get("dbname") or "postgres")
        try:
            with psycopg.connect(self.dsn(self._maintenance), connect_timeout=10) as conn:
                self.version = str(scalar(conn, "SHOW server_version"))
        except psycopg.OperationalError as exc:
            raise ServerError(
                f"cannot reach the server given by --rolemig-dsn / ROLEMIG_DSN / rolemig_dsn "
                f"({self._safe()}): {str(exc).strip()}"
            ) from exc

    def _safe(self) -> str:
        shown = {k: v for k, v in self._params.items() if k != "password"}
        return make_conninfo("", **shown)

    def dsn(self, dbname: str = "postgres") -> str:
        """Same server and credentials, another database; "postgres" means the DSN's own database."""
        if dbname == "postgres":
            dbname = self._maintenance
        return make_conninfo("", **{**self._params, "dbname": dbname})

    def describe(self) -> str:
        """Version and address, without the password."""
        return f"{self.label} PostgreSQL {self.version} at {self._safe()} (not tuned, not stopped)"

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


def server_from_fixture(proc: Any) -> ExistingServer:
    """pytest-postgresql's ``postgresql_proc`` / ``postgresql_noproc`` (its executor) as the session's server.

    A team already running a server with pytest-postgresql overrides ``rolemig_server`` with
    this in its conftest.py, and the gate uses that one server instead of starting another.
    Databases are made on it as on any existing server (rolemig's own server only adds what
    upstream has not: data in memory, a server run by an unprivileged user under root, and
    embedded binaries).
    """
    dsn = make_conninfo("", host=str(proc.host), port=str(proc.port), user=str(proc.user),
                        password=proc.password or None, dbname="postgres")
    return ExistingServer(dsn, label=f"pytest-postgresql {type(proc).__name__} of")


def _major(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version // 10000


_counter = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A database name unique to this process and call."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


class CopyJanitor(DatabaseJanitor):
    """pytest-postgresql's janitor, copying templates with ``STRATEGY FILE_COPY`` from PostgreSQL 15.

    Upstream creates and drops databases as we need (it ends the sessions on the template
    first, and a drop refuses new connections before it ends the old ones). What it lacks:
    from PostgreSQL 15 ``CREATE DATABASE ... TEMPLATE`` copies a database block by block
    through the WAL by default, a cost that grows with the template; a copy per test wants
    the old file copy (a checkpoint and a directory copy), which the clone benchmark measures.
    """

    file_copy: bool = False

    def _build_create_database_sql(self) -> sql.Composed:
        query = super()._build_create_database_sql()
        if self.template_dbname and self.file_copy:
            query += sql.SQL(" STRATEGY FILE_COPY")
        return query


def janitor(server: Server, name: str, template: str | None = None, as_template: bool = False) -> CopyJanitor:
    """The janitor of database ``name`` on ``server`` (a copy of ``template`` when given)."""
    params = conninfo_to_dict(server.dsn())
    keeper = CopyJanitor(user=str(params.get("user") or ""), host=str(params.get("host") or ""),
                         port=str(params.get("port") or 5432), password=_text(params.get("password")),
                         dbname=name, template_dbname=template, as_template=as_template,
                         maintenance_dbname=str(params.get("dbname") or "postgres"),
                         # the server is up when this is called: a refused connection means it is
                         # gone, and 60 s of retries per test (the default) only hid that
                         connection_timeout=10)
    keeper.file_copy = template is not None and server_major(server) >= 15
    return keeper


def _text(value: object) -> str | None:
    return None if value is None else str(value)


_majors: dict[str, int] = {}


def server_major(server: Server) -> int:
    """The server's major version, asked once per server."""
    dsn = server.dsn()
    if dsn not in _majors:
        with psycopg.connect(dsn) as conn:
            _majors[dsn] = _major(conn)
    return _majors[dsn]


def create_database(server: Server, name: str, template: str | None = None) -> None:
    """Create ``name``, as a copy of ``template`` when given."""
    janitor(server, name, template).init()


def drop_database(server: Server, name: str) -> None:
    """Drop ``name``, ending any session still connected to it (a template is unmarked first)."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT datistemplate FROM pg_catalog.pg_database WHERE datname = %s",
                           (name,)).fetchone()
    janitor(server, name, as_template=bool(row and row[0])).drop()


@contextmanager
def clone(server: Server, template: str | None, prefix: str) -> Iterator[psycopg.Connection[Any]]:
    """A new database copied from ``template`` (empty when None), autocommit-connected; dropped after."""
    name = unique_name(prefix)
    create_database(server, name, template=template)
    try:
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            yield conn
    finally:
        drop_database(server, name)


_PSQL_META = re.compile(r"^\s*\\(?!\\)", re.MULTILINE)


def load_schema_file(conn: psycopg.Connection[Any], path: Path) -> None:
    """Run one schema file; psql meta-commands are refused with a clear message."""
    text = path.read_text(encoding="utf-8")
    meta = _PSQL_META.search(text)
    if meta:
        line = text.count("\n", 0, meta.start()) + 1
        raise ConfigError(
            f"schema file {path} line {line} uses a psql meta-command; the gate loads plain SQL "
            "(dump with pg_dump --schema-only and without \\connect, or split the file)"
        )
    try:
        conn.execute(text.encode("utf-8"))  # one simple query: one implicit transaction per file
    except psycopg.Error as exc:
        where = _error_line(conn, text, exc)
        if where is not None:
            at = f" line {where}"
        else:
            start = _failing_statement(conn, text)
            at = "" if start is None else f" statement at line {_line_of(text, start)}"
        raise ConfigError(
            f"loading schema file {path}{at} failed: {describe_pg_error(exc)}{_error_context(exc, where)}"
        ) from exc


def _error_line(conn: psycopg.Connection[Any], text: str, exc: psycopg.Error) -> int | None:
    """The line of ``text`` the server's error position points at, or None without a position.

    PostgreSQL counts the position in characters of the server encoding (1-based); under
    SQL_ASCII a character is a byte.
    """
    position = exc.diag.statement_position
    if not position or not position.isdigit():
        return None
    offset = int(position) - 1
    if conn.info.parameter_status("server_encoding") in ("UTF8", None):
        return _line_of(text, offset)
    return text.encode("utf-8").count(b"\n", 0, offset) + 1


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _failing_statement(conn: psycopg.Connection[Any], text: str) -> int | None:
    """Offset of the statement that fails, for an error without a position, or None.

    The file's statements run again one by one in a transaction that is rolled back; only
    on an idle autocommit connection, and not when the file manages transactions itself.
    """
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return None
    statements = split_statements(text)
    if len(statements) < 2:
        return statements[0][0] if statements else None
    if any(_TRANSACTION_CONTROL.match(s) for _, s in statements):
        return None
    try:
        with conn.transaction(force_rollback=True):
            for offset, statement in statements:
                try:
                    conn.execute(statement.encode("utf-8"))
                except psycopg.Error:
                    return offset
    except psycopg.Error:
        return None
    return None


_TRANSACTION_CONTROL = re.compile(r"(BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE)\b",
                                  re.IGNORECASE)


def _error_context(exc: psycopg.Error, line: int | None) -> str:
    """Where inside a statement it failed, when the server gave no position (a DO block's line)."""
    context = exc.diag.context
    if line is not None or not context:
        return ""
    return " (CONTEXT: " + " | ".join(part.strip() for part in context.splitlines() if part.strip()) + ")"


@dataclass
class Template:
    """The session's template database and what went into it."""

    name: str
    legacy_roles: list[str]
    seeded: SeedSummary
    target: Target | None = None  # the target as installed (no sessions table when the default is absent)


def build_template(server: Server, schema_files: tuple[Path, ...], target: Target,
                   mapping: RoleMapping, users: int, auth: AuthSettings | None = None,
                   sessions_default: bool = False) -> Template:
    """Load the schema, install the infrastructure, seed users of every legacy role; mark as template.

    With ``sessions_default`` (the sessions table left at its default), a schema without that
    table has no sessions table: the target is installed with none (``Template.target``).
    """
    name = unique_name("rolemig_tmpl")
    create_database(server, name)
    try:
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            for path in schema_files:
                load_schema_file(conn, path)
            sessions = target.sessions_table
            if sessions_default and sessions is not None and not _exists(conn, sessions):
                target = replace(target, sessions_table=None)
            check_target(conn, target)
            installer.install(conn, target, mapping, auth)
            roles = [role for role, _sources, _mapped in api.legacy_roles(conn)]
            try:
                with conn.transaction():
                    seeded = seed_users(conn, target, roles, users)
            except psycopg.Error as exc:
                raise ConfigError(f"seeding {users} users failed: {_refused_by(exc)}") from exc
            conn.execute("ANALYZE")
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template true").format(sql.Identifier(name)))
    except (ConfigError, InstallError, psycopg.Error):
        drop_database(server, name)
        raise
    return Template(name=name, legacy_roles=roles, seeded=seeded, target=target)


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(_TARGET_COLUMNS, split_qualified(table)).fetchone()
    return bool(row and row[0])


def _refused_by(exc: psycopg.Error) -> str:
    """The server's error, led by the constraint and table that refused the row when it names them."""
    diag = exc.diag
    table = ".".join(part for part in (diag.schema_name, diag.table_name) if part)
    where = ""
    if diag.constraint_name and table:
        where = f"constraint {diag.constraint_name} on table {table} refused a seeded row: "
    elif table:
        where = f"table {table} refused a seeded row: "
    return where + describe_pg_error(exc)


_TARGET_COLUMNS = """
SELECT c.oid IS NOT NULL,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')
  FROM (SELECT (SELECT r.oid FROM pg_catalog.pg_class r
                  JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
                 WHERE n.nspname = %s AND r.relname = %s AND r.relkind IN ('r', 'p')) AS oid) AS c
"""


def check_target(conn: psycopg.Connection[Any], target: Target) -> None:
    """Say which setting names a table or column the schema lacks, before the installer trips on it.

    Also refuses a profiles table without a primary key: the gate's access matrix tells a
    table's rows apart by their primary key, and without one a profile whose role changes
    reads as one row lost and another gained, for every user.
    """
    from pytest_rolemig.config import SETTINGS  # the option names; config imports pytest

    label = {s.name: f"{s.flag} / {s.ini}" for s in SETTINGS}
    checks: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
        ("profiles_table", target.profiles_table, (("key_column", target.key_column),
                                                   ("role_column", target.role_column))),
    )
    if target.sessions_table is not None:
        checks += (("sessions_table", target.sessions_table,
                    (("sessions_user_column", target.sessions_user_column),)),)
    for table_setting, shown, columns in checks:
        schema, table = split_qualified(shown)
        row = conn.execute(_TARGET_COLUMNS, (schema, table)).fetchone()
        exists, names, has_pk = row or (False, [], False)
        if not exists:
            raise ConfigError(f"{label[table_setting]} names table {shown}, which the schema does not "
                              f"create: load the schema that creates it, or set {label[table_setting]}")
        for column_setting, column in columns:
            if column not in names:
                raise ConfigError(f"{label[column_setting]} names column {column!r}, which table {shown} "
                                  f"lacks (columns: {', '.join(names)}); set {label[column_setting]}")
        if table_setting == "profiles_table" and not has_pk:
            raise ConfigError(
                f"profiles table {shown} has no primary key: the gate tells rows apart by it, and without "
                f"one every user whose role changes reads as an access change; add one "
                f"(ALTER TABLE {shown} ADD PRIMARY KEY ({quote_name(target.key_column)}))"
            )


def strip_infrastructure(conn: psycopg.Connection[Any]) -> None:
    """Remove the four migration schemas, leaving the application and its data."""
    for schema in ("migration_control", "migration_validation", "migration_backup", "migration_tracking"):
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
