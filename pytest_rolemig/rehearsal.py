"""A full rehearsal of the migration, run one step at a time and remembered.

The gate's tests each look at one step's outcome. Steps run in order the first
time a test needs them (install -> backup -> migrate -> rollback); a step whose
prerequisite failed is reported as blocked by it, with the prerequisite's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.oracle import Snapshot, take_snapshot
from pytest_rolemig.seeding import split_name
from pytest_rolemig.target import Target

STEPS = ("install", "backup", "migrate", "rollback")


class StepBlocked(Exception):
    """A step could not run because an earlier one failed."""


@dataclass
class Rehearsal:
    """State of one rehearsal on one database copy."""

    conn: Any
    target: Target
    mapping: RoleMapping
    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    before: Snapshot | None = None
    after_migration: Snapshot | None = None
    after_rollback: Snapshot | None = None
    roles_at_backup: dict[str, str] = field(default_factory=dict)
    roles_after_migration: dict[str, str] = field(default_factory=dict)

    def run(self, step: str) -> Any:
        """The result of ``step``, running it and every earlier step first if needed."""
        for earlier in STEPS[: STEPS.index(step)]:
            if earlier not in self.results and earlier not in self.errors:
                self._do(earlier)
            if earlier in self.errors:
                raise StepBlocked(f"step '{step}' did not run: step '{earlier}' failed: {self.errors[earlier]}")
        if step not in self.results and step not in self.errors:
            self._do(step)
        if step in self.errors:
            raise self.errors[step]
        return self.results[step]

    def _do(self, step: str) -> None:
        action: Callable[[], Any] = getattr(self, f"_{step}")
        try:
            self.results[step] = action()
        except Exception as exc:  # remembered and re-raised for every test that needs the step
            self.errors[step] = exc

    def _install(self) -> CheckReport:
        return api.initialize(self.conn)

    def _backup(self) -> api.BackupResult:
        self.before = take_snapshot(self.conn, self.target)
        self.roles_at_backup = self.current_roles()
        return api.backup(self.conn, "gate_rehearsal")

    def _migrate(self) -> tuple[CheckReport, api.MigrationResult]:
        pre = api.pre_migration_checks(self.conn)
        result = api.migrate(self.conn, backup_id=self.results["backup"].backup_id,
                             batch_size=self.target.batch_size)
        self.after_migration = take_snapshot(self.conn, self.target)
        self.roles_after_migration = self.current_roles()
        return pre, result

    def _rollback(self) -> api.RollbackResult:
        result = api.rollback(self.conn, self.results["backup"].backup_id, "gate rehearsal")
        self.after_rollback = take_snapshot(self.conn, self.target)
        return result

    def current_roles(self) -> dict[str, str]:
        """Each user's role now, read straight from the profiles table."""
        schema, table = split_name(self.target.profiles_table)
        query = sql.SQL("SELECT {k}::text, {r}::text FROM {t}").format(
            k=sql.Identifier(self.target.key_column), r=sql.Identifier(self.target.role_column),
            t=sql.Identifier(schema, table))
        return dict(self.conn.execute(query).fetchall())
