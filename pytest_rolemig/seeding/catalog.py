"""What the seeder reads from the catalog: a table's columns, and the table its key references."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.target import split_qualified


@dataclass(frozen=True)
class Column:
    """What the seeder needs to know about one column."""

    name: str
    type_name: str
    required: bool  # NOT NULL and no default
    has_default: bool
    generated: bool
    identity: bool = False


@dataclass(frozen=True)
class Table:
    """A table, its columns, and (for the profiles table) its parent through the key FK."""

    schema: str
    name: str
    columns: dict[str, Column]

    @property
    def ident(self) -> sql.Identifier:
        """The schema-qualified name, quoted, for composing statements."""
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class SeedSummary:
    """How many rows the seeder wrote, per role."""

    users: int
    sessions: int
    per_role: dict[str, int]


def split_name(qualified: str) -> tuple[str, str]:
    """``schema.table`` in SQL spelling -> (schema, table), read as the CLI and the SQL read it."""
    return split_qualified(qualified)


def read_table(conn: psycopg.Connection[Any], qualified: str, setting: str) -> Table:
    """Read a table's columns from the catalog, or say which setting names a missing table."""
    schema, name = split_name(qualified)
    rows = conn.execute(
        """
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
               a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '',
               a.atthasdef OR a.attidentity <> '', a.attgenerated <> '', a.attidentity <> ''
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (schema, name),
    ).fetchall()
    if not rows:
        raise ConfigError(f"table {schema}.{name} does not exist ({setting})")
    return Table(schema, name, {r[0]: Column(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows})


def parent_of(conn: psycopg.Connection[Any], table: Table, column: str) -> tuple[Table, str] | None:
    """The table and column that ``table.column`` references by foreign key, if any."""
    row = conn.execute(
        """
        SELECT fn.nspname, fc.relname, fa.attname
        FROM pg_catalog.pg_constraint k
        JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
        JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
        JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
        JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
        WHERE k.contype = 'f' AND cardinality(k.conkey) = 1
          AND n.nspname = %s AND c.relname = %s AND a.attname = %s
        LIMIT 1
        """,
        (table.schema, table.name, column),
    ).fetchone()
    if row is None:
        return None
    return read_table(conn, f"{row[0]}.{row[1]}", "parent of the profiles key"), row[2]
