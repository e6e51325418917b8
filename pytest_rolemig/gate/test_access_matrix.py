"""The access gate: what users can actually do, before, during and after the migration, and after rollback.

Policy text can be clean while a helper function or a JWT claim still decides on
a legacy role. These tests act as real application users through RLS (see
:mod:`pytest_rolemig.access.matrix`) on their own copy of the template, and
compare the rows each user reaches per table and command. The matrices are
computed while the other gate tests run (:mod:`pytest_rolemig.access.rehearsal`),
so this module runs last. Reports:
``<report_dir>/access-matrix.md`` and ``.json``.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_rolemig.access.matrix import ANON
from pytest_rolemig.access.rehearsal import AccessRehearsal
from pytest_rolemig.access.report import Comparison
from pytest_rolemig.assertions import RolemigAssertionError
from pytest_rolemig.mapping import render_access_changes


@pytest.fixture
def access_rehearsal(rolemig_access_rehearsal: Any) -> AccessRehearsal:
    """The session's access rehearsal (computing in the background since the gate started)."""
    return rolemig_access_rehearsal


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
