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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pytest_rolemig import installer
from pytest_rolemig.errors import ConfigError, InstallError, ServerError
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.seeding import SeedSummary, seed_users
from pytest_rolemig.target import Target


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

    def __init__(self, dsn: str) -> None:
        try:
            self._params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(
                f"--rolemig-dsn / ROLEMIG_DSN / rolemig_dsn is not a valid libpq DSN: {exc}"
            ) from exc
        self._maintenance = self._params.get("dbname") or "postgres"
        try:
            with psycopg.connect(self.dsn(self._maintenance), connect_timeout=10) as conn:
                self.version = conn.execute("SHOW server_version").fetchone()[0]
        except psycopg.OperationalError as exc:
            raise ServerError(
                f"cannot reach the server given by --rolemig-dsn / ROLEMIG_DSN / rolemig_dsn "
                f"({self._safe()}): {str(exc).strip()}"
            ) from exc

    def _safe(self) -> str:
        shown = {k: v for k, v in self._params.items() if k != "password"}
        return make_conninfo(**shown)

    def dsn(self, dbname: str = "postgres") -> str:
        """Same server and credentials, another database; "postgres" means the DSN's own database."""
        if dbname == "postgres":
            dbname = self._maintenance
        return make_conninfo(**{**self._params, "dbname": dbname})

    def describe(self) -> str:
        """Version and address, without the password."""
        return f"existing PostgreSQL {self.version} at {self._safe()} (not tuned, not stopped)"

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


def _major(conn: psycopg.Connection[Any]) -> int:
    return conn.info.server_version // 10000


_counter = itertools.count(1)


def unique_name(prefix: str) -> str:
    """A database name unique to this process and call."""
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


def create_database(server: Server, name: str, template: str | None = None) -> None:
    """Create ``name``, as a copy of ``template`` when given."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            if _major(conn) >= 15:
                query += sql.SQL(" STRATEGY FILE_COPY")
        conn.execute(query)


def drop_database(server: Server, name: str) -> None:
    """Drop ``name``, ending any session still connected to it."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (name,)).fetchone():
            conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(sql.Identifier(name)))
        force = sql.SQL(" WITH (FORCE)") if _major(conn) >= 13 else sql.SQL("")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)) + force)


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
        conn.execute(text.encode("utf-8"))
    except psycopg.Error as exc:
        raise ConfigError(f"loading schema file {path} failed: {str(exc).strip()}") from exc


@dataclass
class Template:
    """The session's template database and what went into it."""

    name: str
    legacy_roles: list[str]
    seeded: SeedSummary


def build_template(server: Server, schema_files: tuple[Path, ...], target: Target,
                   mapping: RoleMapping, users: int) -> Template:
    """Load the schema, install the infrastructure, seed users of every legacy role; mark as template."""
    name = unique_name("rolemig_tmpl")
    create_database(server, name)
    try:
        with psycopg.connect(server.dsn(name), autocommit=True) as conn:
            for path in schema_files:
                load_schema_file(conn, path)
            installer.install(conn, target, mapping)
            roles = [
                r[0] for r in conn.execute(
                    "SELECT role_name FROM migration_control.discover_legacy_roles() ORDER BY role_name"
                ).fetchall()
            ]
            with conn.transaction():
                seeded = seed_users(conn, target, roles, users)
            conn.execute("ANALYZE")
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template true").format(sql.Identifier(name)))
    except (ConfigError, InstallError, psycopg.Error):
        drop_database(server, name)
        raise
    return Template(name=name, legacy_roles=roles, seeded=seeded)


def strip_infrastructure(conn: psycopg.Connection[Any]) -> None:
    """Remove the four migration schemas, leaving the application and its data."""
    for schema in ("migration_control", "migration_validation", "migration_backup", "migration_tracking"):
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
