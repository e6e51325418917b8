"""Small query helpers for statements that must return exactly one row.

``conn.execute(...).fetchone()[0]`` fails with ``TypeError: 'NoneType' object is not
subscriptable`` when the row is missing; these helpers name the query instead, and give
the type checker a row that is never ``None``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.rows import tuple_row

from pytest_rolemig.errors import RolemigError

# What ``Cursor.execute`` takes with parameters (psycopg's own ``Query`` also admits t-strings).
Query: TypeAlias = str | bytes | sql.SQL | sql.Composed


class NoRowError(RolemigError):
    """A query that always returns a row returned none (a missing object, or the wrong database)."""


def _describe(conn: psycopg.Connection[Any], query: Query) -> str:
    if isinstance(query, sql.Composable):
        text = query.as_string(conn)
    else:
        text = query.decode() if isinstance(query, bytes) else query
    return " ".join(text.split())


def one(conn: psycopg.Connection[Any], query: Query, params: Params | None = None) -> tuple[Any, ...]:
    """The first row of ``query`` as a tuple (whatever the connection's row factory); raise if there is none."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    if row is None:
        raise NoRowError(f"no row returned by: {_describe(conn, query)}")
    return row


def scalar(conn: psycopg.Connection[Any], query: Query, params: Params | None = None) -> Any:
    """The first column of the first row of ``query``; raise if there is no row."""
    return one(conn, query, params)[0]
