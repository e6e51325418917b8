"""Rows for the access matrix to look at: a few per empty RLS-protected table.

The seeded template holds users and sessions only; an application table with no
rows would make every cell of the matrix empty, before and after, and prove
nothing. This fills each empty RLS-protected table of the policy schemas (and
the empty tables they reference) with a handful of rows, set-based, reading
only the catalog: columns that reference a user are spread over the acting
users (so "own row" policies are exercised for every role), other references
over the referenced rows, enum columns over their labels, required columns by
type; columns with defaults keep them. Nullable foreign keys of the profiles
table that are all NULL (e.g. ``organization_id``) are spread too, so
membership policies have members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.access.catalog import owner_references, rls_tables
from pytest_rolemig.db.query import scalar
from pytest_rolemig.target import Target

# Expressions by column type, in terms of the row number g. They are SQL text with literal
# braces ('{}'::jsonb): wrap them in sql.SQL and join, never use them as a .format() template.
_BY_TYPE = {
    "text": "'acl row ' || g", "character varying": "'acl row ' || g", "boolean": "g % 2 = 0",
    "integer": "g", "bigint": "g", "smallint": "g", "numeric": "g", "real": "g", "double precision": "g",
    "jsonb": "'{}'::jsonb", "json": "'{}'::json", "uuid": "gen_random_uuid()",
    "timestamp with time zone": "now()", "timestamp without time zone": "localtimestamp",
    "date": "current_date", "inet": "'127.0.0.1'::inet",
}


@dataclass(frozen=True)
class SeededTables:
    """Rows written per table, and tables left empty with the reason."""

    rows: dict[str, int]
    skipped: dict[str, str]


def _columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', t.typtype = 'e',
               fn.nspname, fc.relname, fa.attname
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_catalog.pg_constraint k
               ON k.conrelid = c.oid AND k.contype = 'f' AND k.conkey = array[a.attnum]
        LEFT JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
        LEFT JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
        LEFT JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """, (schema, table)).fetchall()


def _policy_literals(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> list[str]:
    """Text literals that the table's policies compare ``column`` with: values worth having in it."""
    pattern = sql.Literal(column)
    return [r[0] for r in conn.execute(sql.SQL(
        """
        SELECT DISTINCT m[2] FROM pg_catalog.pg_policies p,
             LATERAL regexp_matches(coalesce(p.qual, '') || ' ' || coalesce(p.with_check, ''),
                                    '\\m(\\w+) = ''([^'']*)''::text', 'g') AS m
        WHERE p.schemaname = %s AND p.tablename = %s AND m[1] = {}
        ORDER BY 1
        """).format(pattern), (schema, table)).fetchall()]


def _default(conn: psycopg.Connection[Any], schema: str, table: str, column: str) -> str:
    """The column's default expression as SQL text (looked up by name: no quoting to get wrong)."""
    row = conn.execute(
        """
        SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d
        JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s
        """, (schema, table, column)).fetchone()
    return row[0] if row else "NULL"


def _is_empty(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    return bool(scalar(conn, sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, table))))


def seed_access_rows(conn: psycopg.Connection[Any], target: Target, owner_keys: list[str],
                     per_table: int | None = None) -> SeededTables:
    """Fill empty RLS-protected tables with ``per_table`` rows each (default: one per owner, at least 12)."""
    per_table = per_table or max(12, len(owner_keys))
    owners = owner_references(conn, target)
    profiles = target.profiles_name
    pending = {t for t in rls_tables(conn, target.policy_schemas)
               if t != profiles and _is_empty(conn, *t)}
    rows: dict[str, int] = {}
    skipped: dict[str, str] = {}
    keys = sql.Literal(owner_keys)
    lenient = False  # first wait for every parent; on a cycle, leave nullable references NULL
    while pending:
        progress = False
        for schema, table in sorted(pending):
            cols, vals, wait = [], [], None
            for name, type_name, not_null, has_default, is_enum, rs, rt, rc in _columns(conn, schema, table):
                if rs is not None and (rs, rt, rc) in owners:
                    expr = sql.SQL("({k}::text[])[1 + g % {n}]::{ty}").format(
                        k=keys, n=sql.Literal(max(len(owner_keys), 1)), ty=sql.SQL(type_name))
                elif rs is not None:
                    if (rs, rt) == (schema, table) or (rs, rt) in pending and lenient and not not_null:
                        continue  # self reference, or a parent still empty: leave NULL
                    if (rs, rt) in pending:
                        wait = f"{rs}.{rt}"
                        break
                    expr = sql.SQL("(SELECT r.{c} FROM {t} AS r ORDER BY r.{c} OFFSET g % "
                                   "greatest((SELECT count(*) FROM {t}), 1) LIMIT 1)").format(
                        c=sql.Identifier(rc), t=sql.Identifier(rs, rt))
                elif has_default:
                    words = _policy_literals(conn, schema, table, name) if type_name == "text" else []
                    if not words:
                        continue  # keep the default
                    # alternate the default with the values the table's policies compare this column to
                    expr = sql.SQL("CASE WHEN g % {n} = 0 THEN NULL ELSE ({w}::text[])[g % {n}] END").format(
                        n=sql.Literal(len(words) + 1), w=sql.Literal(words))
                    default = sql.SQL(_default(conn, schema, table, name))
                    expr = sql.SQL("coalesce({}, {})").format(expr, default)
                elif is_enum:
                    expr = sql.SQL("(enum_range(NULL::{ty}))[1 + g % cardinality(enum_range(NULL::{ty}))]"
                                   ).format(ty=sql.SQL(type_name))
                elif type_name.split("(")[0] in _BY_TYPE:
                    by_type = sql.SQL(_BY_TYPE[type_name.split("(")[0]])
                    expr = sql.SQL("::").join([by_type, sql.SQL(type_name)])
                elif not_null:
                    wait = f"no value for required column {name} of type {type_name}"
                    break
                else:
                    continue
                cols.append(sql.Identifier(name))
                vals.append(expr)
            if wait is not None and "." in wait and not wait.startswith("no value"):
                continue  # try again once the parent has rows
            pending.discard((schema, table))
            progress = True
            if wait is not None or not cols:
                skipped[f"{schema}.{table}"] = wait or "no column to fill"
                continue
            query = sql.SQL("INSERT INTO {t} ({c}) SELECT {v} FROM generate_series(0, {n}) AS g").format(
                t=sql.Identifier(schema, table), c=sql.SQL(", ").join(cols), v=sql.SQL(", ").join(vals),
                n=sql.Literal(per_table - 1))
            try:
                with conn.transaction():
                    rows[f"{schema}.{table}"] = conn.execute(query).rowcount
            except psycopg.Error as exc:
                skipped[f"{schema}.{table}"] = str(exc).strip().splitlines()[0]
        if not progress and not lenient:
            lenient = True
        elif not progress:
            for schema, table in sorted(pending):
                skipped[f"{schema}.{table}"] = "references a table that could not be filled"
            break
    _link_profiles(conn, target, rows)
    return SeededTables(rows, skipped)


def _link_profiles(conn: psycopg.Connection[Any], target: Target, seeded: dict[str, int]) -> None:
    """Point all-NULL nullable foreign keys of the profiles table at rows just seeded."""
    schema, table = target.profiles_name
    for name, _type, not_null, _d, _e, rs, rt, rc in _columns(conn, schema, table):
        if rs is None or not_null or f"{rs}.{rt}" not in seeded:
            continue
        conn.execute(sql.SQL(
            """
            UPDATE {p} AS p SET {c} = r.{rc}
            FROM (SELECT q.{k} AS k, row_number() OVER (ORDER BY q.{k}::text) AS i FROM {p} AS q) u,
                 LATERAL (SELECT x.{rc} FROM {rt} AS x ORDER BY x.{rc}
                          OFFSET u.i % (SELECT count(*) FROM {rt}) LIMIT 1) r
            WHERE p.{k} = u.k AND NOT EXISTS (SELECT 1 FROM {p} AS z WHERE z.{c} IS NOT NULL)
            """).format(p=sql.Identifier(schema, table), c=sql.Identifier(name), rc=sql.Identifier(rc),
                        k=sql.Identifier(target.key_column), rt=sql.Identifier(rs, rt)))
