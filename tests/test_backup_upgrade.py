"""The upgrade from version 1 (backups as jsonb rows) to version 2 (typed copies).

An install of version 1 is reproduced by installing its backup file
(``tests/examples/upgrade/comprehensive-backup-system-v1.sql``) where version 2's backup objects
were; backups are taken with version 1's own function, then every file of the current version is
installed over it, as ``rolemig install`` or the master script would. The old backups must come out
restorable, to the exact json text, JSON null and every other column, and a corrupted one must not
be given fresh checksums that would vouch for it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_helpers import one, rows

from pytest_rolemig.db import install as installer

V1_BACKUP_FILE = Path(__file__).parent / "examples" / "upgrade" / "comprehensive-backup-system-v1.sql"


def install_version_1(conn):
    """Turn the fresh install into one of version 1: its backup tables and functions, no version row."""
    conn.execute("""DROP TRIGGER drop_copies_delete ON migration_backup.backup_log;
                    DROP TRIGGER drop_copies_truncate ON migration_backup.backup_log;
                    DROP VIEW migration_backup.user_profiles_complete_backup, migration_backup.user_sessions_backup;
                    ALTER TABLE migration_backup.backup_log DROP COLUMN profiles_copy, DROP COLUMN sessions_copy;
                    DROP TABLE migration_control.infrastructure_version""")
    conn.execute(V1_BACKUP_FILE.read_text().encode())


def install_current(conn):
    for _name, text in installer.component_sql():
        conn.execute(text.encode())


def profiles(conn):
    """Every profile column as its exact text (json keeps whitespace and duplicate keys)."""
    return rows(conn, """SELECT p.id::text AS id, p.role, p.prefs::text AS prefs, p.extra::text AS extra,
                                p.extra IS NULL AS extra_is_sql_null, to_jsonb(p) - 'prefs' AS rest
                           FROM public.user_profiles p ORDER BY p.id""")


@pytest.fixture
def v1_backups(rolemig_db):
    conn = rolemig_db
    conn.execute("""ALTER TABLE public.user_profiles ADD COLUMN prefs json, ADD COLUMN extra jsonb;
                    UPDATE public.user_profiles SET prefs = '{"b": 1,   "a": [null], "b": 2}', extra = 'null'
                     WHERE id IN (SELECT id FROM public.user_profiles ORDER BY id LIMIT 40)""")
    install_version_1(conn)
    assert one(conn, "SELECT c.relkind FROM pg_class c WHERE c.oid = "
                     "'migration_backup.user_profiles_complete_backup'::regclass")["relkind"] == "r"
    good = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup('v1 backup')")["backup_id"]
    bad = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup('v1 corrupted')")["backup_id"]
    conn.execute("""UPDATE migration_backup.user_profiles_complete_backup
                       SET row_data = jsonb_set(row_data, '{phone}', '"555"')
                     WHERE backup_id = %s AND user_key = (SELECT min(user_key)
                           FROM migration_backup.user_profiles_complete_backup)""", (bad,))
    assert one(conn, "SELECT count(*) AS n FROM migration_backup.user_profiles_complete_backup "
                     "WHERE backup_id = %s AND json_text IS NOT NULL", (good,))["n"] == 40
    return good, bad


def test_upgrade_converts_version_1_backups_and_records_the_version(rolemig_db, v1_backups):
    good, bad = v1_backups
    install_current(rolemig_db)
    version = one(rolemig_db, "SELECT version, backup_format FROM migration_control.infrastructure_version")
    assert version == {"version": 2, "backup_format": "typed"}
    log = {r["backup_id"]: r for r in rows(rolemig_db, "SELECT * FROM migration_backup.backup_log")}
    assert log[good]["profiles_copy"] == f"{good}_profiles" and log[good]["sessions_copy"] == f"{good}_sessions"
    assert log[bad]["profiles_copy"] is None  # not converted: its rows no longer match its checksums
    listed = {b["backup_id"]: b["restorable"] for b in
              rows(rolemig_db, "SELECT * FROM migration_backup.list_available_backups()")}
    assert listed == {good: True, bad: False}
    checks = {r["check_name"]: r["status"] for r in rows(
        rolemig_db, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (good,))}
    assert set(checks.values()) == {"pass"}
    # the converted copy holds the live rows exactly, json text and JSON null included
    differ = one(rolemig_db, f"""SELECT count(*) AS n FROM migration_backup."{good}_profiles" c
                                  FULL JOIN public.user_profiles p ON p.id = c.id
                                 WHERE NOT record_image_eq(ROW(c.prefs::text, c.extra, c.role, c.updated_at),
                                                           ROW(p.prefs::text, p.extra, p.role, p.updated_at))
                                    OR c.id IS NULL OR p.id IS NULL""")
    assert differ["n"] == 0
    # the old table keeps only what was not converted; the spec's name is the view again
    assert rows(rolemig_db, "SELECT DISTINCT backup_id FROM migration_backup.user_profiles_jsonb_backup") == [
        {"backup_id": bad}]
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.user_profiles_complete_backup "
                           "WHERE backup_id = %s", (good,))["n"] == 130
    # installing again changes nothing
    install_current(rolemig_db)
    assert set(r["status"] for r in rows(
        rolemig_db, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (good,))) == {"pass"}


@pytest.mark.parametrize("mode", ["revert", "emergency"])
def test_a_version_1_backup_restores_exactly_after_the_upgrade(rolemig_db, v1_backups, mode):
    good, _bad = v1_backups
    before = profiles(rolemig_db)
    install_current(rolemig_db)
    run = one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration(p_backup_id => %s)", (good,))
    assert run["status"] == "completed", run
    assert profiles(rolemig_db) != before
    if mode == "emergency":  # a change the emergency rollback must undo: json text, JSON null
        rolemig_db.execute("UPDATE public.user_profiles SET prefs = '{\"a\": 1}', extra = NULL")
        result = one(rolemig_db, "SELECT * FROM migration_backup.emergency_rollback(%s)", (good,))
    else:
        result = one(rolemig_db, "SELECT * FROM migration_backup.execute_rollback(%s)", (good,))
    assert result["status"] == "completed", result
    assert profiles(rolemig_db) == before
    checks = {r["check_name"]: r["status"] for r in rows(
        rolemig_db, "SELECT * FROM migration_backup.validate_rollback_success(%s, %s)",
        (good, result["rollback_id"]))}
    assert set(checks.values()) == {"pass"}, checks
