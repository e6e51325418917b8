"""Seed users of every legacy role into the target tables, through ``COPY``.

Users come from the factories in :mod:`pytest_rolemig.factories`; the seeder
reads the target tables' columns from the catalog and writes each factory field
whose name matches a column, fills other required columns by type, and leaves
columns with defaults alone. If the profiles key references a parent table
(Supabase's ``auth.users``), the parent rows are written first.

Building a factory user costs about half a millisecond of Python, so only the
first :data:`FACTORY_USERS` are built that way; larger sets are completed by
PostgreSQL with one ``INSERT ... SELECT`` per table that copies those users
(profile, parent row, sessions) under new keys, with unique columns made unique.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

import psycopg
from psycopg import sql

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.factories import SessionFactory, UserFactory
from pytest_rolemig.target import Target, split_qualified


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


_FILLERS: dict[str, Any] = {
    "text": "seeded", "character varying": "seeded", "uuid": None, "jsonb": "{}", "json": "{}",
    "boolean": "f", "integer": "0", "bigint": "0", "smallint": "0", "numeric": "0",
    "timestamp with time zone": "2025-01-01 00:00:00+00", "timestamp without time zone": "2025-01-01 00:00:00",
    "date": "2025-01-01", "inet": "127.0.0.1",
}


def _text(value: Any) -> str | None:
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


def _filler(column: Column, table: Table) -> str | None:
    base = column.type_name.split("(")[0]
    if base == "uuid":
        return str(uuid.uuid4())
    if base in _FILLERS:
        return _FILLERS[base]
    raise ConfigError(
        f"cannot seed {table}: required column {column.name} of type {column.type_name} has no default "
        "and no factory field; give it a default or seed that table yourself"
    )


def _columns_for(table: Table, sample: dict[str, Any], forced: set[str]) -> list[str]:
    """Columns to write: forced ones, factory fields the table has, required ones."""
    chosen = []
    for col in table.columns.values():
        if col.generated:
            continue
        if col.name in forced or col.name in sample or col.required:
            chosen.append(col.name)
    return chosen


def _row(table: Table, columns: list[str], values: dict[str, Any]) -> tuple[str | None, ...]:
    return tuple(
        _text(values[c]) if c in values else _filler(table.columns[c], table) for c in columns
    )


def _copy(conn: psycopg.Connection[Any], table: Table, columns: list[str],
          rows: Iterator[tuple[str | None, ...]]) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        table.ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    count = 0
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _key_values(conn: psycopg.Connection[Any], table: Table, key: str, count: int) -> list[Any]:
    """Keys for new users: UUIDs for uuid keys, numbers after the current maximum otherwise."""
    key_type = table.columns[key].type_name
    if key_type == "uuid":
        return [uuid.uuid4() for _ in range(count)]
    if key_type in ("integer", "bigint", "smallint"):
        start = conn.execute(
            sql.SQL("SELECT coalesce(max({}), 0) + 1 FROM {}").format(sql.Identifier(key), table.ident)
        ).fetchone()[0]
        return list(range(start, start + count))
    return [f"user-{uuid.uuid4().hex[:12]}" for _ in range(count)]


#: Users built by the factories; the rest of a larger set are server-side copies of them.
FACTORY_USERS = 1000


def seed_users(conn: psycopg.Connection[Any], target: Target, roles: list[str], count: int,
               max_sessions: int = 3, factory_users: int = FACTORY_USERS) -> SeedSummary:
    """Seed ``count`` users spread round-robin over ``roles``; user i gets ``i % (max_sessions+1)`` sessions.

    About ``factory_users`` come from the factories (rounded up to a multiple of the role
    count and of ``max_sessions + 1``, so copy i of factory user ``i % n`` has the role and
    the session count user i would have had); the rest are copies.
    """
    if not roles:
        raise ConfigError("no legacy roles to seed users for: the mapping and the schema name none")
    profiles = read_table(conn, target.profiles_table, "--rolemig-profiles-table / rolemig_profiles_table")
    for column, setting in ((target.key_column, "key_column"), (target.role_column, "role_column")):
        if column not in profiles.columns:
            raise ConfigError(
                f"column {column} does not exist in {profiles} (--rolemig-{setting.replace('_', '-')} "
                f"/ rolemig_{setting})"
            )
    sessions = read_table(conn, target.sessions_table, "--rolemig-sessions-table / rolemig_sessions_table")
    if target.sessions_user_column not in sessions.columns:
        raise ConfigError(
            f"column {target.sessions_user_column} does not exist in {sessions} "
            "(--rolemig-sessions-user-column / rolemig_sessions_user_column)"
        )
    parent = parent_of(conn, profiles, target.key_column)
    cycle = math.lcm(len(roles), max_sessions + 1)  # a copy keeps its source's role and session count
    built = min(count, cycle * max(1, -(-factory_users // cycle)))
    copyable = built < count and _copyable(conn, profiles, sessions, parent, target)
    keys = _key_values(conn, parent[0] if parent else profiles, parent[1] if parent else target.key_column,
                       built if copyable else count)

    users = []
    for i, (key, role) in enumerate(zip(keys, itertools.cycle(roles))):
        user = UserFactory(role=role)
        user["id"] = key
        user[target.key_column] = key
        user[target.role_column] = role
        users.append((i, user))
    per_role: dict[str, int] = {}
    for _, user in users:
        per_role[user[target.role_column]] = per_role.get(user[target.role_column], 0) + 1
    if not users:
        return SeedSummary(0, 0, per_role)

    sample = users[0][1]
    if parent is not None:
        parent_table, parent_key = parent
        # the app role is the profiles table's: a parent column of the same name (Supabase's
        # auth.users.role holds the API role) keeps its default
        app_only = {target.role_column}
        cols = _columns_for(parent_table, {k: v for k, v in sample.items() if k not in app_only}, {parent_key})
        _copy(conn, parent_table, cols,
              (_row(parent_table, cols, {**u, parent_key: u["id"]}) for _, u in users))
    cols = _columns_for(profiles, sample, {target.key_column, target.role_column})
    _copy(conn, profiles, cols, (_row(profiles, cols, u) for _, u in users))

    session_rows = [
        {**SessionFactory(user_id=u["id"]), target.sessions_user_column: u["id"]}
        for i, u in users
        for _ in range(i % (max_sessions + 1))
    ]
    written = 0
    if session_rows:
        cols = _columns_for(sessions, session_rows[0], {target.sessions_user_column})
        written = _copy(conn, sessions, cols, (_row(sessions, cols, s) for s in session_rows))
    copied_users = 0
    if copyable:
        copied_users, copied_sessions = _copy_users(conn, target, profiles, sessions, parent,
                                                    [u["id"] for _, u in users], count)
        written += copied_sessions
        for i in range(len(users), len(users) + copied_users):
            per_role[roles[i % len(roles)]] = per_role.get(roles[i % len(roles)], 0) + 1
    return SeedSummary(users=len(users) + copied_users, sessions=written, per_role=per_role)


# ------------------------------------------------------------ server-side copies ---

_UNIQUE_COLUMNS = """
SELECT a.attname FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL
   AND i.indrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""
_TEXT_TYPES = ("text", "character varying", "citext")


def _unique_columns(conn: psycopg.Connection[Any], table: Table) -> set[str]:
    return {r[0] for r in conn.execute(_UNIQUE_COLUMNS, (table.schema, table.name))}


def _base(column: Column) -> str:
    return column.type_name.split("(")[0]


def _copyable(conn: psycopg.Connection[Any], profiles: Table, sessions: Table,
              parent: tuple[Table, str] | None, target: Target) -> bool:
    """Whether copies can be made unique: every other unique column is text, uuid or has a default."""
    tables = [(profiles, target.key_column), (sessions, target.sessions_user_column)] + ([parent] if parent else [])
    for table, fixed in tables:
        for name in _unique_columns(conn, table) - {fixed}:
            col = table.columns[name]
            if not (col.generated or col.has_default or _base(col) in _TEXT_TYPES + ("uuid",)):
                return False
    key_table, key_name = parent if parent else (profiles, target.key_column)
    return _base(key_table.columns[key_name]) in ("uuid", "integer", "bigint", "smallint") + _TEXT_TYPES


def _copy_columns(table: Table, unique: set[str], fixed: dict[str, sql.Composable]) -> dict[str, sql.Composable]:
    """Column -> expression over the source row ``s`` and the copy number ``i``."""
    exprs: dict[str, sql.Composable] = {}
    for col in table.columns.values():
        ident = sql.Identifier("s", col.name)
        if col.name in fixed:
            exprs[col.name] = fixed[col.name]
        elif col.generated or col.identity:
            continue
        elif col.name in unique and _base(col) == "uuid":
            exprs[col.name] = sql.SQL("gen_random_uuid()")
        elif col.name in unique and _base(col) in _TEXT_TYPES:
            # an e-mail stays an e-mail: the copy number goes into its local part
            exprs[col.name] = sql.SQL(
                "CASE WHEN strpos({c}, '@') > 0 THEN overlay({c} PLACING '+c' || g.i || '@' "
                "FROM strpos({c}, '@') FOR 1) ELSE {c} || '-c' || g.i END").format(c=ident)
        elif col.name in unique:
            continue  # unique with a default (a sequence): the copy takes a fresh value
        else:
            exprs[col.name] = ident
    return exprs


def _copy_users(conn: psycopg.Connection[Any], target: Target, profiles: Table, sessions: Table,
                parent: tuple[Table, str] | None, sources: list[Any], count: int) -> tuple[int, int]:
    """Users ``len(sources) .. count-1`` as copies of ``sources[i % len(sources)]``; (users, sessions)."""
    key_table, key_name = parent if parent else (profiles, target.key_column)
    key_type = sql.SQL(key_table.columns[key_name].type_name)
    salt = uuid.uuid4().hex[:12]
    base = _base(key_table.columns[key_name])
    if base == "uuid":
        new_key: sql.Composable = sql.SQL("md5({} || g.i)::uuid").format(sql.Literal(f"rolemig-seed-{salt}-"))
    elif base in ("integer", "bigint", "smallint"):
        top = conn.execute(sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
            sql.Identifier(key_name), key_table.ident)).fetchone()[0]
        new_key = sql.SQL("({} + g.i)::{}").format(sql.Literal(top), key_type)
    else:
        new_key = sql.SQL("({} || g.i)::{}").format(sql.Literal(f"user-{salt}-"), key_type)
    copies = sql.SQL("generate_series({}::bigint, {}::bigint) AS g(i)").format(
        sql.Literal(len(sources)), sql.Literal(count - 1))
    source_key = sql.SQL("(({}::text[])[1 + g.i % {}])::{}").format(
        sql.Literal([str(k) for k in sources]), sql.Literal(len(sources)), key_type)

    def insert(table: Table, key: str, fixed: dict[str, sql.Composable], unique: set[str]) -> int:
        exprs = _copy_columns(table, unique, fixed)
        query = sql.SQL("INSERT INTO {t} ({cols}) SELECT {vals} FROM {copies} JOIN {t} AS s ON s.{k} = {src}").format(
            t=table.ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in exprs),
            vals=sql.SQL(", ").join(exprs.values()), copies=copies, k=sql.Identifier(key), src=source_key)
        return conn.execute(query).rowcount

    # fresh tables have no statistics: without them the copies' joins are planned as nested loops
    for table in [profiles, sessions] + ([parent[0]] if parent else []):
        conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
    parent_unique = set()
    if parent is not None:
        parent_unique = _unique_columns(conn, parent[0]) - {parent[1]}
        insert(parent[0], parent[1], {parent[1]: new_key}, parent_unique)
    # a profile column named like a unique column of the parent (the e-mail) gets the same new value
    users = insert(profiles, target.key_column, {target.key_column: new_key},
                   (_unique_columns(conn, profiles) | parent_unique) - {target.key_column})
    session_key = [c for c in _unique_columns(conn, sessions) if c != target.sessions_user_column]
    fixed = {target.sessions_user_column: new_key}
    written = insert(sessions, target.sessions_user_column, fixed, set(session_key))
    return users, written
