"""The access rehearsal: one database copy taken through the migration, its matrix measured at each step.

The access gate (``rolemig-gate/test_access_matrix.py``) compares the steps' matrices.
Computing them is most of the gate's work and needs nothing from the other gate tests
(its own copy of the template, its own connections), so :meth:`AccessRehearsal.start`
computes every step in a background thread (:mod:`pytest_rolemig.background`) while the
other tests run; the first test that asks for a matrix waits for it. An error of a step is
remembered and raised where that step's matrix is asked for, as when computed on demand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.access.data import SeededTables, seed_access_rows
from pytest_rolemig.access.matrix import Actor, Matrix, choose_actors, compute_matrix, row_lookup
from pytest_rolemig.access.report import Comparison, compare, measured_changes, write_reports
from pytest_rolemig.access.store import ReachStore
from pytest_rolemig.background import Background
from pytest_rolemig.mapping import render_access_changes, write_access_changes
from pytest_rolemig.postgrest import auth_settings, token_fields
from pytest_rolemig.rehearsal import StepBlocked
from pytest_rolemig.target import split_qualified

STEPS = ("before", "mid_migration", "mid_online_migration", "after_migration", "after_rollback")
ROLE_STEPS = ("before", "after_migration")  # where role-dependent objects are checked for letting a role in


@dataclass
class AccessRehearsal:
    """Matrices of one database copy through the migration, computed step by step and remembered."""

    conn: Any
    config: Any
    mapping: Any
    store: ReachStore
    actors: list[Actor] = field(default_factory=list)
    seeded: SeededTables | None = None
    backup_id: str | None = None
    third: int = 1
    migrated_mid: int = 0
    matrices: dict[str, Matrix] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)
    update_access: bool = False  # --rolemig-update-access: write what was measured into the mapping
    written: str | None = None  # the [access_changes] block written, once
    # per step: role rows the migration merged away (gone for everybody), read right after it
    vanished: dict[str, frozenset[tuple[str, str]]] = field(default_factory=dict)
    # per step of ROLE_STEPS: the policies, views and functions that decide on a role
    dependents: dict[str, list[api.RoleDependent]] = field(default_factory=dict)
    worker: Background[None] | None = None  # computing every step, from start() until waited for

    def start(self) -> None:
        """Compute every step's matrix in a background thread (the connections are its until then)."""
        if self.worker is None and not self.matrices and not self.errors:
            self.worker = Background("rolemig-access-matrix", self._compute_all)

    def _compute_all(self) -> None:
        for step in STEPS:
            try:
                self._compute(step)
            except Exception:  # remembered in errors (or a blocked step): raised where asked for
                return

    def wait(self) -> None:
        """Wait for the background computation, if one was started; the connections are ours again."""
        if self.worker is not None:
            self.worker.result()
            self.worker = None

    def stop(self) -> None:
        """Cancel the background computation (the run is ending) and wait for it."""
        if self.worker is not None and self.worker.running:
            self.conn.cancel()
        self.wait()

    def matrix(self, step: str) -> Matrix:
        """The matrix at ``step``, running every earlier step first."""
        self.wait()
        return self._compute(step)

    def _compute(self, step: str) -> Matrix:
        for name in STEPS[: STEPS.index(step) + 1]:
            if name not in self.matrices and name not in self.errors:
                action: Callable[[], None] = getattr(self, f"_{name}")
                try:
                    action()
                    self.vanished[name] = self._merged_away()
                    if name in ROLE_STEPS:
                        self.dependents[name] = api.role_dependent_objects(self.conn)
                    # a policy some role reached before need not be evaluated again after the migration
                    reached = {p for m in self.matrices.values() for p, roles in m.policy_reach.items() if roles}
                    policies = [d for d in self.dependents.get(name, ())
                                if d.kind == "policy" and d.name not in reached]
                    self.matrices[name] = compute_matrix(self.conn, self.config.target, self.actors, name,
                                                         self.store, policies=policies)
                except Exception as exc:  # remembered: every later step is blocked by it
                    self.errors[name] = exc
            if name in self.errors:
                if name == step:
                    raise self.errors[name]
                raise StepBlocked(f"step '{step}' did not run: step '{name}' failed: {self.errors[name]}")
        return self.matrices[step]

    def _merged_away(self) -> frozenset[tuple[str, str]]:
        """(table, key) of the role rows the migration deleted as merged duplicates, now."""
        if self.backup_id is None:
            return frozenset()
        table = ".".join(split_qualified(self.config.target.profiles_table))
        return frozenset((table, m.key) for m in api.merged_rows(self.conn, self.backup_id,
                                                                 self.config.target.user))

    def _before(self) -> None:
        self.actors = choose_actors(self.conn, self.config.target, per_role=2)
        self.seeded = seed_access_rows(self.conn, self.config.target, [a.key for a in self.actors if a.key])
        self.conn.execute("ANALYZE")

    def _mid_migration(self) -> None:
        # Each path that commits between batches exposes a half-migrated state to the
        # application. First `rolemig migrate`'s: one committed execute_role_migration call
        # per batch; stopped after a third of the users.
        backup = api.backup(self.conn, "access_matrix")
        self.backup_id, users = backup.backup_id, backup.profiles_count
        self.third = max(1, math.ceil(users / 3))
        result = api.migrate(self.conn, backup_id=self.backup_id, batch_size=self.third, max_batches=1)
        self.migrated_mid = result.users_migrated + result.users_unchanged

    def _mid_online_migration(self) -> None:
        # Then the online procedure's (expand phase, one COMMIT per batch): the next third.
        result = self._online(phase="expand", batch_size=self.third, max_batches=1)
        self.migrated_mid += int(result["users_migrated"]) + int(result["users_unchanged"])

    def _after_migration(self) -> None:
        # The one-call function finishes: the rest of the users, then policies and constraints.
        api.migrate(self.conn, backup_id=self.backup_id, batch_size=self.config.target.batch_size)

    def _online(self, phase: str, batch_size: int | None = None, max_batches: int | None = None) -> Any:
        return api.run_online_migration(self.conn, p_backup_id=self.backup_id, p_batch_size=batch_size,
                                        p_phase=phase, p_max_batches=max_batches)

    def _after_rollback(self) -> None:
        assert self.backup_id is not None
        api.rollback(self.conn, self.backup_id, "access matrix gate")

    def unreachable(self) -> list[tuple[api.RoleDependent, str]]:
        """Role-dependent objects that let no role in, before the migration nor after it, with why.

        A policy whose USING is false on every row for every user it applies to, a view no user
        sees a row of although it has rows, a function that returns nothing, false or null to
        every user. Objects of a step that did not run are judged on the steps that did.
        """
        states = {}
        for step in ROLE_STEPS:
            try:
                states[step] = self.matrix(step)
            except Exception:
                if step == "before":
                    raise
        reach: dict[str, set[str]] = {}
        seen: dict[str, int] = {}  # view -> rows some user sees (a count: no keys read)
        answers: dict[str, set[str]] = {}  # function -> what it returned to some user
        for matrix in states.values():
            for name, roles in matrix.policy_reach.items():
                reach.setdefault(name, set()).update(roles)
            for cell, set_id in matrix.cells.items():
                if cell[3] == "SELECT":
                    seen[cell[2]] = seen.get(cell[2], 0) + matrix.store.size(set_id)
                elif cell[3] == "EXECUTE":
                    answers.setdefault(cell[2], set()).update(matrix.store.keys(set_id))
        found: dict[str, tuple[api.RoleDependent, str]] = {}
        for obj in (d for step in states for d in self.dependents.get(step, ())):
            if obj.name in found:
                continue
            if obj.kind == "policy" and obj.name in reach and not reach[obj.name] and self._rows(obj.relation):
                found[obj.name] = (obj, f"USING is false on every row for every user it applies to "
                                        f"({', '.join(obj.api_roles)})")
            elif obj.kind.endswith("view") and obj.relation in seen and not seen[obj.relation] \
                    and self._rows(obj.relation):
                found[obj.name] = (obj, "no user sees any of its rows")
            elif obj.kind == "function" and f"{obj.name}()" in answers \
                    and answers[f"{obj.name}()"] <= {"false", "null"}:
                found[obj.name] = (obj, "returns nothing, false or null to every user")
        return sorted(found.values(), key=lambda f: f[0].name)

    def _rows(self, relation: str | None) -> bool:
        """Whether the table or view holds any row (read as the connecting owner, past RLS)."""
        schema, _, name = (relation or "").rpartition(".")
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(schema, name))
        return bool(self.conn.execute(query).fetchone()[0])

    def example_claims(self) -> str:
        """The claims the probe sent for one acting user, as JSON."""
        self.wait()
        actor = next((a for a in self.actors if a.key is not None), None)
        if actor is None:
            return "(no acting user)"
        auth = auth_settings(self.conn)
        claims = auth.claims(actor.key, self.matrix("before").claims.get(actor.key or ""),
                             token_fields(self.conn, actor.key or ""))
        return f"user {actor.key} ({actor.role}), as {auth.auth_role}: {json.dumps(claims, sort_keys=True)}"

    def measured(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """The access changes the finished migration makes, as ``[access_changes]`` entries."""
        return measured_changes(compare(self.matrix("before"), self.matrix("after_migration"), "measured"))

    def declared_changes(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """The mapping's ``[access_changes]``; in update mode, first replaced by what was measured."""
        if self.update_access and self.written is None:
            self.mapping = write_access_changes(self.mapping.source, self.measured())
            self.written = render_access_changes(self.mapping.access_changes, self.mapping.legacy_roles)
        return dict(self.mapping.access_changes)

    def compare(self, step: str, title: str, declared: bool) -> Comparison:
        """Compare ``step`` with the state before the migration; write the reports."""
        before, after = self.matrix("before"), self.matrix(step)
        result = compare(before, after, title, self.declared_changes() if declared else None,
                         row_lookup(self.conn), self.vanished.get(step, frozenset()))
        self.comparisons[step] = result
        write_reports(self.config.report_dir, [self.comparisons[s] for s in STEPS if s in self.comparisons],
                      [self.matrices[s] for s in STEPS if s in self.matrices])
        return result
