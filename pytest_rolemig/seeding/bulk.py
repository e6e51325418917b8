"""Seed large user sets with ``INSERT ... SELECT generate_series``: one statement per table.

The factories (:mod:`pytest_rolemig.seeding.users`) stay the API for small, realistic
sets; building a million factory rows in Python costs minutes and memory that
grows with the count. Here PostgreSQL generates the rows itself: user ``i`` gets
``md5(tag || i)`` as its uuid key (so the parent row and the profile agree
without a round trip), role ``roles[i % n]`` (round-robin, like the factories),
and ``i % (max_sessions + 1)`` sessions. Columns are chosen as the factory
seeder chooses them: the key, the role, and every required column, filled by
type; columns with defaults are left to their defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.db.query import scalar
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding.catalog import Column, Table, parent_of, read_table
from pytest_rolemig.target import Target


@dataclass(frozen=True)
class BulkSeedResult:
    """What was written and how fast."""

    users: int
    sessions: int
    seconds: float

    @property
    def users_per_second(self) -> float:
        """Seeding rate (users; their parent rows and sessions included in the time)."""
        return self.users / self.seconds if self.seconds else float("inf")


_BY_TYPE = {
    "text": "{col} || '-' || i", "character varying": "{col} || '-' || i",
    "jsonb": "'{{}}'::jsonb", "json": "'{{}}'::json", "boolean": "false",
    "integer": "(i % 2147483647)::integer", "bigint": "i", "smallint": "0", "numeric": "i",
    "timestamp with time zone": "now()", "timestamp without time zone": "localtimestamp",
    "date": "current_date", "inet": "'127.0.0.1'::inet", "uuid": "gen_random_uuid()",
}


def _filler(column: Column, table: Table) -> sql.Composable:
    base = column.type_name.split("(")[0]
    if base not in _BY_TYPE:
        raise ConfigError(
            f"cannot bulk-seed {table}: required column {column.name} of type {column.type_name} has no "
            "default; give it a default or seed that table yourself"
        )
    return sql.SQL(_BY_TYPE[base].format(col=sql.Literal(column.name).as_string(None)))


def _key_expr(column: Column, offset: int) -> sql.Composable:
    """User ``i``'s key: deterministic, so parent and profile rows agree."""
    base = column.type_name.split("(")[0]
    if base == "uuid":
        return sql.SQL("md5('rolemig-bulk-' || i)::uuid")
    if base in ("integer", "bigint", "smallint"):
        return sql.SQL("(i + {})").format(sql.Literal(offset))
    return sql.SQL("'bulk-user-' || i")


def _insert(conn: psycopg.Connection[Any], table: Table, exprs: dict[str, sql.Composable],
            source: sql.Composable) -> int:
    """One ``INSERT ... SELECT`` writing ``exprs`` and every other required column."""
    columns = dict(exprs)
    for col in table.columns.values():
        if col.required and not col.generated and col.name not in columns:
            columns[col.name] = _filler(col, table)
    query = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
        table.ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.SQL(", ").join(columns.values()), source,
    )
    return conn.execute(query).rowcount


def bulk_seed_users(conn: psycopg.Connection[Any], target: Target, roles: list[str], count: int,
                    start: int = 1, max_sessions: int = 3) -> BulkSeedResult:
    """Write users ``start .. start+count-1`` (parent rows, profiles, sessions) in three statements."""
    if not roles:
        raise ConfigError("no legacy roles to seed users for: the mapping and the schema name none")
    began = time.perf_counter()
    profiles = read_table(conn, target.profiles_table, "rolemig_profiles_table")
    sessions = (read_table(conn, target.sessions_table, "rolemig_sessions_table")
                if target.sessions_table is not None else None)  # an application without sessions
    # the user's id: the key, or a roles table's user column (its rows keep keys of their own)
    parent = parent_of(conn, profiles, target.user)
    exprs: dict[str, sql.Composable] = {}
    for name in dict.fromkeys((target.user, target.key_column)):
        column = profiles.columns[name]
        if name != target.user and column.has_default:
            continue  # a roles table numbering its rows itself
        offset = 0
        if column.type_name in ("integer", "bigint", "smallint"):
            offset = scalar(conn, sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
                sql.Identifier(name), profiles.ident))
        exprs[name] = _key_expr(column, offset)
    key = exprs[target.user]
    series = sql.SQL("generate_series({}::bigint, {}::bigint) AS g(i)").format(
        sql.Literal(start), sql.Literal(start + count - 1))
    role_type = sql.SQL(profiles.columns[target.role_column].type_name)
    role = sql.SQL("({}::text[])[1 + (i % {})]::{}").format(sql.Literal(roles), sql.Literal(len(roles)), role_type)

    users = 0
    if parent is not None:
        parent_table, parent_key = parent
        _insert(conn, parent_table, {parent_key: key}, series)
        # a sign-up trigger may have created the user's row: it gets the user's role, as the
        # application sets it after sign-up (one row per user), and no second row is written
        users = conn.execute(sql.SQL(
            "UPDATE {t} AS t SET {r} = {role} FROM {series} WHERE t.{u} = {key} "
            "AND t.{k} = (SELECT x.{k} FROM {t} AS x WHERE x.{u} = {key} ORDER BY x.{k} LIMIT 1)").format(
                t=profiles.ident, r=sql.Identifier(target.role_column), role=role, series=series,
                u=sql.Identifier(target.user), k=sql.Identifier(target.key_column), key=key)).rowcount
        series_new = sql.SQL("{} WHERE NOT EXISTS (SELECT 1 FROM {} AS x WHERE x.{} = {})").format(
            series, profiles.ident, sql.Identifier(target.user), key)
    else:
        series_new = series
    users += _insert(conn, profiles, {**exprs, target.role_column: role}, series_new)
    # user i has i % (max_sessions + 1) sessions, as the factory seeder gives them
    per_user = sql.SQL("{} CROSS JOIN LATERAL generate_series(1, (i % {})::integer) AS s(n)").format(
        series, sql.Literal(max_sessions + 1))
    written = 0
    if sessions is not None:
        written = _insert(conn, sessions, {target.sessions_user_column: key}, per_user)
    return BulkSeedResult(users=users, sessions=written, seconds=time.perf_counter() - began)
