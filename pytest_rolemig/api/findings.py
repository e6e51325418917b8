"""What the gate finds in the catalog and the data: role mentions, merged rows, trigger-written columns,
rank comparisons and role-dependent objects."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_rolemig.api.operations import Conn


@dataclass(frozen=True)
class RoleMention:
    """One place outside the role column that names a legacy-only role."""

    kind: str  # policy, function, view, column default, check constraint, index, trigger, rule, enum type, data
    name: str  # schema-qualified, as SQL spells it (the key of [acknowledged_mentions])
    role: str
    context: str  # the text around the name, or "<n> row(s) hold '<role>'"


def role_mentions(conn: Conn) -> list[RoleMention]:
    """``find_role_mentions()``: every policy, function, view, default, constraint, index,
    trigger, rule, enum and data column that names a legacy-only role."""
    rows = conn.execute("SELECT object_kind, object_name, role_name, context "
                        "FROM migration_validation.find_role_mentions() ORDER BY 1, 2, 3").fetchall()
    return [RoleMention(*r) for r in rows]


@dataclass(frozen=True)
class MergedRow:
    """A role row the migration deleted because the user's other row ends on the same new role."""

    key: str  # the deleted row's key
    user: str | None  # the user it belonged to (the target's user column, from the backup)
    old_role: str
    new_role: str
    message: str  # names the unique index and the row kept


def merged_rows(conn: Conn, backup_id: str, user_column: str) -> list[MergedRow]:
    """Rows whose latest ``migration_log`` entry is 'merged' (deleted as merged duplicates), by key."""
    rows = conn.execute(
        """SELECT l.user_key, b.row_data ->> %s, l.old_role, l.new_role, coalesce(l.message, '')
             FROM migration_tracking.migration_log l
             LEFT JOIN migration_backup.user_profiles_complete_backup b
                    ON b.backup_id = %s AND b.user_key = l.user_key
            WHERE l.status = 'merged'
              AND NOT EXISTS (SELECT 1 FROM migration_tracking.migration_log m
                               WHERE m.user_key = l.user_key AND m.log_id > l.log_id)
            ORDER BY 2, 1""", (user_column, backup_id)).fetchall()
    return [MergedRow(*r) for r in rows]


def trigger_written_columns(conn: Conn) -> dict[str, str]:
    """``trigger_written_columns()``: profile columns a BEFORE UPDATE trigger sets -> the trigger."""
    rows = conn.execute("SELECT column_name, string_agg(trigger_name, ', ' ORDER BY trigger_name) "
                        "FROM migration_validation.trigger_written_columns() GROUP BY 1 ORDER BY 1").fetchall()
    return {column: trigger for column, trigger in rows}


@dataclass(frozen=True)
class RankComparison:
    """A policy or function that orders the enum role column's values (``role >= 'editor'``)."""

    kind: str  # policy | function
    name: str
    role_type: str
    detail: str


def rank_comparisons(conn: Conn) -> tuple[list[str], list[RankComparison]]:
    """The role enum's labels in rank order (empty unless the role column is an enum), and
    ``role_rank_comparisons()``: the policies and functions that compare them by rank."""
    labels = [r[0] for r in conn.execute(
        """SELECT e.enumlabel::text FROM migration_control.target_config c
             JOIN pg_catalog.pg_attribute a
               ON a.attrelid = pg_catalog.to_regclass(
                      pg_catalog.format('%I.%I', c.profiles_schema, c.profiles_table))
              AND a.attname = c.role_column
             JOIN pg_catalog.pg_enum e ON e.enumtypid = a.atttypid
            ORDER BY e.enumsortorder""")]
    found = [RankComparison(*r) for r in conn.execute(
        "SELECT object_kind, object_name, role_type, detail "
        "FROM migration_validation.role_rank_comparisons()")]
    return labels, found


@dataclass(frozen=True)
class RoleDependent:
    """A policy, view or function of the API whose answer depends on the caller's role."""

    kind: str  # policy | view | materialized view | function
    name: str  # as SQL spells it: schema.table.policy, schema.view, schema.function
    relation: str | None  # the table or view as the access matrix names it (schema.name); None: function
    command: str  # a policy's command letter (r, a, w, d, *); r for views; x for functions
    api_roles: tuple[str, ...]  # the database roles a policy applies to ('public': all); () otherwise
    expression: str  # a policy's USING expression; a view's or function's definition
    roles: tuple[str, ...]  # the role names it decides on (legacy or new), directly or in a called function


def role_dependent_objects(conn: Conn) -> list[RoleDependent]:
    """``role_dependent_objects()``: what the API answers differently by role; each should let some role in."""
    rows = conn.execute("SELECT object_kind, object_name, relation, command, api_roles, expression, roles "
                        "FROM migration_validation.role_dependent_objects()").fetchall()
    return [RoleDependent(k, n, rel, c, tuple(a or ()), e or "", tuple(r)) for k, n, rel, c, a, e, r in rows]
