"""comprehensive-backup-system.sql: backups are complete, exact and verifiable.

Every expectation is computed by an independent query on the live tables (``to_jsonb`` dumps,
``pg_policies``, ``pg_constraint``), not by the project's own functions; each validation check
is driven to its failing result by corrupting a backup (its typed copy, the table that holds
its rows).
"""

from __future__ import annotations

import re

import psycopg
import pytest
from sql_helpers import one, rows

from pytest_rolemig import resources

BACKUP_ID = re.compile(r"^bk_\d{8}_\d{6}_[0-9a-f]{6}$")
CHECKS = ["backup_exists", "backup_status", "profiles_count", "profiles_checksum", "sessions_count",
          "sessions_checksum", "policies_count", "policies_checksum", "profiles_keys_consistent",
          "covers_live_users"]


def backup(conn, name="pre_migration_backup"):
    return one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup(%s)", (name,))


def validate(conn, backup_id):
    return {r["check_name"]: r for r in
            rows(conn, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (backup_id,))}


def copy_of(conn, backup_id, kind="profiles"):
    """The qualified name of a backup's typed copy, as backup_log records it."""
    name = one(conn, f"SELECT {kind}_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (backup_id,))["c"]
    return f'migration_backup."{name}"'


def copies(conn):
    """The typed copies present in migration_backup."""
    return [r["t"] for r in rows(conn, """SELECT tablename::text AS t FROM pg_tables
        WHERE schemaname = 'migration_backup' AND tablename ~ '^bk_.*_(profiles|sessions)$' ORDER BY 1""")]


def statuses(checks):
    return {name: r["status"] for name, r in checks.items()}


def live_policies(conn):
    """Policies of the migrated tables, read from pg_policies (not from the project's helper).

    Deparsed with search_path = pg_catalog, as the backup does, so names come out schema-qualified.
    """
    conn.execute("SET search_path = pg_catalog")
    result = rows(conn, """
        SELECT p.schemaname::text AS schema_name, p.tablename::text AS table_name, p.policyname::text AS policy_name,
               p.permissive, p.cmd AS command,
               ARRAY(SELECT r::text FROM unnest(p.roles) r ORDER BY 1) AS roles,
               p.qual AS using_expr, p.with_check AS check_expr
          FROM pg_policies p JOIN pg_class c ON c.relname = p.tablename
          JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname
         WHERE p.schemaname IN ('public', 'auth') OR (p.schemaname, p.tablename) = ('public', 'user_profiles')
         ORDER BY 1, 2, 3""")
    conn.execute("RESET search_path")
    return result


# ------------------------------------------------------------ create ----

def test_backup_copies_every_profile_session_and_policy_exactly(rolemig_db):
    result = backup(rolemig_db)
    assert BACKUP_ID.match(result["backup_id"]) and result["status"] == "completed"
    bid = result["backup_id"]

    live_profiles = rows(rolemig_db, "SELECT id::text AS k, role, to_jsonb(p) AS j "
                                     "FROM public.user_profiles p ORDER BY 1")
    saved_profiles = rows(rolemig_db, """SELECT user_key AS k, role, row_data AS j
        FROM migration_backup.user_profiles_complete_backup WHERE backup_id = %s ORDER BY 1""", (bid,))
    assert len(live_profiles) == 130 and saved_profiles == live_profiles

    live_sessions = rows(rolemig_db, "SELECT id::text AS k, user_id::text AS u, to_jsonb(s) AS j "
                                     "FROM auth.sessions s ORDER BY 1")
    saved_sessions = rows(rolemig_db, """SELECT session_key AS k, user_key AS u, row_data AS j
        FROM migration_backup.user_sessions_backup WHERE backup_id = %s ORDER BY 1""", (bid,))
    assert len(live_sessions) > 0 and saved_sessions == live_sessions

    saved_policies = rows(rolemig_db, """SELECT schema_name, table_name, policy_name, permissive, command, roles,
               using_expr, check_expr FROM migration_backup.rls_policies_backup WHERE backup_id = %s
         ORDER BY 1, 2, 3""", (bid,))
    assert saved_policies == live_policies(rolemig_db)
    assert (result["profiles_count"], result["sessions_count"], result["policies_count"]) == (
        130, len(live_sessions), len(saved_policies))
    restrictive = [p for p in saved_policies if p["policy_name"] == "documents: no deletes by viewers"]
    assert restrictive[0]["permissive"] == "RESTRICTIVE" and restrictive[0]["command"] == "DELETE"


def test_backup_records_target_constraints_and_rls_flags(rolemig_db):
    rolemig_db.execute("ALTER TABLE public.projects FORCE ROW LEVEL SECURITY")
    bid = backup(rolemig_db)["backup_id"]
    log = one(rolemig_db, "SELECT * FROM migration_backup.backup_log WHERE backup_id = %s", (bid,))
    target = log["target"]
    assert (target["profiles_schema"], target["profiles_table"], target["role_column"]) == (
        "public", "user_profiles", "role")
    assert target["mapping"]["super_admin"] == "owner" and len(target["mapping"]) == 13
    expected_check = one(rolemig_db, """SELECT conname::text AS name, pg_get_constraintdef(oid) AS definition
        FROM pg_constraint WHERE conrelid = 'public.user_profiles'::regclass AND contype = 'c'""")
    assert target["role_checks"] == [expected_check]
    flags = {(t["schema"], t["table"]): (t["enabled"], t["forced"]) for t in target["rls_tables"]}
    assert flags[("public", "projects")] == (True, True)
    assert flags[("public", "user_profiles")] == (True, False)
    assert flags[("auth", "sessions")] == (True, False)
    assert ("auth", "users") not in flags  # no RLS, no policy: not a migrated table
    assert log["completed_at"] >= log["created_at"]
    for column in ("profiles_checksum", "sessions_checksum", "policies_checksum"):
        assert re.match(r"^-?\d+$", log[column])


def test_backup_copies_are_typed_tables_equal_to_the_live_ones(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    for kind, live in (("profiles", "public.user_profiles"), ("sessions", "auth.sessions")):
        copy = copy_of(rolemig_db, bid, kind)
        columns = """SELECT attname::text AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute
                       WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
        assert rows(rolemig_db, columns, (copy,)) == rows(rolemig_db, columns, (live,))
        differ = one(rolemig_db, f"""SELECT (SELECT count(*) FROM (SELECT * FROM {copy} EXCEPT ALL
                                                                   SELECT * FROM {live}) AS a)
                                          + (SELECT count(*) FROM (SELECT * FROM {live} EXCEPT ALL
                                                                   SELECT * FROM {copy}) AS b) AS n""")
        assert differ["n"] == 0


def test_checksum_matches_the_same_expression_over_live_rows(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    live = one(rolemig_db, """SELECT sum(hash_record_extended(p, 0))::text AS s
                                FROM public.user_profiles p""")["s"]
    assert one(rolemig_db, "SELECT profiles_checksum AS s FROM migration_backup.backup_log WHERE backup_id = %s",
               (bid,))["s"] == live


def test_failed_backup_is_kept_with_its_error_and_no_rows(rolemig_db):
    rolemig_db.execute("UPDATE migration_control.target_config SET sessions_table = 'no_such_table'")
    result = backup(rolemig_db, "broken")
    assert result["status"] == "failed" and result["profiles_count"] is None
    log = one(rolemig_db, "SELECT * FROM migration_backup.backup_log WHERE backup_id = %s", (result["backup_id"],))
    assert "no_such_table" in log["error"] and log["backup_name"] == "broken"
    # the profile copy made before the error is undone with it
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.user_profiles_complete_backup")["n"] == 0
    assert copies(rolemig_db) == []
    checks = validate(rolemig_db, result["backup_id"])
    assert checks["backup_status"]["status"] == "fail"
    assert checks["backup_status"]["details"]["status"] == "failed"


def test_backup_refuses_empty_name(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="backup name must not be empty") as exc:
        backup(rolemig_db, "")
    assert exc.value.diag.message_hint
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.backup_log")["n"] == 0


def test_backup_works_with_empty_search_path(rolemig_db):
    rolemig_db.execute("SET search_path = ''")
    result = backup(rolemig_db)
    assert result["status"] == "completed"
    assert set(statuses(validate(rolemig_db, result["backup_id"])).values()) == {"pass"}


# ---------------------------------------------------------- validate ----

def test_fresh_backup_passes_every_check(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    checks = validate(rolemig_db, bid)
    assert list(checks) == CHECKS
    assert set(statuses(checks).values()) == {"pass"}
    assert checks["profiles_count"]["details"] == {"recorded": "130", "actual": "130"}


def test_unknown_backup_is_one_failing_row(rolemig_db):
    checks = validate(rolemig_db, "bk_does_not_exist")
    assert statuses(checks) == {"backup_exists": "fail"}
    assert checks["backup_exists"]["details"]["backup_id"] == "bk_does_not_exist"


def test_changed_profile_row_fails_the_checksum_only(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    copy = copy_of(rolemig_db, bid)
    rolemig_db.execute(f"UPDATE {copy} SET full_name = 'tampered' WHERE id = (SELECT min(id::text)::uuid FROM {copy})")
    got = statuses(validate(rolemig_db, bid))
    assert got["profiles_checksum"] == "fail"
    assert {k: v for k, v in got.items() if k != "profiles_checksum"} == {k: "pass" for k in CHECKS
                                                                        if k != "profiles_checksum"}


def test_deleted_session_row_fails_count_and_checksum(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    copy = copy_of(rolemig_db, bid, "sessions")
    rolemig_db.execute(f"DELETE FROM {copy} WHERE id = (SELECT min(id::text)::uuid FROM {copy})")
    checks = validate(rolemig_db, bid)
    assert checks["sessions_count"]["status"] == "fail"
    counted = checks["sessions_count"]["details"]
    assert int(counted["actual"]) == int(counted["recorded"]) - 1
    assert checks["sessions_checksum"]["status"] == "fail"
    assert checks["profiles_checksum"]["status"] == "pass"


def test_changed_policy_fails_policies_checksum(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("""UPDATE migration_backup.rls_policies_backup SET using_expr = 'true'
                           WHERE backup_id = %s AND policy_name = 'profiles: staff read all'""", (bid,))
    checks = statuses(validate(rolemig_db, bid))
    assert (checks["policies_checksum"], checks["policies_count"]) == ("fail", "pass")


def test_copy_without_its_role_column_fails_keys_consistent(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("DROP VIEW migration_backup.user_profiles_complete_backup")  # it reads the column
    rolemig_db.execute(f"ALTER TABLE {copy_of(rolemig_db, bid)} DROP COLUMN role")
    checks = validate(rolemig_db, bid)
    assert checks["profiles_keys_consistent"]["status"] == "fail"
    assert checks["profiles_keys_consistent"]["details"]["columns_missing"] == ["role"]
    assert checks["profiles_checksum"]["status"] == "fail"


def test_missing_copy_fails_and_is_not_restorable(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("DROP VIEW migration_backup.user_profiles_complete_backup")  # it reads the copy
    rolemig_db.execute(f"DROP TABLE {copy_of(rolemig_db, bid)}")
    checks = validate(rolemig_db, bid)
    assert checks["profiles_keys_consistent"]["details"]["copy_exists"] is False
    assert (checks["profiles_count"]["status"], checks["profiles_keys_consistent"]["status"]) == ("fail", "fail")
    assert one(rolemig_db, "SELECT restorable FROM migration_backup.list_available_backups()")["restorable"] is False


def test_json_columns_are_checksummed_by_their_exact_text(rolemig_db):
    """json has no hash function: its text is hashed, so a change of whitespace alone is seen."""
    rolemig_db.execute("""ALTER TABLE public.user_profiles ADD COLUMN prefs json, ADD COLUMN flags bit(3);
                          UPDATE public.user_profiles SET prefs = '{"a": 1,  "a": [null]}', flags = B'101'""")
    bid = backup(rolemig_db)["backup_id"]
    assert set(statuses(validate(rolemig_db, bid)).values()) == {"pass"}
    copy = copy_of(rolemig_db, bid)
    rolemig_db.execute(f"""UPDATE {copy} SET prefs = '{{"a": 1, "a": [null]}}'
                            WHERE id = (SELECT min(id::text)::uuid FROM {copy})""")
    assert statuses(validate(rolemig_db, bid))["profiles_checksum"] == "fail"


def test_the_views_list_every_backup_and_refuse_writes(rolemig_db):
    first, second = backup(rolemig_db)["backup_id"], backup(rolemig_db)["backup_id"]
    counted = rows(rolemig_db, """SELECT backup_id, count(*) AS n FROM migration_backup.user_profiles_complete_backup
                                   GROUP BY 1 ORDER BY 1""")
    assert counted == sorted([{"backup_id": first, "n": 130}, {"backup_id": second, "n": 130}],
                             key=lambda r: r["backup_id"])
    with pytest.raises(psycopg.errors.RaiseException, match="view over the typed backup copies") as exc:
        rolemig_db.execute("DELETE FROM migration_backup.user_sessions_backup")
    assert "backup_log" in exc.value.diag.message_hint


def test_tampered_log_counts_fail(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("UPDATE migration_backup.backup_log SET profiles_count = 131, policies_count = 1 "
                       "WHERE backup_id = %s", (bid,))
    checks = statuses(validate(rolemig_db, bid))
    assert (checks["profiles_count"], checks["policies_count"]) == ("fail", "fail")


def test_in_progress_backup_fails_status(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("UPDATE migration_backup.backup_log SET status = 'in_progress' WHERE backup_id = %s", (bid,))
    assert statuses(validate(rolemig_db, bid))["backup_status"] == "fail"


def test_user_created_after_backup_is_a_warning_with_its_key(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    new_id = one(rolemig_db, """WITH u AS (INSERT INTO auth.users (email) VALUES ('late@example.org') RETURNING id)
        INSERT INTO public.user_profiles (id, email, role) SELECT id, 'late@example.org', 'viewer' FROM u
        RETURNING id::text AS id""")["id"]
    checks = validate(rolemig_db, bid)
    assert checks["covers_live_users"]["status"] == "warn"
    assert checks["covers_live_users"]["details"] == {"live_users_missing_from_backup": 1, "sample": [new_id]}
    assert checks["profiles_checksum"]["status"] == "pass"


# ------------------------------------------------------------ summary ----

def test_summary_lists_newest_first_with_sizes(rolemig_db):
    first = backup(rolemig_db, "first")["backup_id"]
    rolemig_db.execute("UPDATE migration_control.target_config SET profiles_table = 'gone'")
    failed = backup(rolemig_db, "second")["backup_id"]
    summary = rows(rolemig_db, "SELECT * FROM migration_backup.get_backup_summary()")
    assert [s["backup_id"] for s in summary] == [failed, first]
    assert (summary[0]["status"], summary[0]["size_bytes"]) == ("failed", 0)
    assert summary[1]["status"] == "completed" and summary[1]["profiles_count"] == 130
    data_bytes = one(rolemig_db, "SELECT pg_relation_size(%s) AS n",
                     (copy_of(rolemig_db, first),))["n"]
    assert summary[1]["size_bytes"] > data_bytes > 0


def test_backups_are_independent_and_deleted_with_their_log(rolemig_db):
    first = backup(rolemig_db)["backup_id"]
    rolemig_db.execute("UPDATE public.user_profiles SET full_name = 'changed'")
    second = backup(rolemig_db)["backup_id"]
    sums = rows(rolemig_db, "SELECT backup_id, profiles_checksum FROM migration_backup.backup_log ORDER BY created_at")
    assert [s["backup_id"] for s in sums] == [first, second]
    assert sums[0]["profiles_checksum"] != sums[1]["profiles_checksum"]
    rolemig_db.execute("DELETE FROM migration_backup.backup_log WHERE backup_id = %s", (first,))
    left = one(rolemig_db, "SELECT count(DISTINCT backup_id) AS n FROM migration_backup.user_profiles_complete_backup")
    assert left["n"] == 1
    assert copies(rolemig_db) == [f"{second}_profiles", f"{second}_sessions"]
    assert set(statuses(validate(rolemig_db, second)).values()) == {"pass"}


def test_copies_go_with_a_truncated_log(rolemig_db):
    """Statement triggers on backup_log drop the copies, as a cascade would delete rows."""
    fks = rows(rolemig_db, """SELECT conrelid::regclass::text AS t FROM pg_constraint
        WHERE contype = 'f' AND confrelid = 'migration_backup.backup_log'::regclass""")
    assert {f["t"] for f in fks} == {"migration_backup.rls_policies_backup"}
    backup(rolemig_db)
    backup(rolemig_db)
    assert len(copies(rolemig_db)) == 4
    rolemig_db.execute("TRUNCATE migration_backup.backup_log CASCADE")
    assert copies(rolemig_db) == []
    left = one(rolemig_db, """SELECT (SELECT count(*) FROM migration_backup.user_profiles_complete_backup)
        + (SELECT count(*) FROM migration_backup.user_sessions_backup) AS n""")
    assert left["n"] == 0


def test_file_is_idempotent_and_keeps_backups(rolemig_db):
    bid = backup(rolemig_db)["backup_id"]
    text = resources.sql_file("comprehensive-backup-system.sql").read_text()
    rolemig_db.execute(text.encode())
    rolemig_db.execute(text.encode())
    assert set(statuses(validate(rolemig_db, bid)).values()) == {"pass"}
