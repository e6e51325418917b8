"""Rows as COPY writes them: factory values as text, fillers for required columns, new keys."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.db.query import scalar
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding.catalog import Column, Table

_FILLERS: dict[str, Any] = {
    "text": "seeded", "character varying": "seeded", "uuid": None, "jsonb": "{}", "json": "{}",
    "boolean": "f", "integer": "0", "bigint": "0", "smallint": "0", "numeric": "0",
    "timestamp with time zone": "2025-01-01 00:00:00+00", "timestamp without time zone": "2025-01-01 00:00:00",
    "date": "2025-01-01", "inet": "127.0.0.1",
}


def copy_text(value: Any) -> str | None:
    """A Python value as the text COPY expects (psycopg adapts the rest)."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)


def filler(column: Column, table: Table) -> str | None:
    """A value a required column without a factory field accepts, or a ConfigError naming it."""
    base = column.type_name.split("(")[0]
    if base == "uuid":
        return str(uuid.uuid4())
    if base in _FILLERS:
        return _FILLERS[base]
    raise ConfigError(
        f"cannot seed {table}: required column {column.name} of type {column.type_name} has no default "
        "and no factory field; give it a default or seed that table yourself"
    )


def columns_for(table: Table, sample: dict[str, Any], forced: set[str]) -> list[str]:
    """Columns to write: forced ones, factory fields the table has, required ones."""
    chosen = []
    for col in table.columns.values():
        if col.generated:
            continue
        if col.name in forced or col.name in sample or col.required:
            chosen.append(col.name)
    return chosen


def copy_row(table: Table, columns: list[str], values: dict[str, Any]) -> tuple[str | None, ...]:
    """One row for COPY: the factory's values, fillers for the other required columns."""
    return tuple(
        copy_text(values[c]) if c in values else filler(table.columns[c], table) for c in columns
    )


def copy_rows(conn: psycopg.Connection[Any], table: Table, columns: list[str],
              rows: Iterator[tuple[str | None, ...]]) -> int:
    """COPY ``rows`` into ``columns`` of ``table``; how many."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        table.ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    count = 0
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def new_keys(conn: psycopg.Connection[Any], table: Table, key: str, count: int) -> list[Any]:
    """Keys for new users: UUIDs for uuid keys, numbers after the current maximum otherwise."""
    key_type = table.columns[key].type_name
    if key_type == "uuid":
        return [uuid.uuid4() for _ in range(count)]
    if key_type in ("integer", "bigint", "smallint"):
        start = scalar(conn, sql.SQL("SELECT coalesce(max({}), 0) + 1 FROM {}").format(
            sql.Identifier(key), table.ident))
        return list(range(start, start + count))
    return [f"user-{uuid.uuid4().hex[:12]}" for _ in range(count)]
