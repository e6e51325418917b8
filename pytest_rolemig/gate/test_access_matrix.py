"""The access gate: what users can actually do, before, during and after the migration, and after rollback.

Policy text can be clean while a helper function or a JWT claim still decides on
a legacy role. These tests act as real application users through RLS (see
:mod:`pytest_rolemig.access.matrix`) on their own copy of the template, and
compare the rows each user reaches per table and command. Reports:
``<report_dir>/access-matrix.md`` and ``.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.access.data import SeededTables, seed_access_rows
from pytest_rolemig.access.matrix import (
    ANON,
    Actor,
    Matrix,
    choose_actors,
    compute_matrix,
    row_lookup,
)
from pytest_rolemig.access.report import UPDATED_ACCESS, Comparison, compare, measured_changes, write_reports
from pytest_rolemig.access.store import ReachStore
from pytest_rolemig.assertions import RolemigAssertionError
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

    def matrix(self, step: str) -> Matrix:
        """The matrix at ``step``, running every earlier step first."""
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
        answers: dict[str, set[str]] = {}
        for matrix in states.values():
            for name, roles in matrix.policy_reach.items():
                reach.setdefault(name, set()).update(roles)
            for cell, set_id in matrix.cells.items():
                if cell[3] in ("SELECT", "EXECUTE"):
                    answers.setdefault(cell[2], set()).update(matrix.store.keys(set_id))
        found: dict[str, tuple[api.RoleDependent, str]] = {}
        for obj in (d for step in states for d in self.dependents.get(step, ())):
            if obj.name in found:
                continue
            if obj.kind == "policy" and obj.name in reach and not reach[obj.name] and self._rows(obj.relation):
                found[obj.name] = (obj, f"USING is false on every row for every user it applies to "
                                        f"({', '.join(obj.api_roles)})")
            elif obj.kind.endswith("view") and obj.relation in answers and not answers[obj.relation] \
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


@pytest.fixture(scope="module")
def access_rehearsal(rolemig_server: Any, rolemig_template: Any, rolemig_config: Any,
                     rolemig_mapping: Any, request: pytest.FixtureRequest) -> Any:
    """Its own copy of the template: the matrix needs before, during, after and rollback states."""
    from pytest_rolemig.db.templates import clone

    with clone(rolemig_server, rolemig_template.name, "rolemig_matrix") as conn, ReachStore.beside(conn) as store:
        rehearsal = AccessRehearsal(conn=conn, config=rolemig_config, mapping=rolemig_mapping, store=store,
                                    update_access=getattr(rolemig_config, "update_access", False))
        yield rehearsal
        if rehearsal.written is not None:
            request.config.stash[UPDATED_ACCESS] = (rehearsal.mapping.source, rehearsal.written)


def _fail(result: Comparison, rehearsal: AccessRehearsal, extra: dict[str, str] | None = None) -> None:
    if result.ok:
        return
    lost = sum(1 for d in result.unexpected if d.lost)
    raise RolemigAssertionError(
        f"{result.title}: {len(result.unexpected)} undeclared access change(s) "
        f"({lost} with rows lost) for role(s) {', '.join(sorted({d.role for d in result.unexpected}))}",
        expected=result.expected,
        sections={
            "Differences (role, acting user, table, command, rows gained / lost, example)": result.text(),
            **(extra or {}),
            "Report": str(rehearsal.config.report_dir / "access-matrix.md"),
            "Fix": "make the migration keep this access (helper functions, views and JWT claims that name "
                   f"legacy roles), or declare it in [access_changes] of {rehearsal.mapping.source}: run "
                   "the gate once with --rolemig-update-access, or paste",
            "[access_changes] as measured": _measured_block(rehearsal),
        },
    )


def _measured_block(rehearsal: AccessRehearsal) -> str:
    """What the finished migration changes, ready to paste (or why it could not be measured)."""
    try:
        return render_access_changes(rehearsal.measured(), rehearsal.mapping.legacy_roles).rstrip()
    except Exception as exc:  # the migration itself did not finish: nothing to declare yet
        return f"(not measured: {exc})"


def test_access_matrix_acts_as_every_role_through_rls(access_rehearsal: AccessRehearsal) -> None:
    """The matrix acts for every role in the data, through RLS, and sees rows to compare."""
    before = access_rehearsal.matrix("before")
    assert before.tables, (f"no RLS-protected table in the policy schemas "
                           f"{', '.join(access_rehearsal.config.target.policy_schemas)}: nothing to measure")
    acting = sorted({a.role for a in access_rehearsal.actors} - {ANON})
    assert acting, "no user with a role in the profiles table: nobody to act as"
    seen = {t: {before.reached(cell) for cell in before.cells if cell[2:] == (t, "SELECT")}
            for t in before.tables}
    assert any(max(s) > 0 for s in seen.values()), "no user reaches any row of any table: the matrix proves nothing"
    assert any(len(s) > 1 for s in seen.values()), (
        "every user sees the same number of rows in every table: RLS does not discriminate "
        f"(superuser or BYPASSRLS API role?): {seen}")


def test_access_unchanged_mid_migration(access_rehearsal: AccessRehearsal) -> None:
    """Between two committed batches of `rolemig migrate`, nobody's access changed but as declared."""
    result = access_rehearsal.compare("mid_migration", "a third of the users migrated", declared=True)
    _fail(result, access_rehearsal,
          {"State": f"{access_rehearsal.migrated_mid} user(s) migrated by one committed batch as "
                    "`rolemig migrate` runs it (policies accept legacy and new names); acting users "
                    "hold the role a fresh token would carry"})


def test_access_unchanged_mid_online_migration(access_rehearsal: AccessRehearsal) -> None:
    """Between two committed batches of the online procedure, nobody's access changed but as declared."""
    result = access_rehearsal.compare("mid_online_migration", "two thirds of the users migrated",
                                      declared=True)
    _fail(result, access_rehearsal,
          {"State": f"{access_rehearsal.migrated_mid} user(s) migrated, the last third by one committed "
                    "batch of run_online_migration (expand phase)"})


def test_access_after_migration_is_as_declared(access_rehearsal: AccessRehearsal) -> None:
    """After the migration each user reaches what their legacy role reached, unless declared."""
    _fail(access_rehearsal.compare("after_migration", "after the migration", declared=True), access_rehearsal)


def test_access_restored_exactly_after_rollback(access_rehearsal: AccessRehearsal) -> None:
    """After rollback every user reaches exactly the rows they reached before the migration."""
    _fail(access_rehearsal.compare("after_rollback", "after rollback", declared=False), access_rehearsal)


def test_every_role_dependent_object_lets_some_role_in(access_rehearsal: AccessRehearsal) -> None:
    """Each policy, view and function that decides on a role lets some role in.

    One that is false for every user, before and after the migration, proves nothing about the
    migration: most often the probe's claims are not the ones the application's tokens carry.
    """
    dead = access_rehearsal.unreachable()
    if not dead:
        return
    raise RolemigAssertionError(
        f"{len(dead)} role-dependent object(s) let no role in, before the migration nor after it: "
        + ", ".join(f"{obj.kind} {obj.name}" for obj, _ in dead),
        sections={
            "Objects (kind, name, roles it decides on: why)": "\n".join(
                f"{obj.kind} {obj.name} ({', '.join(obj.roles)}): {why}" for obj, why in dead),
            "Claims the probe sent": access_rehearsal.example_claims(),
            "Fix": "if the application's tokens carry other claims, describe them (rolemig_jwt_claims, "
                   "with \"{app_metadata}\" / \"{user_metadata}\" for what the auth row holds; "
                   "rolemig_pre_request); if the data the object reads (e.g. a role copied into "
                   "auth.users.raw_app_meta_data) is never written, write it; if the object is dead, drop it",
        },
    )
