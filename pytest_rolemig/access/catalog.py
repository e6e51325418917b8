"""What the access matrix probes: the RLS tables, views and functions the API exposes, and how.

For each table: its key, a column a no-op UPDATE may set, an INSERT of template rows owned by
the acting user, and whether an UPDATE policy's WITH CHECK differs from its USING (then the
probe must really update). Read from the catalog as the connecting owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig.db.query import scalar
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.seeding import split_name
from pytest_rolemig.target import Target

TEMPLATES_PER_TABLE = 2
#: Probe UPDATE reach with ``SELECT ... FOR NO KEY UPDATE`` where that is equivalent (see above).
LOCK_PROBE = True


@dataclass(frozen=True)
class TableInfo:
    """What the matrix needs to know to exercise one table."""

    schema: str
    name: str
    key_expr: sql.Composable
    update_column: str | None
    update_with_check: bool  # an UPDATE policy's WITH CHECK differs from its USING: probe with a no-op UPDATE
    insert: sql.Composed | None
    owner_columns: tuple[str, ...]
    templates: tuple[tuple[str, str], ...]  # (key, row as JSON text)
    unique_key: bool = True  # key_expr is a primary key (no key twice)
    read_only: bool = False  # a view the API exposes: only SELECT is probed

    @property
    def qualified(self) -> str:
        """``schema.table``, as the matrix and the reports name the table."""
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        """The qualified name, quoted, for composing statements."""
        return sql.Identifier(self.schema, self.name)




def rls_tables(conn: psycopg.Connection[Any], schemas: Iterable[str]) -> list[tuple[str, str]]:
    """Tables with row level security enabled in ``schemas``, in name order."""
    return [tuple(r) for r in conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relrowsecurity
          AND n.nspname = ANY(%s)
        ORDER BY 1, 2
        """, (list(schemas),)).fetchall()]


def exposed_views(conn: psycopg.Connection[Any], schemas: Iterable[str], api_role: str) -> list[tuple[str, str]]:
    """Views and materialized views of ``schemas`` the API role may read (what PostgREST serves)."""
    return [tuple(r) for r in conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY(%s)
          AND pg_catalog.has_table_privilege(%s, c.oid, 'SELECT')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                           WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """, (list(schemas), api_role)).fetchall()]


def exposed_functions(conn: psycopg.Connection[Any], schemas: Iterable[str], api_role: str) -> list[str]:
    """Read-only functions of ``schemas`` without arguments that the API role may call (RPC).

    Stable or immutable, not a trigger, not from an extension: calling one as a user changes
    nothing, and what it returns may depend on the caller's role (``can_see_billing()``).
    """
    return [r[0] for r in conn.execute(
        """
        SELECT pg_catalog.format('%%I.%%I', n.nspname, p.proname) FROM pg_catalog.pg_proc p
        JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = ANY(%s) AND p.prokind = 'f' AND p.pronargs = 0 AND p.provolatile IN ('s', 'i')
          AND p.prorettype NOT IN ('pg_catalog.trigger'::regtype, 'pg_catalog.void'::regtype)
          AND pg_catalog.has_function_privilege(%s, p.oid, 'EXECUTE')
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                           WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
        ORDER BY 1
        """, (list(schemas), api_role)).fetchall()]


def owner_references(conn: psycopg.Connection[Any], target: Target) -> set[tuple[str, str, str]]:
    """(schema, table, column) that identify a user: the profiles user column and what it references."""
    schema, table = split_name(target.profiles_table)
    refs = {(schema, table, target.user)}
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
        """, (schema, table, target.user)).fetchone()
    if row:
        refs.add(tuple(row))
    return refs


def table_columns(conn: psycopg.Connection[Any], schema: str, table: str, role: str) -> list[tuple[Any, ...]]:
    """The columns of ``schema.table`` as the probe needs them, with what ``role`` may do with each."""
    return conn.execute(
        """
        SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attgenerated <> '',
               a.attidentity, a.atthasdef,
               coalesce(i.indisprimary, false),
               pg_catalog.has_column_privilege(%s, c.oid, a.attname, 'UPDATE'),
               (SELECT array_agg(array[fn.nspname, fc.relname, fa.attname])
                FROM pg_catalog.pg_constraint k
                JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
                JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
                JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
                WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.conkey = array[a.attnum])
        FROM pg_catalog.pg_attribute a
        JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey)
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """, (role, schema, table)).fetchall()


def table_info(conn: psycopg.Connection[Any], schema: str, table: str, owners: set[tuple[str, str, str]],
               auth: AuthSettings) -> TableInfo:
    """Key expression, the column a no-op UPDATE sets, the owned-copy INSERT and its templates."""
    cols = table_columns(conn, schema, table, auth.auth_role)
    pk = [c[0] for c in cols if c[5]]
    if len(pk) == 1:
        key_expr: sql.Composable = sql.SQL("{}::text").format(sql.Identifier("t", pk[0]))
    elif pk:
        key_expr = sql.SQL("concat_ws(',', {})").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in pk))
    else:  # no primary key: the row's content is its identity
        key_expr = sql.SQL("md5(to_jsonb(t)::text)")
    settable = [c for c in cols if not c[2] and c[3] != "a"]
    update_column = next((c[0] for c in settable if c[6]), None)

    is_owner = {c[0] for c in cols
                if (schema, table, c[0]) in owners or any(tuple(r) in owners for r in (c[7] or []))}
    targets: list[sql.Composable] = []
    values: list[sql.Composable] = []
    for name, type_name, _gen, _ident, has_default, primary, _upd, _refs in settable:
        if name in is_owner:
            values.append(sql.SQL("coalesce(%(user)s::{}, r.{})").format(sql.SQL(type_name), sql.Identifier(name)))
        elif primary and has_default:
            continue  # a fresh key from the column default
        elif primary and type_name == "uuid":
            values.append(sql.SQL("gen_random_uuid()"))
        else:  # an equal key fails on the unique index, after RLS has let the row through
            values.append(sql.SQL("r.{}").format(sql.Identifier(name)))
        targets.append(sql.Identifier(name))
    insert = sql.SQL("INSERT INTO {t} ({cols}) "
                     "SELECT {vals} FROM jsonb_populate_record(NULL::{t}, %(row)s) AS r").format(
        t=sql.Identifier(schema, table), cols=sql.SQL(", ").join(targets), vals=sql.SQL(", ").join(values),
    ) if targets else None
    # to_jsonb only for the rows kept: beside ORDER BY ... LIMIT it ran for every row of the
    # table (10,000 profiles, four states: 0.86 s of a 10,000-user gate run)
    templates = tuple(conn.execute(
        sql.SQL("SELECT f.k, to_jsonb(f.r)::text "
                "FROM (SELECT {k} AS k, t AS r FROM {t} AS t ORDER BY 1 LIMIT {n}) AS f ORDER BY 1").format(
            k=key_expr, t=sql.Identifier(schema, table), n=sql.Literal(TEMPLATES_PER_TABLE))).fetchall())
    with_check = scalar(conn,
        """
        SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                        WHERE p.polrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
                          AND p.polcmd IN ('w', '*') AND p.polwithcheck IS NOT NULL
                          AND pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
                              IS DISTINCT FROM pg_catalog.pg_get_expr(p.polqual, p.polrelid))
        """, (schema, table))
    return TableInfo(schema, table, key_expr, update_column, with_check or not LOCK_PROBE, insert,
                     tuple(sorted(is_owner)), templates, unique_key=bool(pk))
