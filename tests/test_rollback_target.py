"""Which backup a rollback restores: the one the migration started from, never a later one.

A backup taken after users moved already holds their new roles; a revert to it
would report success while undoing nothing. These tests migrate with the real
``execute_role_migration`` (committed calls, as ``rolemig migrate`` makes them) and
judge the result by the roles in the table, not only by the validation.
"""

from __future__ import annotations

import psycopg
import pytest
from sql_helpers import one, rows


def backup(conn, name="b"):
    return one(conn, "SELECT backup_id FROM migration_backup.create_comprehensive_backup(%s)", (name,))["backup_id"]


def migrate(conn, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    return one(conn, f"SELECT * FROM migration_control.execute_role_migration({args})", kw)


def roles(conn):
    return {r["id"]: r["role"] for r in rows(conn, "SELECT id::text, role FROM public.user_profiles")}


def checks(conn, backup_id, rollback_id=None):
    return {r["check_name"]: r for r in rows(
        conn, "SELECT * FROM migration_backup.validate_rollback_success(%s, %s)", (backup_id, rollback_id))}


@pytest.mark.parametrize("when", ["after", "mid"])
def test_revert_refuses_a_backup_taken_after_users_moved_and_defaults_to_the_base(rolemig_db, when):
    base = backup(rolemig_db, "before")
    before = roles(rolemig_db)
    if when == "after":
        migrate(rolemig_db, p_batch_size=25)
    else:
        for _ in range(3):
            migrate(rolemig_db, p_batch_size=10, p_max_batches=1)
    later = backup(rolemig_db, when)
    moved = roles(rolemig_db)
    assert moved != before

    with pytest.raises(psycopg.errors.RaiseException, match=f"backup {later} was taken after the migration") as err:
        rolemig_db.execute("SELECT * FROM migration_backup.execute_rollback(%s)", (later,))
    assert base in err.value.diag.message_hint
    assert roles(rolemig_db) == moved
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.rollback_log")["n"] == 0

    result = one(rolemig_db, "SELECT * FROM migration_backup.execute_rollback(NULL)")
    assert result["status"] == "completed"
    assert one(rolemig_db, "SELECT backup_id FROM migration_backup.rollback_log")["backup_id"] == base
    assert roles(rolemig_db) == before
    got = checks(rolemig_db, base, result["rollback_id"])
    assert {c: r["status"] for c, r in got.items() if r["status"] != "pass"} == {}
    assert got["migration_undone"]["details"]["users_on_migrated_roles"] == 0


def test_validation_fails_a_rollback_that_left_users_on_migrated_roles(rolemig_db):
    """Even a rollback that bypassed the refusal cannot pass: the log says who still holds a migrated role."""
    backup(rolemig_db, "before")
    migrate(rolemig_db, p_batch_size=50)
    later = backup(rolemig_db, "after")
    result = one(rolemig_db, "SELECT * FROM migration_backup.perform_rollback(%s, 'revert', 'bypass')", (later,))
    assert result["status"] == "completed" and result["profiles_restored"] == 0
    got = checks(rolemig_db, later, result["rollback_id"])
    # compared with the later backup alone every role is "restored": that is the trap
    assert got["profiles_roles_restored"]["status"] == "pass"
    assert got["migration_undone"]["status"] == "fail"
    assert got["migration_undone"]["details"]["users_on_migrated_roles"] == 80
    sample = got["migration_undone"]["details"]["sample"]
    assert len(sample) == 20 and all(s["legacy_role"] != s["current_role"] for s in sample)


def test_emergency_rollback_refuses_a_later_backup_and_defaults_to_the_base(rolemig_db):
    base = backup(rolemig_db, "before")
    before = roles(rolemig_db)
    migrate(rolemig_db, p_batch_size=40)
    later = backup(rolemig_db, "after")
    moved = roles(rolemig_db)

    with pytest.raises(psycopg.errors.RaiseException, match=f"backup {later} was taken after the migration"):
        rolemig_db.execute("SELECT * FROM migration_backup.emergency_rollback(%s)", (later,))
    assert roles(rolemig_db) == moved

    default = one(rolemig_db, "SELECT * FROM migration_backup.emergency_rollback()")
    assert default["status"] == "completed"
    assert one(rolemig_db, "SELECT backup_id FROM migration_backup.rollback_log WHERE rollback_id = %s",
               (default["rollback_id"],))["backup_id"] == base
    assert roles(rolemig_db) == before
    assert checks(rolemig_db, base, default["rollback_id"])["migration_undone"]["status"] == "pass"
