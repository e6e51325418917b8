"""Shapes of the tables the round trip fills, read from the catalog, and the user sets generated for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding import split_name
from pytest_rolemig.target import Target

Row = dict[str, "str | None"]

# ------------------------------------------------------------------ shapes ---


@dataclass(frozen=True)
class ColumnShape:
    """One column as the generator needs it (read from ``pg_attribute``)."""

    name: str
    type_name: str  # format_type(), e.g. "character varying(255)"
    base: str  # type name without modifiers; "enum" for enum types
    nullable: bool
    has_default: bool
    skip: bool = False  # generated or identity column: PostgreSQL fills it
    references: bool = False  # a foreign key points elsewhere: only NULL can be invented
    unique: bool = False  # a single-column unique index
    max_length: int | None = None
    labels: tuple[str, ...] = ()  # enum labels


@dataclass(frozen=True)
class TableShape:
    """A table's writable columns and its key column."""

    schema: str
    name: str
    key: str
    columns: tuple[ColumnShape, ...]

    def column(self, name: str) -> ColumnShape:
        """The column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.schema}.{self.name} has no column {name}")

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class UsersShape:
    """Where users live: profiles (key + role column), sessions (user column), parent of the key."""

    profiles: TableShape
    role_column: str
    sessions: TableShape | None  # None: the application has no sessions table (users have none)
    session_user_column: str
    parent: TableShape | None = None  # e.g. auth.users, referenced by the profiles key (or user column)
    # a roles table (one row per user and role): the column naming the user; None: the key
    user_column: str | None = None


@dataclass(frozen=True)
class Edges:
    """Which edge values to generate; all on by default. Turn one off only for a known, reported bug."""

    json_null: bool = True  # a jsonb/json column holding the JSON scalar null (not SQL NULL)
    json_text: bool = True  # json (not jsonb) text with spacing and duplicate keys, which json keeps


# ------------------------------------------------------------- generated ---


@dataclass(frozen=True)
class GeneratedUser:
    """One user: the profile row, session rows, and what the application changes after the backup.

    ``profile_edit`` / ``session_edits`` are later values of non-key, non-role
    columns (None: untouched), written after the backup to tell a rollback that
    restores the backup from one that merely leaves things alone.
    """

    profile: Row
    sessions: tuple[Row, ...] = ()
    profile_edit: Row | None = None
    session_edits: tuple[Row | None, ...] = ()
    parent: Row = field(default_factory=dict)  # required columns of the key's parent table, if any

    def __repr__(self) -> str:
        parts = [f"profile={self.profile!r}"]
        if self.sessions:
            parts.append(f"sessions={list(self.sessions)!r}")
        if self.profile_edit is not None:
            parts.append(f"profile_edit={self.profile_edit!r}")
        if any(e is not None for e in self.session_edits):
            parts.append(f"session_edits={list(self.session_edits)!r}")
        return f"GeneratedUser({', '.join(parts)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this."""
        printer.text(repr(self))


@dataclass(frozen=True)
class UserSet:
    """A generated set of users (keys unique), as one example of a property."""

    users: tuple[GeneratedUser, ...]
    shape: UsersShape = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {u!r}," for u in self.users)
        return f"UserSet(users=[{inner}\n])" if self.users else "UserSet(users=[])"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints falsifying examples with this: the users, not the table shapes."""
        printer.text(repr(self))

    def key(self, user: GeneratedUser) -> str:
        """The user's key, as text."""
        value = user.profile[self.shape.profiles.key]
        assert value is not None
        return value

    def user_id(self, user: GeneratedUser) -> str:
        """The user's id (the user column; the key unless the profiles table is a roles table), as text."""
        value = user.profile[self.shape.user_column or self.shape.profiles.key]
        assert value is not None
        return value

    def role(self, user: GeneratedUser) -> str:
        """The user's legacy role."""
        value = user.profile[self.shape.role_column]
        assert value is not None
        return value

    @property
    def session_count(self) -> int:
        """Sessions of every user together."""
        return sum(len(u.sessions) for u in self.users)



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
