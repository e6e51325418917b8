"""An independent view of the data: what the tables hold, read without the project's SQL.

The SQL validation functions compare with the backup tables they wrote
themselves; a bug shared by backup and validation would hide there. A
:class:`Snapshot` reads the live tables directly (row text output and
``pg_policy``), so comparing two snapshots proves content equality on its own.

Two places to keep the rows, one definition of them (:func:`row_text_query`):
:class:`Snapshot` holds them in Python, handy for tests on a few hundred users;
:class:`StoredSnapshot` keeps them in temporary tables of the connection and
compares in SQL, so the gate's memory stays flat at a million users (the
in-memory snapshot took 770 MB there).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from pytest_rolemig.seeding import split_name
from pytest_rolemig.target import Target


@dataclass(frozen=True)
class Snapshot:
    """Every profile row, session row and policy of the migrated tables, as text."""

    profiles: dict[str, str]
    sessions: dict[str, str]
    policies: dict[tuple[str, str, str], tuple[Any, ...]]

    def differences(self, other: Snapshot, limit: int = 20) -> list[str]:
        """Human-readable differences from ``self`` (before) to ``other`` (after)."""
        out: list[str] = []
        tables: tuple[tuple[str, Mapping[Any, Any], Mapping[Any, Any]], ...] = (
            ("profile", self.profiles, other.profiles),
            ("session", self.sessions, other.sessions),
            ("policy", self.policies, other.policies))
        for label, mine, theirs in tables:
            for key in sorted(set(mine) | set(theirs), key=str):
                if mine.get(key) != theirs.get(key):
                    out.append(f"{label} {key}: before={mine.get(key)!r} after={theirs.get(key)!r}")
                    if len(out) >= limit:
                        return out
        return out


def row_text_query(qualified: str, key: str, role: str | None = None,
                   columns: Sequence[str] | None = None) -> sql.Composed:
    """``SELECT key::text AS k, [role::text AS role,] t::text AS v FROM table t``.

    A row's content is its text output: what both snapshot kinds compare. With ``columns``,
    only those (``ROW(t.a, t.b)::text``): the rest are columns the application's triggers set.
    """
    schema, table = split_name(qualified)
    role_part = sql.SQL(", t.{}::text AS role").format(sql.Identifier(role)) if role else sql.SQL("")
    value = (sql.SQL("ROW({})::text").format(sql.SQL(", ").join(sql.Identifier("t", c) for c in columns))
             if columns is not None else sql.SQL("t::text"))
    return sql.SQL("SELECT t.{k}::text AS k{role}, {v} AS v FROM {t} AS t").format(
        k=sql.Identifier(key), role=role_part, v=value, t=sql.Identifier(schema, table)
    )


def _columns_but(conn: Any, qualified: str, skip: Collection[str], always: bool = False) -> list[str] | None:
    """The table's columns in order without ``skip``; None (the whole row) when nothing is skipped.

    ``always``: the list even when nothing is skipped.
    """
    if not skip and not always:
        return None
    schema, table = split_name(qualified)
    return [r[0] for r in conn.execute(
        """SELECT a.attname FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
              AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", (schema, table)) if r[0] not in skip]


NO_ROWS = sql.SQL("SELECT NULL::text AS k, NULL::text AS v WHERE false")
"""The sessions of an application without a sessions table."""


def _rows(conn: Any, qualified: str, key: str) -> dict[str, str]:
    return {k: v for k, v in conn.execute(row_text_query(qualified, key))}


def _session_key(conn: Any, qualified: str) -> str:
    schema, table = split_name(qualified)
    row = conn.execute(
        """SELECT a.attname FROM pg_catalog.pg_index i
           JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
           WHERE i.indisprimary AND i.indrelid = (
               SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relname = %s)""",
        (schema, table),
    ).fetchone()
    return row[0] if row else "ctid"


def _policies(conn: Any, target: Target) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    return {
        (r[0], r[1], r[2]): tuple(r[3:])
        for r in conn.execute(
            """SELECT n.nspname, c.relname, p.polname, p.polpermissive, p.polcmd,
                      ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r) END
                            FROM unnest(p.polroles) r ORDER BY 1),
                      pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                      pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid),
                      c.relrowsecurity, c.relforcerowsecurity
               FROM pg_catalog.pg_policy p
               JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = ANY(%s)""",
            (list(target.policy_schemas),),
        )
    }


def take_snapshot(conn: Any, target: Target) -> Snapshot:
    """Read profiles, sessions and every policy in the target's policy schemas."""
    return Snapshot(
        profiles=_rows(conn, target.profiles_table, target.key_column),
        sessions=(_rows(conn, target.sessions_table, _session_key(conn, target.sessions_table))
                  if target.sessions_table is not None else {}),
        policies=_policies(conn, target),
    )


def composite_fields(text: str) -> list[str | None]:
    """The fields of a row's text output (``(a,"b c",,"")``) as ``record_out`` writes them.

    An empty unquoted field is NULL, ``""`` the empty string; quotes are doubled or
    backslash-escaped inside a quoted field.
    """
    body, i = text[1:-1], 0
    fields: list[str | None] = []
    n = len(body)
    while True:
        if i < n and body[i] == '"':
            i, buf = i + 1, []
            while i < n:
                c = body[i]
                if c == "\\" and i + 1 < n:
                    buf.append(body[i + 1])
                    i += 2
                elif c == '"' and body.startswith('"', i + 1):
                    buf.append('"')
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            fields.append("".join(buf))
        else:
            end = body.find(",", i)
            end = n if end < 0 else end
            fields.append(body[i:end] or None)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma
        if i == n:
            fields.append(None)
            return fields


def _changed_fields(columns: list[str], before: str | None, after: str | None) -> str:
    """``col 'old' -> 'new', ...`` for the fields that differ; the whole rows when they cannot be split."""
    if before is None or after is None:
        return f"before={before!r} after={after!r}"
    old, new = composite_fields(before), composite_fields(after)
    if len(old) != len(columns) or len(new) != len(columns):
        return f"before={before!r} after={after!r}"
    return ", ".join(f"{c} {x!r} -> {y!r}" for c, x, y in zip(columns, old, new, strict=True) if x != y)


@dataclass(frozen=True)
class RowComparison:
    """How one table's rows changed between two stored snapshots (keys of a few, counts of all)."""

    lost: int
    added: int
    changed: int
    sample: tuple[tuple[str, str | None, str | None], ...]  # (key, before, after)

    @property
    def same(self) -> bool:
        """Nothing lost, added or changed."""
        return not (self.lost or self.added or self.changed)


@dataclass(frozen=True)
class RoleMismatches:
    """Users whose role after the migration is not mapping[role before], or who came or went."""

    count: int
    before_users: int
    after_users: int
    sample: tuple[tuple[str, str | None, str | None, str | None], ...]  # (key, before, expected, got)


class StoredSnapshot:
    """A :class:`Snapshot` kept in temporary tables of ``conn``: rows never come to Python.

    Only comparisons travel: counts and up to ``limit`` example rows. The tables
    (``rolemig_oracle_<label>_profiles`` / ``_sessions``) vanish with the connection.
    """

    def __init__(self, conn: Any, label: str, profiles: int, sessions: int,
                 policies: dict[tuple[str, str, str], tuple[Any, ...]],
                 columns: dict[str, list[str]] | None = None) -> None:
        self.conn, self.label = conn, label
        self.profiles_count, self.sessions_count, self.policies = profiles, sessions, policies
        self.columns = columns or {}  # per part, the columns of the row text (to name what differs)

    @classmethod
    def take(cls, conn: Any, target: Target, label: str, skip: Collection[str] = ()) -> StoredSnapshot:
        """Copy profiles (key, role, row text), sessions (key, row text) and read the policies.

        ``skip``: profile columns left out of the row text (set by the application's triggers).
        """
        counts = []
        columns = {"profiles": _columns_but(conn, target.profiles_table, skip, always=True) or []}
        if target.sessions_table is not None:
            columns["sessions"] = _columns_but(conn, target.sessions_table, (), always=True) or []
        for part, query in (
            ("profiles", row_text_query(target.profiles_table, target.key_column, target.role_column,
                                        _columns_but(conn, target.profiles_table, skip))),
            ("sessions", row_text_query(target.sessions_table, _session_key(conn, target.sessions_table))
             if target.sessions_table is not None else NO_ROWS),
        ):
            table = cls._table(label, part)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
            cur = conn.execute(sql.SQL("CREATE TEMPORARY TABLE {} AS {}").format(table, query))
            conn.execute(sql.SQL("CREATE INDEX ON {} (k)").format(table))
            counts.append(cur.rowcount)
        return cls(conn, label, counts[0], counts[1], _policies(conn, target), columns)

    @staticmethod
    def _table(label: str, part: str) -> sql.Identifier:
        return sql.Identifier(f"rolemig_oracle_{label}_{part}")

    def compare_rows(self, other: StoredSnapshot, part: str, limit: int = 20) -> RowComparison:
        """Rows of ``part`` ('profiles' or 'sessions') lost, added or changed from ``self`` to ``other``."""
        a, b = self._table(self.label, part), self._table(other.label, part)
        rows = self.conn.execute(
            sql.SQL("""SELECT coalesce(a.k, b.k), a.v, b.v,
                              count(*) FILTER (WHERE b.k IS NULL) OVER (),
                              count(*) FILTER (WHERE a.k IS NULL) OVER (),
                              count(*) FILTER (WHERE a.k IS NOT NULL AND b.k IS NOT NULL) OVER ()
                       FROM {a} AS a FULL JOIN {b} AS b ON a.k = b.k
                       WHERE a.v IS DISTINCT FROM b.v
                       ORDER BY 1 LIMIT %s""").format(a=a, b=b), (limit,)
        ).fetchall()
        lost, added, changed = rows[0][3:] if rows else (0, 0, 0)
        sample = [r[:3] for r in rows]
        return RowComparison(lost, added, changed, tuple(sample))

    def differences(self, other: StoredSnapshot, limit: int = 20) -> list[str]:
        """Readable differences from ``self`` (before) to ``other`` (after), like :class:`Snapshot`'s."""
        out: list[str] = []
        for label, part in (("profile", "profiles"), ("session", "sessions")):
            for key, before, after in self.compare_rows(other, part, limit).sample:
                out.append(f"{label} {key}: {_changed_fields(self.columns.get(part, []), before, after)}")
        out += Snapshot({}, {}, self.policies).differences(Snapshot({}, {}, other.policies), limit)
        return out[:limit]

    def role_mismatches(self, after: StoredSnapshot, mapping: dict[str, str],
                        limit: int = 20, merged: tuple[str, ...] = ()) -> RoleMismatches:
        """Users of ``self`` not holding ``mapping[their role]`` in ``after``, and users in only one.

        ``merged``: keys of rows the migration deleted as merged duplicates (reported apart).
        """
        legacy = list(mapping)
        rows = self.conn.execute(
            sql.SQL("""SELECT coalesce(a.k, b.k), a.role, m.new_role, b.role, count(*) OVER ()
                       FROM {a} AS a FULL JOIN {b} AS b ON a.k = b.k
                       LEFT JOIN unnest(%s::text[], %s::text[]) AS m(legacy_role, new_role)
                              ON m.legacy_role = a.role
                       WHERE (a.k IS NULL OR b.role IS DISTINCT FROM m.new_role)
                         AND NOT (b.k IS NULL AND a.k = ANY (%s::text[]))
                       ORDER BY 1 LIMIT %s""").format(a=self._table(self.label, "profiles"),
                                                      b=self._table(after.label, "profiles")),
            (legacy, [mapping[role] for role in legacy], list(merged), limit),
        ).fetchall()
        return RoleMismatches(rows[0][4] if rows else 0, self.profiles_count, after.profiles_count,
                              tuple(r[:4] for r in rows))
