"""An independent view of the data: what the tables hold, read without the project's SQL.

The SQL validation functions compare with the backup tables they wrote
themselves; a bug shared by backup and validation would hide there. A
:class:`Snapshot` reads the live tables directly (row text output and
``pg_policy``), so comparing two snapshots proves content equality on its own.
"""

from __future__ import annotations

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

    def differences(self, other: "Snapshot", limit: int = 20) -> list[str]:
        """Human-readable differences from ``self`` (before) to ``other`` (after)."""
        out: list[str] = []
        for label, mine, theirs in (("profile", self.profiles, other.profiles),
                                    ("session", self.sessions, other.sessions),
                                    ("policy", self.policies, other.policies)):
            for key in sorted(set(mine) | set(theirs), key=str):
                if mine.get(key) != theirs.get(key):
                    out.append(f"{label} {key}: before={mine.get(key)!r} after={theirs.get(key)!r}")
                    if len(out) >= limit:
                        return out
        return out


def _rows(conn: Any, qualified: str, key: str) -> dict[str, str]:
    schema, table = split_name(qualified)
    query = sql.SQL("SELECT {k}::text, t::text FROM {t} AS t ORDER BY 1").format(
        k=sql.Identifier(key), t=sql.Identifier(schema, table)
    )
    return {k: v for k, v in conn.execute(query)}


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


def take_snapshot(conn: Any, target: Target) -> Snapshot:
    """Read profiles, sessions and every policy in the target's policy schemas."""
    policies = {
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
    return Snapshot(
        profiles=_rows(conn, target.profiles_table, target.key_column),
        sessions=_rows(conn, target.sessions_table, _session_key(conn, target.sessions_table)),
        policies=policies,
    )
