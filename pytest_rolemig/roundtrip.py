"""The round trip backup -> migrate -> rollback as a property, reusable on any target schema.

One :class:`RoundTrip` runs one example inside one transaction that is always
rolled back: load a generated user set, dump the tables, back up, let the
application change some rows, migrate, roll back, dump again, compare. The
infrastructure's functions run inside the caller's transaction, so an example
costs no database copy, and the next example starts from the same empty tables.

The comparison uses a :class:`Dump` read here, column by column as text
(``col::text``), with the policies and constraints from the catalog; it shares
no code with the backup (``to_jsonb``) or the validation functions, so a bug
they share cannot hide. The project's own ``validate_rollback_success`` is
checked as well. :func:`run_property` runs the property with Hypothesis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.assertions import RolemigAssertionError
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.seeding import split_name
from pytest_rolemig.strategies import (
    ColumnShape,
    Edges,
    GeneratedUser,
    TableShape,
    UserSet,
    UsersShape,
    user_sets,
)
from pytest_rolemig.target import Target

MODES = ("revert", "emergency")

#: Edge values the infrastructure is known to lose, each with the reason (reported, and shown failing
#: by a strict xfail test in tests/test_roundtrip_property.py). The round trip leaves them out until
#: they are fixed: delete an entry here and the property covers it again. None at present (the JSON
#: null and json text of emergency rollback were fixed by the backup's ``json_text``).
KNOWN_BUGS: dict[str, str] = {}
DEFAULT_EDGES = Edges(**{name: False for name in KNOWN_BUGS})

# ------------------------------------------------------------------ shape ---

_COLUMNS = """
SELECT a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE t.typtype WHEN 'e' THEN 'enum'
                      WHEN 'd' THEN pg_catalog.format_type(t.typbasetype, NULL)
                      ELSE pg_catalog.format_type(a.atttypid, NULL) END,
       NOT a.attnotnull,
       a.atthasdef,
       a.attidentity <> '' OR a.attgenerated <> '',
       EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                WHERE k.conrelid = a.attrelid AND k.contype = 'f' AND a.attnum = ANY (k.conkey)),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indnatts = 1
                  AND i.indkey[0] = a.attnum AND i.indpred IS NULL),
       CASE WHEN a.atttypmod > 4 AND t.typcategory = 'S' THEN a.atttypmod - 4 END,
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
              WHERE e.enumtypid = a.atttypid ORDER BY e.enumsortorder)
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""

_PRIMARY_KEY = """
SELECT a.attname FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indisprimary AND i.indnatts = 1
   AND i.indrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
"""

_PARENT = """
SELECT fn.nspname, fc.relname, fa.attname
  FROM pg_catalog.pg_constraint k
  JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1]
  JOIN pg_catalog.pg_class fc ON fc.oid = k.confrelid
  JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
  JOIN pg_catalog.pg_attribute fa ON fa.attrelid = k.confrelid AND fa.attnum = k.confkey[1]
 WHERE k.contype = 'f' AND cardinality(k.conkey) = 1 AND a.attname = %s
   AND k.conrelid = pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %s::text, %s::text))
 LIMIT 1
"""


def read_table_shape(conn: Any, qualified: str, key: str | None = None) -> TableShape:
    """The columns of ``schema.table`` from the catalog; ``key`` defaults to the primary key."""
    schema, name = split_name(qualified)
    rows = conn.execute(_COLUMNS, (schema, name)).fetchall()
    if not rows:
        raise ConfigError(f"table {schema}.{name} does not exist")
    if key is None:
        found = conn.execute(_PRIMARY_KEY, (schema, name)).fetchone()
        if found is None:
            raise ConfigError(f"table {schema}.{name} has no single-column primary key")
        key = found[0]
    columns = tuple(
        ColumnShape(name=r[0], type_name=r[1], base=r[2], nullable=r[3], has_default=r[4], skip=r[5],
                    references=r[6], unique=r[7], max_length=r[8], labels=tuple(r[9]))
        for r in rows
    )
    return TableShape(schema=schema, name=name, key=key, columns=columns)


def read_shape(conn: Any, target: Target) -> UsersShape:
    """Profiles, sessions and (if the profiles key references one) the parent table of ``target``."""
    profiles = read_table_shape(conn, target.profiles_table, target.key_column)
    sessions = read_table_shape(conn, target.sessions_table) if target.sessions_table is not None else None
    parent = None
    schema, name = split_name(target.profiles_table)
    ref = conn.execute(_PARENT, (target.user, schema, name)).fetchone()
    if ref is not None:
        parent = read_table_shape(conn, f"{ref[0]}.{ref[1]}", ref[2])
    return UsersShape(profiles=profiles, role_column=target.role_column, sessions=sessions,
                      session_user_column=target.sessions_user_column, parent=parent,
                      user_column=target.user_column if target.user != target.key_column else None)


def empty_users(conn: Any, shape: UsersShape) -> None:
    """Remove every user (and what references them) so examples start from empty tables.

    Meant for a scratch copy of the template: ``TRUNCATE ... CASCADE`` also
    empties tables that reference the users.
    """
    tables = ([shape.sessions] if shape.sessions else []) + [shape.profiles] + ([shape.parent] if shape.parent else [])
    conn.execute(sql.SQL("TRUNCATE {} CASCADE").format(
        sql.SQL(", ").join(sql.Identifier(t.schema, t.name) for t in tables)))


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


# --------------------------------------------------------------- property ---


class RoundTripError(RolemigAssertionError):
    """The round trip did not give the data back; the message lists the differences and the users."""


def describe_users(users: UserSet, limit: int = 20) -> str:
    """The user set as the failure report shows it: one user per line."""
    lines = [repr(u) for u in users.users[:limit]]
    if len(users) > limit:
        lines.append(f"... and {len(users) - limit} more")
    return "\n".join(lines) or "(no users)"


@dataclass
class Outcome:
    """What one example did (counts only; the data was rolled back)."""

    users: int
    sessions: int
    edits: int
    backup_id: str
    rollback_id: str
    mode: str
    digest: str


class RoundTrip:
    """Runs the round trip on one connection, one example per transaction, always rolled back.

    ``strict`` (the default) lets a row the database refuses fail the example;
    without it such an example is rejected (for schemas with constraints the
    generator does not know). ``setup_sql`` runs at the start of every example,
    inside its transaction (e.g. to install a deliberately broken function).
    """

    def __init__(self, conn: Any, shape: UsersShape, mapping: RoleMapping, target: Target, *,
                 batch_size: int | None = 3, strict: bool = True, setup_sql: str | None = None,
                 project_validation: bool = True) -> None:
        if not conn.autocommit:
            raise ConfigError("the round trip needs an autocommit connection (it opens its own transactions)")
        self.conn, self.shape, self.mapping, self.target = conn, shape, mapping, target
        self.batch_size, self.strict, self.setup_sql = batch_size, strict, setup_sql
        self.project_validation = project_validation
        self.examples = 0
        self.trigger_columns: dict[str, str] = {}  # set per example, after its setup

    @property
    def roles(self) -> list[str]:
        """Legacy roles users are drawn from (the mapping's, in its order)."""
        return list(self.mapping.mapping)

    def strategy(self, **kwargs: Any) -> st.SearchStrategy[UserSet]:
        """:func:`~pytest_rolemig.strategies.user_sets` for this target's tables and roles.

        Edge values listed in :data:`KNOWN_BUGS` are left out unless ``edges`` says otherwise.
        """
        kwargs.setdefault("edges", DEFAULT_EDGES)
        return user_sets(self.shape, self.roles, **kwargs)

    def dump(self) -> Dump:
        """The independent dump of the target tables and policies, now.

        Without the profile columns a BEFORE UPDATE trigger of the application sets (an
        ``updated_at``): the migration and the rollback write the row, so they change.
        """
        return take_dump(self.conn, self.shape, self.target.policy_schemas).without(self.trigger_columns)

    @contextmanager
    def example(self) -> Iterator[Any]:
        """A transaction that is always rolled back: the state every example starts from."""
        with self.conn.transaction(force_rollback=True):
            if self.setup_sql:
                self.conn.execute(self.setup_sql)
            yield self.conn

    def load(self, users: UserSet) -> None:
        """Load ``users`` in a savepoint; outside ``strict``, a refused row rejects the example."""
        try:
            with self.conn.transaction():
                load(self.conn, users)
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            if self.strict:
                raise
            reject()

    def fail(self, title: str, users: UserSet, mode: str, diffs: Sequence[str], **more: str) -> RoundTripError:
        """The error raised when the round trip breaks its promise."""
        return RoundTripError(
            title,
            expected=("backup -> migrate -> rollback gives every profile row, policy and constraint back "
                      + ("exactly as backed up (emergency rollback restores every profile column)"
                         if mode == "emergency" else "as before the migration (revert undoes only the migration)")
                      + "; session rows stay as the application left them"),
            sections={"Differences (from the independent dump)": "\n".join(diffs) or "(none)", **more,
                      f"Users ({len(users)}, {users.session_count} sessions)": describe_users(users)},
        )

    def check(self, users: UserSet, mode: str = "revert") -> Outcome:
        """One example: load, back up, edit, migrate, roll back (``mode``), compare; rolled back after."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self.example():
            self.load(users)
            self.trigger_columns = api.trigger_written_columns(self.conn)
            loaded = self.dump()
            if len(loaded.profiles) != len(users) or len(loaded.sessions) != users.session_count:
                raise self.fail("the generated users did not load as generated", users, mode,
                                [f"{len(loaded.profiles)} profiles, {len(loaded.sessions)} sessions loaded"])
            backup = api.backup(self.conn, "roundtrip")
            edits = apply_edits(self.conn, users)
            before = self.dump() if edits else loaded
            migration = api.migrate(self.conn, backup_id=backup.backup_id, batch_size=self.batch_size)
            migrated = self.dump()
            self._check_migrated(users, mode, before, migrated, migration)
            rollback = api.rollback(self.conn, backup.backup_id, "roundtrip property",
                                    emergency=(mode == "emergency"))
            after = self.dump()
            # emergency: every profile column as backed up; revert: only the migration undone.
            # Either way sessions stay as the application left them (no rollback writes sessions).
            expected = replace(loaded, sessions=before.sessions) if mode == "emergency" else before
            diffs = expected.differences(after)
            if diffs:
                raise self.fail(f"{mode} rollback did not restore the data ({len(diffs)} difference(s))",
                                users, mode, diffs)
            if self.project_validation:
                report = api.validate_rollback(self.conn, backup.backup_id, rollback.rollback_id)
                if report.failures:
                    raise self.fail("validate_rollback_success disagrees with the independent dump",
                                    users, mode, [], **{"Checks": report.render(only_problems=True)})
            self.examples += 1
            return Outcome(len(users), users.session_count, edits, backup.backup_id, rollback.rollback_id,
                           mode, after.digest())

    def _check_migrated(self, users: UserSet, mode: str, before: Dump, migrated: Dump,
                        migration: api.MigrationResult) -> None:
        """After the migration: every user on mapping[role], every other column and session untouched."""
        problems = []
        if migration.status != "completed":
            problems.append(f"migration status {migration.status!r}: {migration.error}")
        role = self.shape.role_column
        want = {users.key(u): self.mapping.mapping[users.role(u)] for u in users.users}
        got = migrated.roles(role)
        for key in sorted(set(want) | set(got)):
            if got.get(key) != want.get(key):
                problems.append(f"user {key}: role {got.get(key)!r}, mapping says {want.get(key)!r}")
        for key, row in before.profiles.items():
            other = migrated.profiles.get(key)
            changed = [f"{c} ({x!r} -> {y!r})" for c, x, y in zip(before.profile_columns, row, other or row,
                                                                 strict=True) if x != y and c != role]
            if changed:
                problems.append(f"user {key}: the migration changed {', '.join(changed)}, not only {role}")
        if before.sessions != migrated.sessions:
            problems.append("the migration changed session rows")
        if problems:
            raise self.fail("the migration did not do what the mapping says", users, mode, problems[:30])


@contextmanager
def scratch_roundtrip(server: Any, template: str, target: Target, mapping: RoleMapping,
                      prefix: str = "rolemig_roundtrip", **options: Any) -> Iterator[RoundTrip]:
    """A :class:`RoundTrip` on a fresh copy of ``template`` with its users removed; dropped after."""
    from pytest_rolemig.databases import clone

    with clone(server, template, prefix) as conn:
        shape = read_shape(conn, target)
        empty_users(conn, shape)
        yield RoundTrip(conn, shape, mapping, target, **options)


def property_settings(max_examples: int, **overrides: Any) -> settings:
    """Settings for database examples: no deadline, slow data generation allowed, no explain phase.

    The explain phase re-runs the failing example many times to comment on it; with a
    database round trip per run it costs more than the shrinking, and the report prints
    the minimal user set without it.
    """
    overrides.setdefault("phases", [p for p in Phase if p is not Phase.explain])
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example],
                    **overrides)


def run_property(roundtrip: RoundTrip, *, max_examples: int = 25, modes: Sequence[str] = MODES,
                 users: st.SearchStrategy[UserSet] | None = None, **settings_overrides: Any) -> None:
    """Run the round trip property with Hypothesis; a failure shrinks to a minimal user set."""
    strategy = users if users is not None else roundtrip.strategy()

    @property_settings(max_examples, **settings_overrides)
    @given(users=strategy, mode=st.sampled_from(list(modes)))
    def roundtrip_property(users: UserSet, mode: str) -> None:
        roundtrip.check(users, mode)

    roundtrip_property()


__all__ = ["DEFAULT_EDGES", "Dump", "KNOWN_BUGS", "MODES", "Outcome", "RoundTrip", "RoundTripError", "apply_edits",
           "describe_users", "empty_users", "load", "property_settings", "read_shape", "read_table_shape",
           "run_property", "scratch_roundtrip", "take_dump", "update_row", "GeneratedUser"]
