"""A full rehearsal of the migration, run one step at a time and remembered.

The gate's tests each look at one step's outcome. Steps run in order the first
time a test needs them (install -> backup -> migrate -> rollback); a step whose
prerequisite failed is reported as blocked by it, with the prerequisite's reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.roundtrip.oracle import StoredSnapshot
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
    before: StoredSnapshot | None = None
    after_migration: StoredSnapshot | None = None
    after_rollback: StoredSnapshot | None = None
    trigger_columns: dict[str, str] = field(default_factory=dict)  # profile column -> the trigger setting it
    mentions_before: list[api.RoleMention] = field(default_factory=list)
    mentions_after_migration: list[api.RoleMention] = field(default_factory=list)
    # the role enum's labels in order, and what compares them by rank, before the migration
    rank_comparisons_before: tuple[list[str], list[api.RankComparison]] = ([], [])
    merged_after_migration: list[api.MergedRow] = field(default_factory=list)

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
        self.trigger_columns = api.trigger_written_columns(self.conn)
        self.before = StoredSnapshot.take(self.conn, self.target, "before", self.trigger_columns)
        self.mentions_before = api.role_mentions(self.conn)
        self.rank_comparisons_before = api.rank_comparisons(self.conn)
        return api.backup(self.conn, "gate_rehearsal")

    def _migrate(self) -> tuple[CheckReport, api.MigrationResult]:
        pre = api.pre_migration_checks(self.conn)
        result = api.migrate(self.conn, backup_id=self.results["backup"].backup_id,
                             batch_size=self.target.batch_size)
        self.after_migration = StoredSnapshot.take(self.conn, self.target, "after_migration", self.trigger_columns)
        self.mentions_after_migration = api.role_mentions(self.conn)
        # role rows merged away, read now: a rollback later restores them and logs it
        self.merged_after_migration = api.merged_rows(self.conn, self.results["backup"].backup_id,
                                                      self.target.user)
        return pre, result

    def _rollback(self) -> api.RollbackResult:
        result = api.rollback(self.conn, self.results["backup"].backup_id, "gate rehearsal")
        self.after_rollback = StoredSnapshot.take(self.conn, self.target, "after_rollback", self.trigger_columns)
        return result
