"""Columns the application's triggers set on every write are not changes the migration made.

An ``updated_at`` trigger (moddatetime, or the same in PL/pgSQL) bumps a timestamp whenever
the migration or a rollback writes a row. The comparisons leave such columns out and the gate
says so; any other column a trigger writes (``is_active := false`` on a role change) stays
compared, and the gate fails on it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_rolemig import api, resources

TRIGGERS = Path(__file__).parent / "examples" / "triggers"


def test_a_timestamp_set_on_every_write_is_found(rolemig_db):
    rolemig_db.execute((TRIGGERS / "updated-at.sql").read_text())
    assert api.trigger_written_columns(rolemig_db) == {"updated_at": "touch_updated_at"}


def test_other_assignments_and_comparisons_are_not(rolemig_db):
    rolemig_db.execute((TRIGGERS / "deactivate-on-role-change.sql").read_text())
    rolemig_db.execute("""
        CREATE FUNCTION public.compare_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.last_seen_at = now() THEN RAISE NOTICE 'same'; END IF;  -- a comparison
            RETURN NEW;
        END $$;
        CREATE TRIGGER compare_only BEFORE UPDATE ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.compare_only();
        CREATE TRIGGER disabled_touch BEFORE UPDATE ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.reapprove_on_role_change();
        ALTER TABLE public.user_profiles DISABLE TRIGGER disabled_touch""")
    assert api.trigger_written_columns(rolemig_db) == {"updated_at": "reapprove_on_role_change"}


def test_rollback_validation_leaves_the_timestamp_out_and_says_so(rolemig_db):
    rolemig_db.execute((TRIGGERS / "updated-at.sql").read_text())
    backup_id = api.backup(rolemig_db).backup_id
    api.migrate(rolemig_db, backup_id=backup_id)
    rollback = api.rollback(rolemig_db, backup_id, "test", emergency=True)
    report = api.validate_rollback(rolemig_db, backup_id, rollback.rollback_id)
    content = next(c for c in report.checks if c.name == "profiles_content")
    assert content.status == "pass", report.render(only_problems=True)
    assert content.details["not_compared"] == ["updated_at"]


def _gate(pytester, case):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-rf",
                                         f"--rolemig-schema={resources.demo_schema()}",
                                         f"--rolemig-schema={TRIGGERS / case}")


@pytest.mark.slow
def test_gate_passes_with_an_updated_at_trigger_and_names_the_column(pytester):
    result = _gate(pytester, "updated-at.sql")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["rolemig: not compared: public.user_profiles.updated_at, set by trigger "
                                 "touch_updated_at on every write of the row"])


@pytest.mark.slow
def test_gate_fails_when_a_trigger_changes_another_column(pytester):
    result = _gate(pytester, "deactivate-on-role-change.sql")
    result.stdout.fnmatch_lines(["FAILED *test_rollback_restores_everything_exactly*",
                                 "FAILED *test_round_trip_gives_every_user_back*"], consecutive=False)
    result.stdout.fnmatch_lines(["*the migration changed is_active ('true' -> 'false'), not only role*"],
                                consecutive=False)
    result.stdout.fnmatch_lines(["  profile *: is_active 't' -> 'f'"], consecutive=False)
    out = result.stdout.str()
    assert "not compared: public.user_profiles.updated_at" in out
    # the failures read as their message: no test source, no plugin frames
    assert "rolemig_rehearsal.run(" not in out and "def test_" not in out and ".py:" not in out.split(
        "short test summary")[0].split("FAILURES")[-1]
