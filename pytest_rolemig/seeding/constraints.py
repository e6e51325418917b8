"""Rows the application accepts: unique indexes, CHECKs, foreign keys from any column, sign-up triggers.

The gate's own users must never break the application's rules.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.db.query import scalar
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding.catalog import Table, read_table
from pytest_rolemig.seeding.copies import TEXT_TYPES, base_type
from pytest_rolemig.seeding.rows import columns_for, copy_row, copy_rows, copy_text, filler, new_keys
from pytest_rolemig.target import Target, quote_name

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


def creates_rows(conn: psycopg.Connection[Any], parent: Table, child: Table) -> bool:
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
    return api.role_mapping(conn)


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


def write_role_rows(conn: psycopg.Connection[Any], target: Target, profiles: Table,
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
        for row, value in zip(inserts, new_keys(conn, profiles, target.key_column, len(inserts)), strict=True):
            row[target.key_column] = value
    generated_key = own_key and key.has_default  # the table numbers its rows itself
    forced = {target.user, target.role_column} | (set() if generated_key else {target.key_column})
    sample = {k: v for k, v in inserts[0].items() if not (generated_key and k == target.key_column)}
    if own_key and key.has_default:
        sample.pop("id", None)
        for row in inserts:
            row.pop(target.key_column, None)
    cols = columns_for(profiles, sample, forced)
    copy_fitting(conn, profiles, cols, inserts, forced)


def copy_fitting(conn: psycopg.Connection[Any], table: Table, columns: list[str], rows: list[dict[str, Any]],
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
                return copy_rows(conn, table, columns, (copy_row(table, columns, v) for v in values))
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
    base = base_type(column)
    given = [copy_text(row.get(name)) for row in values]
    if name in values[0] and None not in given and len(set(given)) == len(given):
        return  # the factories made them distinct already (e-mails): keep them as they are
    if base in TEXT_TYPES:
        salt = uuid.uuid4().hex[:4]  # distinct from the rows of an earlier seeding too
        for n, row in enumerate(values):
            text = copy_text(row.get(name)) if name in row else filler(column, table)
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
    rows = [{column: k} for k in new_keys(conn, target, column, need)] \
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
        [[copy_text(r[c]) if c in r else filler(target.columns[c], target) for r in rows] for c in cols])
    return [r[0] for r in made]
