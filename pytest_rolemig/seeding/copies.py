"""Users beyond the factory-built ones, as server-side copies (one ``INSERT ... SELECT`` per table).

Copies take new keys and make unique columns unique (an e-mail keeps its ``@``).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.db.query import scalar
from pytest_rolemig.seeding.catalog import Column, Table
from pytest_rolemig.target import Target

# ------------------------------------------------------------ server-side copies ---

_UNIQUE_COLUMNS = """
SELECT a.attname FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indisunique AND i.indnatts = 1 AND i.indpred IS NULL
   AND i.indrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""
TEXT_TYPES = ("text", "character varying", "citext")


def unique_columns(conn: psycopg.Connection[Any], table: Table) -> set[str]:
    """The columns of ``table`` under a unique index."""
    return {r[0] for r in conn.execute(_UNIQUE_COLUMNS, (table.schema, table.name))}


def base_type(column: Column) -> str:
    """The column's type without its modifier (``character varying`` for ``varchar(80)``)."""
    return column.type_name.split("(")[0]


def copyable(conn: psycopg.Connection[Any], profiles: Table, sessions: Table | None,
              parent: tuple[Table, str] | None, target: Target) -> bool:
    """Whether copies can be made unique: every other unique column is text, uuid or has a default."""
    tables = [(profiles, target.key_column)] + ([parent] if parent else [])
    if sessions is not None:
        tables.append((sessions, target.sessions_user_column))
    for table, fixed in tables:
        for name in unique_columns(conn, table) - {fixed}:
            col = table.columns[name]
            if not (col.generated or col.has_default or base_type(col) in TEXT_TYPES + ("uuid",)):
                return False
    key_table, key_name = parent if parent else (profiles, target.key_column)
    return base_type(key_table.columns[key_name]) in ("uuid", "integer", "bigint", "smallint") + TEXT_TYPES


def _copy_columns(table: Table, unique: set[str], fixed: dict[str, sql.Composable]) -> dict[str, sql.Composable]:
    """Column -> expression over the source row ``s`` and the copy number ``i``."""
    exprs: dict[str, sql.Composable] = {}
    for col in table.columns.values():
        ident = sql.Identifier("s", col.name)
        if col.name in fixed:
            exprs[col.name] = fixed[col.name]
        elif col.generated or col.identity:
            continue
        elif col.name in unique and base_type(col) == "uuid":
            exprs[col.name] = sql.SQL("gen_random_uuid()")
        elif col.name in unique and base_type(col) in TEXT_TYPES:
            # an e-mail stays an e-mail: the copy number goes into its local part
            exprs[col.name] = sql.SQL(
                "CASE WHEN strpos({c}, '@') > 0 THEN overlay({c} PLACING '+c' || g.i || '@' "
                "FROM strpos({c}, '@') FOR 1) ELSE {c} || '-c' || g.i END").format(c=ident)
        elif col.name in unique:
            continue  # unique with a default (a sequence): the copy takes a fresh value
        else:
            exprs[col.name] = ident
    return exprs


def copy_users(conn: psycopg.Connection[Any], target: Target, profiles: Table, sessions: Table | None,
                parent: tuple[Table, str] | None, sources: list[Any], count: int) -> tuple[int, int]:
    """Users ``len(sources) .. count-1`` as copies of ``sources[i % len(sources)]``; (users, sessions)."""
    key_table, key_name = parent if parent else (profiles, target.key_column)
    key_type = sql.SQL(key_table.columns[key_name].type_name)
    salt = uuid.uuid4().hex[:12]
    base = base_type(key_table.columns[key_name])
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
        parent_unique = unique_columns(conn, parent[0]) - {parent[1]}
        insert(parent[0], parent[1], {parent[1]: new_key}, parent_unique)
    # a profile column named like a unique column of the parent (the e-mail) gets the same new value
    users = insert(profiles, target.key_column, {target.key_column: new_key},
                   (unique_columns(conn, profiles) | parent_unique) - {target.key_column})
    if sessions is None:
        return users, 0
    session_key = [c for c in unique_columns(conn, sessions) if c != target.sessions_user_column]
    fixed = {target.sessions_user_column: new_key}
    written = insert(sessions, target.sessions_user_column, fixed, set(session_key))
    return users, written
