"""Loading generated users into the tables, and the dump the round trip compares: every column as text.

The dump shares no code with the backup (``to_jsonb``) or the validation functions, so a bug
they share cannot hide.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from psycopg import sql

from pytest_rolemig.roundtrip.shapes import (
    TableShape,
    UserSet,
    UsersShape,
)

# ------------------------------------------------------------------- load ---


def _copy(conn: Any, table: TableShape, rows: Sequence[dict[str, str | None]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.schema, table.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def load(conn: Any, users: UserSet) -> None:
    """Write the users (parent rows first), their profiles and their sessions through ``COPY``."""
    shape = users.shape
    if shape.parent is not None:
        _copy(conn, shape.parent, [{shape.parent.key: users.user_id(u), **u.parent} for u in users.users])
        # a sign-up trigger on the parent may have created profile (or role) rows already: the
        # generated rows replace them, so the users are exactly as generated
        conn.execute(sql.SQL("DELETE FROM {t} WHERE {u}::text = ANY (%s)").format(
            t=sql.Identifier(shape.profiles.schema, shape.profiles.name),
            u=sql.Identifier(shape.user_column or shape.profiles.key)), ([users.user_id(u) for u in users.users],))
    _copy(conn, shape.profiles, [u.profile for u in users.users])
    if shape.sessions is not None:
        _copy(conn, shape.sessions, [s for u in users.users for s in u.sessions])


def update_row(conn: Any, table: TableShape, key: str, values: dict[str, str | None]) -> None:
    """Set ``values`` (column -> text, cast to the column's type) in the row of ``table`` keyed ``key``."""
    if not values:
        return
    cols = list(values)
    query = sql.SQL("UPDATE {t} SET ({cols}) = ROW({vals}) WHERE {k} = %s::{kt}").format(
        t=sql.Identifier(table.schema, table.name),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        vals=sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(table.column(c).type_name)) for c in cols),
        k=sql.Identifier(table.key), kt=sql.SQL(table.column(table.key).type_name),
    )
    conn.execute(query, [values[c] for c in cols] + [key])


def apply_edits(conn: Any, users: UserSet) -> int:
    """What the application changes after the backup: the users' ``profile_edit`` / ``session_edits``."""
    shape, count = users.shape, 0
    sessions = shape.sessions
    for user in users.users:
        if user.profile_edit:
            update_row(conn, shape.profiles, users.key(user), user.profile_edit)
            count += 1
        if sessions is None or sessions.column(sessions.key).skip:
            continue  # keys assigned by the database: the sessions cannot be addressed
        # strict=False: a user built without edits has no session_edits at all (the default, ())
        for session, edit in zip(user.sessions, user.session_edits, strict=False):
            if edit:
                key = session[sessions.key]
                assert key is not None
                update_row(conn, sessions, key, edit)
                count += 1
    return count


# ------------------------------------------------------------------ oracle ---


@dataclass(frozen=True)
class Dump:
    """Profiles and sessions column by column as text, policies, constraints and RLS flags."""

    profile_columns: tuple[str, ...]
    profiles: dict[str, tuple[str | None, ...]]
    session_columns: tuple[str, ...]
    sessions: dict[str, tuple[str | None, ...]]
    policies: dict[tuple[str, str, str], tuple[Any, ...]]
    constraints: dict[tuple[str, str], str]
    rls: dict[tuple[str, str], tuple[bool, bool]]

    def digest(self) -> str:
        """A sha256 over the sorted content: equal dumps, equal digests."""
        h = hashlib.sha256()
        for part in (self.profiles, self.sessions, self.policies, self.constraints, self.rls):
            for key in sorted(part, key=repr):
                h.update(repr((key, part[key])).encode())  # type: ignore[index]
            h.update(b"\x00")
        return h.hexdigest()

    def roles(self, role_column: str) -> dict[str, str | None]:
        """Each user's role."""
        i = self.profile_columns.index(role_column)
        return {k: v[i] for k, v in self.profiles.items()}

    def without(self, columns: Collection[str]) -> Dump:
        """The dump without these profile columns (those the application's triggers set on every write)."""
        keep = [i for i, c in enumerate(self.profile_columns) if c not in columns]
        if len(keep) == len(self.profile_columns):
            return self
        return replace(self, profile_columns=tuple(self.profile_columns[i] for i in keep),
                       profiles={k: tuple(v[i] for i in keep) for k, v in self.profiles.items()})

    def differences(self, after: Dump, limit: int = 30) -> list[str]:
        """What changed from ``self`` (expected) to ``after`` (actual), one line per column."""
        out: list[str] = []
        for label, cols, mine, theirs in (("profile", self.profile_columns, self.profiles, after.profiles),
                                          ("session", self.session_columns, self.sessions, after.sessions)):
            for key in sorted(set(mine) | set(theirs)):
                a, b = mine.get(key), theirs.get(key)
                if a == b:
                    continue
                if a is None or b is None:
                    out.append(f"{label} {key}: {'missing' if b is None else 'unexpected'}")
                else:
                    out += [f"{label} {key} column {c}: expected {x!r}, got {y!r}"
                            for c, x, y in zip(cols, a, b, strict=True) if x != y]
        catalog: tuple[tuple[str, Mapping[Any, Any], Mapping[Any, Any]], ...] = (
            ("policy", self.policies, after.policies),
            ("constraint", self.constraints, after.constraints),
            ("RLS flags of", self.rls, after.rls))
        for label, m, t in catalog:
            for name in sorted(set(m) | set(t), key=repr):
                if m.get(name) != t.get(name):
                    out.append(f"{label} {name}: expected {m.get(name)!r}, got {t.get(name)!r}")
        return out[:limit] + ([f"... and {len(out) - limit} more"] if len(out) > limit else [])


def _table_text(conn: Any, table: TableShape) -> tuple[tuple[str, ...], dict[str, tuple[str | None, ...]]]:
    cols = tuple(c.name for c in table.columns)
    query = sql.SQL("SELECT {k}::text, {cols} FROM {t}").format(
        k=sql.Identifier(table.key),
        cols=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols),
        t=sql.Identifier(table.schema, table.name))
    return cols, {r[0]: tuple(r[1:]) for r in conn.execute(query)}


def take_dump(conn: Any, shape: UsersShape, policy_schemas: Sequence[str]) -> Dump:
    """Read the live tables and the catalog (nothing of the infrastructure is used)."""
    # no sessions table: no session columns or rows (and the profiles table stands in below)
    other = shape.sessions or shape.profiles
    schemas = sorted({*policy_schemas, shape.profiles.schema, other.schema})
    pcols, profiles = _table_text(conn, shape.profiles)
    scols, sessions = _table_text(conn, shape.sessions) if shape.sessions is not None else ((), {})
    policies = {
        (r[0], r[1], r[2]): tuple(r[3:]) for r in conn.execute(
            """SELECT n.nspname, c.relname, p.polname, p.polpermissive, p.polcmd,
                      ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r) END
                              FROM unnest(p.polroles) r ORDER BY 1),
                      pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                      pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
                 FROM pg_catalog.pg_policy p
                 JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = ANY (%s)""", (schemas,))
    }
    constraints = {
        (r[0], r[1]): r[2] for r in conn.execute(
            """SELECT k.conrelid::regclass::text, k.conname, pg_catalog.pg_get_constraintdef(k.oid)
                 FROM pg_catalog.pg_constraint k
                WHERE k.conrelid IN (pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text)),
                                     pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text)))""",
            (shape.profiles.schema, shape.profiles.name, other.schema, other.name))
    }
    rls = {
        (r[0], r[1]): (r[2], r[3]) for r in conn.execute(
            """SELECT n.nspname, c.relname, c.relrowsecurity, c.relforcerowsecurity
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY (%s)""", (schemas,))
    }
    return Dump(pcols, profiles, scols, sessions, policies, constraints, rls)
