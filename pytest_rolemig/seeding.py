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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.db import scalar
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.factories import build_session, build_user
from pytest_rolemig.target import Target, quote_name, split_qualified


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
        start = scalar(conn, sql.SQL("SELECT coalesce(max({}), 0) + 1 FROM {}").format(
            sql.Identifier(key), table.ident))
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
    sessions = (read_table(conn, target.sessions_table, "--rolemig-sessions-table / rolemig_sessions_table")
                if target.sessions_table is not None else None)  # None: no sessions table, no sessions seeded
    if sessions is not None and target.sessions_user_column not in sessions.columns:
        raise ConfigError(
            f"column {target.sessions_user_column} does not exist in {sessions} "
            "(--rolemig-sessions-user-column / rolemig_sessions_user_column)"
        )
    if target.user not in profiles.columns:
        raise ConfigError(f"column {target.user} does not exist in {profiles} "
                          "(--rolemig-user-column / rolemig_user_column)")
    # a roles table (one row per user and role) names the user in its own column; its rows
    # have keys of their own, and the user's parent row is found through that column
    multi = target.user != target.key_column
    parent = parent_of(conn, profiles, target.user)
    cycle = math.lcm(len(roles), max_sessions + 1)  # a copy keeps its source's role and session count
    built = min(count, cycle * max(1, -(-factory_users // cycle)))
    copyable = (built < count and not multi and _copyable(conn, profiles, sessions, parent, target)
                and not (parent is not None and _creates_rows(conn, parent[0], profiles)))
    keys = _key_values(conn, parent[0] if parent else profiles, parent[1] if parent else target.user,
                       built if copyable else count)

    users = []
    for i, (key, role) in enumerate(zip(keys, itertools.cycle(roles))):
        user = build_user(role=role)
        user["id"] = key
        user[target.user] = key
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
        _copy_fitting(conn, parent_table, cols, [{**u, parent_key: u["id"]} for _, u in users], {parent_key})
    _write_role_rows(conn, target, profiles, [u for _, u in users], roles if multi else [])

    session_rows = [
        {**build_session(user_id=u["id"]), target.sessions_user_column: u["id"]}
        for i, u in users
        for _ in range(i % (max_sessions + 1))
    ] if sessions is not None else []
    written = 0
    if session_rows and sessions is not None:
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


# ------------------------------------------------- rows the application accepts ---
# The gate's own users must never break the application's rules: a unique index, a CHECK, a
# foreign key from any column, or a trigger that creates rows when a user signs up.

_FOREIGN_KEYS = """
SELECT a.attname, fn.nspname, fc.relname, fa.attname
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
  JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
  JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
 WHERE k.contype = 'f' AND cardinality(k.conkey) = 1
   AND k.conrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""
_INDEXED_UNIQUE = """
SELECT DISTINCT a.attname FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
 WHERE i.indisunique
   AND i.indrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""
_CHECK_COLUMNS = """
SELECT a.attname FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
 WHERE k.contype = 'c' AND k.conname = %s
   AND k.conrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""


def _creates_rows(conn: psycopg.Connection[Any], parent: Table, child: Table) -> bool:
    """Whether inserting into ``parent`` fires a trigger (a sign-up trigger) that may write ``child``."""
    row = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                          WHERE t.tgrelid = pg_catalog.to_regclass(
                                    pg_catalog.format('%%I.%%I', %s::text, %s::text))
                            AND NOT t.tgisinternal AND t.tgenabled <> 'D' AND (t.tgtype & 4) <> 0)""",
        (parent.schema, parent.name),
    ).fetchone()
    return bool(row and row[0]) and child is not parent


def _mapping(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The loaded role mapping (legacy -> new), or empty before the infrastructure is installed."""
    missing = conn.execute("SELECT pg_catalog.to_regclass('migration_control.role_mapping') IS NULL").fetchone()
    if missing is None or missing[0]:
        return {}
    query = "SELECT legacy_role, new_role FROM migration_control.role_mapping"
    return {r[0]: r[1] for r in conn.execute(query)}


def _roles_of(i: int, role: str, roles: list[str], mapping: dict[str, str]) -> list[str]:
    """The roles user ``i`` holds in a roles table: its own, and in every other round of the roles
    (users ``i`` with ``(i // len(roles))`` even: every role gets some) a second one.

    The second is a legacy role the mapping merges with the first when there is one (the case a
    migration of a roles table must handle), else the next role.
    """
    if (i // len(roles)) % 2 or len(roles) < 2:
        return [role]
    partners = [r for r in roles
                if r != role and mapping.get(r) is not None and mapping.get(r) == mapping.get(role)]
    return [role, partners[0] if partners else roles[(roles.index(role) + 1) % len(roles)]]


def _write_role_rows(conn: psycopg.Connection[Any], target: Target, profiles: Table,
                     users: list[dict[str, Any]], roles: list[str]) -> None:
    """The profiles (or role) rows of ``users``, as the application would hold them.

    ``roles`` non-empty: a roles table, one row per user and role (see :func:`_roles_of`).
    Rows a trigger already created for a user (a sign-up trigger on the parent table) are
    kept: the first gets the user's role, as the application would set it after sign-up,
    and only the roles the user does not hold yet are inserted.
    """
    mapping = _mapping(conn) if roles else {}
    wanted = [(u, r) for i, u in enumerate(users)
              for r in (_roles_of(i, u[target.role_column], roles, mapping) if roles
                        else [u[target.role_column]])]
    existing: dict[str, list[tuple[str, str]]] = {}
    for uid, key, role in conn.execute(
        sql.SQL("SELECT {u}::text, {k}::text, {r}::text FROM {t} "
                "WHERE {u}::text = ANY (%s) ORDER BY {k}").format(
            u=sql.Identifier(target.user), k=sql.Identifier(target.key_column),
            r=sql.Identifier(target.role_column), t=profiles.ident),
        ([str(u[target.user]) for u in users],),
    ):
        existing.setdefault(uid, []).append((key, role))
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[str, str]] = []
    for user, role in wanted:
        rows = existing.get(str(user[target.user]), [])
        if any(r == role for _, r in rows):
            continue
        wanted_roles = {r for u, r in wanted if u is user}
        spare = next((k for k, r in rows if r not in wanted_roles and (k, r) not in updates), None)
        if spare is not None:
            updates.append((spare, role))
            rows[:] = [(k, role if k == spare else r) for k, r in rows]
        else:
            inserts.append({**user, target.role_column: role})
    if updates:
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("UPDATE {t} SET {r} = %s::text::{ty} WHERE {k}::text = %s").format(
                t=profiles.ident, r=sql.Identifier(target.role_column), k=sql.Identifier(target.key_column),
                ty=sql.SQL(profiles.columns[target.role_column].type_name)),
                [(role, key) for key, role in updates])
    if not inserts:
        return
    key = profiles.columns[target.key_column]
    own_key = target.user != target.key_column
    if own_key and not key.has_default:
        for row, value in zip(inserts, _key_values(conn, profiles, target.key_column, len(inserts)), strict=True):
            row[target.key_column] = value
    generated_key = own_key and key.has_default  # the table numbers its rows itself
    forced = {target.user, target.role_column} | (set() if generated_key else {target.key_column})
    sample = {k: v for k, v in inserts[0].items() if not (generated_key and k == target.key_column)}
    if own_key and key.has_default:
        sample.pop("id", None)
        for row in inserts:
            row.pop(target.key_column, None)
    cols = _columns_for(profiles, sample, forced)
    _copy_fitting(conn, profiles, cols, inserts, forced)


def _copy_fitting(conn: psycopg.Connection[Any], table: Table, columns: list[str], rows: list[dict[str, Any]],
                  forced: set[str]) -> int:
    """COPY ``rows`` into ``table`` so that the application's constraints accept them.

    Values of columns under a unique index (partial ones too: "one owner per organisation")
    are made distinct per row; a required column with a foreign key takes an existing row
    of the referenced table (its own new one where the column is under a unique index). A
    CHECK constraint that refuses a factory value leaves the columns it names to their
    defaults when they are optional; otherwise the error names the constraint and the table.
    """
    unique = {r[0] for r in conn.execute(_INDEXED_UNIQUE, (table.schema, table.name))} - forced
    fks = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(_FOREIGN_KEYS, (table.schema, table.name))}
    values = [dict(row) for row in rows]
    for name in columns:
        if name in forced:
            continue
        if name in fks:
            refs = _referenced(conn, fks[name], len(values), distinct=name in unique)
            for n, row in enumerate(values):
                row[name] = refs[n % len(refs)]
        elif name in unique:
            _make_distinct(conn, table, name, values)
    columns = list(columns)
    for _ in range(len(columns) + 1):
        try:
            with conn.transaction():
                return _copy(conn, table, columns, (_row(table, columns, v) for v in values))
        except psycopg.errors.CheckViolation as exc:
            constraint = exc.diag.constraint_name or "?"
            named = {r[0] for r in conn.execute(_CHECK_COLUMNS, (constraint, table.schema, table.name))}
            optional = [c for c in columns
                        if c in named and c not in forced and not table.columns[c].required]
            if not optional:
                raise ConfigError(
                    f"cannot seed {table}: CHECK constraint {constraint} on table {table} refuses the seeded "
                    f"rows ({str(exc).strip().splitlines()[0]}); give its columns a default the constraint "
                    "accepts, or seed that table yourself") from exc
            columns = [c for c in columns if c not in optional]
    raise ConfigError(f"cannot seed {table}: its CHECK constraints refuse every seeded row")


def _make_distinct(conn: psycopg.Connection[Any], table: Table, name: str,
                   values: list[dict[str, Any]]) -> None:
    """One value per row in a column under a unique index: text gets the row number, numbers count up."""
    column = table.columns[name]
    base = _base(column)
    given = [_text(row.get(name)) for row in values]
    if name in values[0] and None not in given and len(set(given)) == len(given):
        return  # the factories made them distinct already (e-mails): keep them as they are
    if base in _TEXT_TYPES:
        salt = uuid.uuid4().hex[:4]  # distinct from the rows of an earlier seeding too
        for n, row in enumerate(values):
            text = _text(row.get(name)) if name in row else _filler(column, table)
            if text is None:
                continue
            at = text.find("@")
            row[name] = f"{text[:at]}+s{salt}{n}{text[at:]}" if at > 0 else f"{text}-{salt}{n}"
    elif base in ("integer", "bigint", "smallint", "numeric"):
        top = scalar(conn, sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(sql.Identifier(name), table.ident))
        for n, row in enumerate(values):
            row[name] = int(top) + 1 + n


def _referenced(conn: psycopg.Connection[Any], ref: tuple[str, str, str], count: int,
                distinct: bool) -> list[Any]:
    """Values of a referenced column: existing rows, or new rows (one per seeded row if ``distinct``)."""
    schema, name, column = ref
    target = read_table(conn, f"{quote_name(schema)}.{quote_name(name)}",
                        "a table a seeded column references")
    have = [r[0] for r in conn.execute(sql.SQL("SELECT {c} FROM {t} ORDER BY {c} LIMIT %s").format(
        c=sql.Identifier(column), t=target.ident), (count,))] if not distinct else []
    if have:
        return have
    need = count if distinct else 1
    rows = [{column: k} for k in _key_values(conn, target, column, need)] \
        if not target.columns[column].has_default else [{} for _ in range(need)]
    cols = [c.name for c in target.columns.values() if not c.generated and (c.required or c.name in rows[0])]
    if not cols:
        return [r[0] for r in conn.execute(sql.SQL(
            "INSERT INTO {t} SELECT FROM generate_series(1, %s) RETURNING {c}").format(
                t=target.ident, c=sql.Identifier(column)), (need,))]
    made = conn.execute(sql.SQL(
        "INSERT INTO {t} ({cols}) SELECT * FROM unnest({arrays}) RETURNING {c}").format(
        t=target.ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        arrays=sql.SQL(", ").join(sql.SQL("%s::text[]::{}[]").format(sql.SQL(target.columns[c].type_name))
                                  for c in cols),
        c=sql.Identifier(column)),
        [[_text(r[c]) if c in r else _filler(target.columns[c], target) for r in rows] for c in cols])
    return [r[0] for r in made]


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


def _copyable(conn: psycopg.Connection[Any], profiles: Table, sessions: Table | None,
              parent: tuple[Table, str] | None, target: Target) -> bool:
    """Whether copies can be made unique: every other unique column is text, uuid or has a default."""
    tables = [(profiles, target.key_column)] + ([parent] if parent else [])
    if sessions is not None:
        tables.append((sessions, target.sessions_user_column))
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


def _copy_users(conn: psycopg.Connection[Any], target: Target, profiles: Table, sessions: Table | None,
                parent: tuple[Table, str] | None, sources: list[Any], count: int) -> tuple[int, int]:
    """Users ``len(sources) .. count-1`` as copies of ``sources[i % len(sources)]``; (users, sessions)."""
    key_table, key_name = parent if parent else (profiles, target.key_column)
    key_type = sql.SQL(key_table.columns[key_name].type_name)
    salt = uuid.uuid4().hex[:12]
    base = _base(key_table.columns[key_name])
    if base == "uuid":
        new_key: sql.Composable = sql.SQL("md5({} || g.i)::uuid").format(sql.Literal(f"rolemig-seed-{salt}-"))
    elif base in ("integer", "bigint", "smallint"):
        top = scalar(conn, sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
            sql.Identifier(key_name), key_table.ident))
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
    for table in [profiles] + ([sessions] if sessions else []) + ([parent[0]] if parent else []):
        conn.execute(sql.SQL("ANALYZE {}").format(table.ident))
    parent_unique = set()
    if parent is not None:
        parent_unique = _unique_columns(conn, parent[0]) - {parent[1]}
        insert(parent[0], parent[1], {parent[1]: new_key}, parent_unique)
    # a profile column named like a unique column of the parent (the e-mail) gets the same new value
    users = insert(profiles, target.key_column, {target.key_column: new_key},
                   (_unique_columns(conn, profiles) | parent_unique) - {target.key_column})
    if sessions is None:
        return users, 0
    session_key = [c for c in _unique_columns(conn, sessions) if c != target.sessions_user_column]
    fixed = {target.sessions_user_column: new_key}
    written = insert(sessions, target.sessions_user_column, fixed, set(session_key))
    return users, written
