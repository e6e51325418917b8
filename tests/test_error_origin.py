"""A failed batch names the application object that refused it, not only its message.

A trigger that refuses role changes, or a constraint the new role breaks, fails the batch with
the application's own words; the batch's recorded error (and the result every path returns)
adds where it was raised: the trigger and its table, the function and line, the constraint.
"""

from __future__ import annotations

import psycopg
import pytest

from pytest_rolemig.online import call

REFUSE_PROMOTION = """
    CREATE FUNCTION public.guard_role_changes() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.role IS DISTINCT FROM OLD.role AND OLD.role = 'support_agent' THEN
            RAISE EXCEPTION 'role changes need an approval ticket';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER guard_role_changes BEFORE UPDATE OF role ON public.user_profiles
        FOR EACH ROW EXECUTE FUNCTION public.guard_role_changes()"""


def backup(conn):
    conn.execute("SELECT migration_backup.create_comprehensive_backup()")


def test_one_call_migration_names_the_trigger_that_refused(rolemig_db):
    backup(rolemig_db)
    rolemig_db.execute(REFUSE_PROMOTION)
    status, error = rolemig_db.execute(
        "SELECT status, error FROM migration_control.execute_role_migration(p_batch_size => 200)").fetchone()
    assert status == "failed"
    assert error.startswith("role changes need an approval ticket [raised in trigger guard_role_changes on "
                            "public.user_profiles: PL/pgSQL function guard_role_changes() line 4 at RAISE]"), error
    recorded = rolemig_db.execute("SELECT error FROM migration_tracking.migration_batch "
                                  "WHERE status = 'failed'").fetchone()[0]
    assert "trigger guard_role_changes on public.user_profiles" in recorded


def test_online_migration_names_the_trigger_that_refused(rolemig_db):
    backup(rolemig_db)
    rolemig_db.execute(REFUSE_PROMOTION)
    with pytest.raises(psycopg.errors.RaiseException,
                       match=r"failed at batches: role changes need an approval ticket \[raised in trigger "
                             r"guard_role_changes on public.user_profiles: PL/pgSQL function"):
        call(rolemig_db, p_batch_size=200)


def test_a_constraint_that_refuses_the_new_role_is_named(rolemig_db):
    backup(rolemig_db)
    rolemig_db.execute("CREATE UNIQUE INDEX one_owner ON public.user_profiles (role) WHERE role = 'owner'")
    status, error = rolemig_db.execute(
        "SELECT status, error FROM migration_control.execute_role_migration(p_batch_size => 200)").fetchone()
    assert status == "failed"
    assert "[constraint one_owner on public.user_profiles]" in error, error
