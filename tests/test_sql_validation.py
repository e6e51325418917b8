"""migration-validation-functions.sql: every check, driven to its passing and its failing result.

Runs on real PostgreSQL through the plugin's ``rolemig_db`` fixture (a fresh clone per test with
the infrastructure installed, the demo mapping loaded and 130 seeded users, no backup yet).
Expectations come from independent queries on the live tables, not from the functions under test.
"""

from __future__ import annotations

import psycopg
import pytest
from sql_helpers import one, rows

from pytest_rolemig import api

PRE_CHECKS = ["target_configured", "mapping_loaded", "no_null_roles", "all_roles_known", "mapping_total",
              "mapping_targets_valid", "valid_backup_exists", "no_migration_running"]
POST_CHECKS = ["every_user_has_new_role", "roles_match_mapping", "user_count_unchanged",
               "no_legacy_roles_in_policies", "sessions_intact"]
AUTH_CHECKS = ["own_profile_readable", "own_sessions_readable", "rls_applies"]
LEGACY_ONLY = {"super_admin", "org_owner", "org_admin", "billing_admin", "team_lead", "author", "contributor",
               "support_agent"}


def checks(conn, call, params=None):
    result = rows(conn, f"SELECT * FROM {call}", params)
    for r in result:
        assert r["status"] in ("pass", "fail", "warn"), r
        assert isinstance(r["details"], dict), r
        assert len(r["details"].get("sample", [])) <= 20, r
    return {r["check_name"]: r for r in result}


def pre(conn):
    return checks(conn, "migration_validation.validate_pre_migration_state()")


def post(conn, backup_id=None):
    return checks(conn, "migration_validation.validate_post_migration_state(%s)", (backup_id,))


def auth(conn, size=50):
    return checks(conn, "migration_validation.test_user_authentication(%s)", (size,))


def backup(conn):
    return one(conn, "SELECT backup_id FROM migration_backup.create_comprehensive_backup()")["backup_id"]


def migrate(conn, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    return one(conn, f"SELECT * FROM migration_control.execute_role_migration({args})", kw)


# ----------------------------------------------------------- pre-migration ----

def test_pre_migration_passes_once_a_backup_exists(rolemig_db):
    before = pre(rolemig_db)
    assert list(before) == PRE_CHECKS
    assert before["valid_backup_exists"]["status"] == "fail"
    assert "no completed backup" in before["valid_backup_exists"]["details"]["error"]
    assert {k: v["status"] for k, v in before.items() if k != "valid_backup_exists"} == dict.fromkeys(
        [c for c in PRE_CHECKS if c != "valid_backup_exists"], "pass")
    assert before["no_null_roles"]["details"]["users"] == 130
    assert before["mapping_total"]["details"]["legacy_roles_found"] == 13

    bid = backup(rolemig_db)
    after = pre(rolemig_db)
    assert {k: v["status"] for k, v in after.items()} == dict.fromkeys(PRE_CHECKS, "pass")
    assert after["valid_backup_exists"]["details"]["backup_id"] == bid


def test_unknown_role_fails_all_roles_known_and_mapping_total_naming_it(rolemig_db):
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    key = one(rolemig_db, """UPDATE public.user_profiles SET role = 'ghost'
                              WHERE id = (SELECT min(id::text)::uuid FROM public.user_profiles)
                              RETURNING id::text""")["id"]
    result = pre(rolemig_db)
    known = result["all_roles_known"]
    assert known["status"] == "fail"
    assert known["details"]["unknown_roles"] == {"ghost": {"count": 1, "sample": [key]}}
    assert known["details"]["sample"] == [{"key": key, "role": "ghost"}]
    total = result["mapping_total"]
    assert total["status"] == "fail" and total["details"]["unmapped_roles"] == ["ghost"]
    assert total["details"]["sample"] == [{"role": "ghost", "sources": ["data"]}]


def test_user_already_on_new_role_only_warns(rolemig_db):
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'owner' WHERE role = 'super_admin'")
    known = pre(rolemig_db)["all_roles_known"]
    assert known["status"] == "warn"
    assert known["details"]["unknown_roles"] == {}
    assert known["details"]["already_on_new_roles"]["owner"]["count"] == 10


def test_mapping_missing_a_legacy_role_fails_mapping_total_naming_it(rolemig_db):
    rolemig_db.execute("DELETE FROM migration_control.role_mapping WHERE legacy_role = 'team_lead'")
    total = pre(rolemig_db)["mapping_total"]
    assert total["status"] == "fail"
    assert total["details"]["unmapped_roles"] == ["team_lead"]
    assert total["details"]["sample"] == [{"role": "team_lead", "sources": ["check", "data"]}]


def test_role_allowed_by_check_only_is_found_unmapped(rolemig_db):
    rolemig_db.execute("""ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check,
        ADD CONSTRAINT user_profiles_role_check CHECK (role IN ('super_admin', 'admin', 'org_owner', 'org_admin',
        'billing_admin', 'manager', 'team_lead', 'editor', 'author', 'contributor', 'moderator', 'support_agent',
        'viewer', 'auditor'))""")
    total = pre(rolemig_db)["mapping_total"]
    assert total["status"] == "fail" and total["details"]["unmapped_roles"] == ["auditor"]
    assert total["details"]["sample"] == [{"role": "auditor", "sources": ["check"]}]


def test_null_role_fails_naming_the_user(rolemig_db):
    rolemig_db.execute("ALTER TABLE public.user_profiles ALTER COLUMN role DROP NOT NULL")
    key = one(rolemig_db, """UPDATE public.user_profiles SET role = NULL
                              WHERE id = (SELECT max(id::text)::uuid FROM public.user_profiles)
                              RETURNING id::text""")["id"]
    result = pre(rolemig_db)["no_null_roles"]
    assert result["status"] == "fail"
    assert result["details"]["null_roles"] == 1 and result["details"]["sample"] == [key]


def test_target_and_mapping_problems_fail(rolemig_db):
    rolemig_db.execute("DELETE FROM migration_control.role_mapping")
    assert pre(rolemig_db)["mapping_loaded"]["status"] == "fail"
    rolemig_db.execute("UPDATE migration_control.target_config SET profiles_table = 'no_such_table'")
    result = pre(rolemig_db)
    assert list(result) == ["target_configured"]
    assert result["target_configured"]["status"] == "fail"
    assert "public.no_such_table does not exist" in result["target_configured"]["details"]["error"]


def test_corrupt_backup_fails_valid_backup_exists(rolemig_db):
    bid = backup(rolemig_db)
    copy = one(rolemig_db, "SELECT profiles_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (bid,))["c"]
    rolemig_db.execute(f'DELETE FROM migration_backup."{copy}" WHERE id = (SELECT min(id::text)::uuid '
                       f'FROM migration_backup."{copy}")')
    result = pre(rolemig_db)["valid_backup_exists"]
    assert result["status"] == "fail" and result["details"]["backup_id"] == bid
    assert {c["check_name"] for c in result["details"]["failing_checks"]} >= {"profiles_count"}


def test_valid_backup_exists_lists_exactly_the_failing_rows_of_backup_completeness(rolemig_db):
    """A user added after the backup only warns in validate_backup_completeness (covers_live_users),
    so valid_backup_exists passes; with the copy gone, every failing row is listed, covers_live_users
    (which cannot read the copy) included."""
    def failing(bid):
        return [{"check_name": r["check_name"], "details": r["details"]} for r in rows(
            rolemig_db, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (bid,))
            if r["status"] == "fail"]

    bid = backup(rolemig_db)
    one(rolemig_db, """WITH u AS (INSERT INTO auth.users (email) VALUES ('late@example.org') RETURNING id)
        INSERT INTO public.user_profiles (id, email, role) SELECT id, 'late@example.org', 'viewer' FROM u
        RETURNING id""")
    result = pre(rolemig_db)["valid_backup_exists"]
    assert result["status"] == "pass"
    assert result["details"] == {"backup_id": bid, "failing_checks": []} and failing(bid) == []

    copy = one(rolemig_db, "SELECT profiles_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (bid,))["c"]
    rolemig_db.execute(f'DROP TABLE migration_backup."{copy}" CASCADE')
    result = pre(rolemig_db)["valid_backup_exists"]
    assert result["status"] == "fail"
    assert result["details"]["failing_checks"] == failing(bid)
    assert {c["check_name"] for c in failing(bid)} >= {"profiles_count", "covers_live_users"}


def test_running_batch_or_held_lock_fails_no_migration_running(rolemig_db, rolemig_server):
    assert pre(rolemig_db)["no_migration_running"]["status"] == "pass"
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname)) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtext('pytest_rolemig.migration'))")
        held = pre(rolemig_db)["no_migration_running"]
        assert held["status"] == "fail" and held["details"]["lock_held"] is True
        other.rollback()
    assert pre(rolemig_db)["no_migration_running"]["status"] == "pass"
    batch = one(rolemig_db, "SELECT migration_tracking.start_migration_batch('role_system_migration') AS id")["id"]
    running = pre(rolemig_db)["no_migration_running"]
    assert running["status"] == "fail"
    assert [b["batch_id"] for b in running["details"]["sample"]] == [batch]


def test_migration_lock_of_another_database_is_not_this_ones(rolemig_db, rolemig_server):
    """Advisory locks belong to a database: another application's migration on the same server
    neither fails this one's check nor shows as its lock holder (it did, and failed the gate)."""
    with psycopg.connect(rolemig_server.dsn("postgres")) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtext('pytest_rolemig.migration'))")
        assert pre(rolemig_db)["no_migration_running"]["status"] == "pass"
        assert api.lock_holder(rolemig_db) is None
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname)) as same:
        same.execute("SELECT pg_advisory_xact_lock(hashtext('pytest_rolemig.migration'))")
        assert pre(rolemig_db)["no_migration_running"]["status"] == "fail"
        holder = api.lock_holder(rolemig_db)
        assert holder is not None and holder.pid == same.info.backend_pid


# ---------------------------------------------------------- post-migration ----

def test_post_migration_fails_before_and_passes_after_migration(rolemig_db):
    bid = backup(rolemig_db)
    before = post(rolemig_db)
    assert list(before) == POST_CHECKS
    assert before["every_user_has_new_role"]["status"] == "fail"
    assert before["every_user_has_new_role"]["details"]["not_on_new_role"] == 80
    assert before["roles_match_mapping"]["status"] == "fail"
    assert before["roles_match_mapping"]["details"]["mismatched"] == 80
    assert before["no_legacy_roles_in_policies"]["status"] == "fail"
    assert before["user_count_unchanged"]["status"] == "pass"
    assert before["sessions_intact"]["status"] == "pass"

    assert migrate(rolemig_db)["status"] == "completed"
    after = post(rolemig_db, bid)
    assert {k: v["status"] for k, v in after.items()} == dict.fromkeys(POST_CHECKS, "pass")
    assert after["roles_match_mapping"]["details"]["backed_up_users"] == 130


def test_policy_left_with_legacy_literal_fails_naming_it(rolemig_db):
    backup(rolemig_db)
    migrate(rolemig_db)
    rolemig_db.execute("""CREATE POLICY "tickets: leads read" ON public.support_tickets FOR SELECT TO authenticated
                          USING (public.current_user_role() = 'team_lead')""")
    result = post(rolemig_db)["no_legacy_roles_in_policies"]
    assert result["status"] == "fail"
    assert result["details"]["policies"] == ["tickets: leads read"]
    assert result["details"]["sample"] == [{"schema": "public", "table": "support_tickets",
                                           "policy": "tickets: leads read", "clause": "using", "role": "team_lead"}]
    rls = checks(rolemig_db, "migration_validation.validate_rls_policies('post')")["policy_roles_match_phase"]
    assert rls["status"] == "fail" and rls["details"]["policies"] == ["tickets: leads read"]


def test_legacy_role_hidden_in_another_literal_form_fails_naming_it(rolemig_db):
    backup(rolemig_db)
    migrate(rolemig_db)
    assert post(rolemig_db)["no_legacy_roles_in_policies"]["status"] == "pass"
    rolemig_db.execute("""CREATE POLICY "tickets: shouting leads" ON public.support_tickets FOR SELECT
                          TO authenticated USING (upper(public.current_user_role()) = 'TEAM_LEAD')""")
    rolemig_db.execute("""CREATE POLICY "tickets: listed authors" ON public.support_tickets FOR SELECT
                          TO authenticated USING (public.current_user_role() = ANY ('{author,viewer}'::text[]))""")
    result = post(rolemig_db)["no_legacy_roles_in_policies"]
    assert result["status"] == "fail"
    found = {(s["policy"], s["role"], s["literal"]) for s in result["details"]["sample"]}
    assert found == {("tickets: shouting leads", "team_lead", "TEAM_LEAD"),
                     ("tickets: listed authors", "author", "{author,viewer}")}


def test_post_migration_names_changed_users_missing_sessions_and_users(rolemig_db):
    bid = backup(rolemig_db)
    migrate(rolemig_db)
    changed = one(rolemig_db, """UPDATE public.user_profiles SET role = 'viewer'
        WHERE id = (SELECT min(id::text)::uuid FROM public.user_profiles WHERE role = 'owner')
        RETURNING id::text""")["id"]
    session = one(rolemig_db, "DELETE FROM auth.sessions WHERE id = (SELECT min(id::text)::uuid FROM auth.sessions) "
                              "RETURNING id::text, user_id::text")
    result = post(rolemig_db, bid)
    mismatch = result["roles_match_mapping"]
    assert mismatch["status"] == "fail" and mismatch["details"]["mismatched"] == 1
    assert mismatch["details"]["sample"][0]["user_key"] == changed
    assert mismatch["details"]["sample"][0]["expected_role"] == "owner"
    assert mismatch["details"]["sample"][0]["current_role"] == "viewer"
    sessions = result["sessions_intact"]
    assert sessions["status"] == "fail"
    assert sessions["details"]["sample"] == [{"session_key": session["id"], "user_key": session["user_id"]}]

    gone = one(rolemig_db, """DELETE FROM auth.users WHERE id = (SELECT max(id::text)::uuid FROM public.user_profiles)
                               RETURNING id::text""")["id"]
    result = post(rolemig_db, bid)
    assert result["user_count_unchanged"]["status"] == "fail"
    assert result["user_count_unchanged"]["details"] == {"backup_id": bid, "backed_up_users": 130, "live_users": 129}
    assert any(s["user_key"] == gone and s["missing"] for s in result["roles_match_mapping"]["details"]["sample"])


def test_post_migration_with_unknown_backup_fails(rolemig_db):
    result = post(rolemig_db, "bk_nope")
    for name in ("roles_match_mapping", "user_count_unchanged", "sessions_intact"):
        assert result[name]["status"] == "fail" and result[name]["details"]["error"] == "backup not found"


def test_post_migration_names_users_whose_roles_were_swapped(rolemig_db):
    """The same users on the same roles in number: only who holds which role differs."""
    bid = backup(rolemig_db)
    migrate(rolemig_db)
    pair = rows(rolemig_db, """SELECT id::text AS id, role FROM public.user_profiles
        WHERE id IN ((SELECT min(id::text)::uuid FROM public.user_profiles WHERE role = 'owner'),
                     (SELECT min(id::text)::uuid FROM public.user_profiles WHERE role = 'viewer'))""")
    rolemig_db.execute("UPDATE public.user_profiles SET role = CASE role WHEN 'owner' THEN 'viewer' ELSE 'owner' END "
                       "WHERE id = ANY (%s::uuid[])", ([p["id"] for p in pair],))
    result = post(rolemig_db, bid)
    mismatch = result["roles_match_mapping"]
    assert mismatch["status"] == "fail" and mismatch["details"]["mismatched"] == 2
    swapped = {"owner": "viewer", "viewer": "owner"}
    assert sorted((s["user_key"], s["expected_role"], s["current_role"], s["missing"])
                  for s in mismatch["details"]["sample"]) == sorted(
        (p["id"], p["role"], swapped[p["role"]], False) for p in pair)
    assert result["user_count_unchanged"]["status"] == "pass"
    assert result["every_user_has_new_role"]["status"] == "pass"


def test_users_merged_away_pass_and_other_gone_users_are_named_without_a_log_index(rolemig_db):
    """A user gone whose newest log row says 'merged' (the migration deleted it as a merged
    duplicate) is not lost; a user gone otherwise is named, whether the log has a row for it or
    not (an identity-mapped user may have none). The log is read in one set-based pass, so this
    holds without an index on migration_log.user_key."""
    bid = backup(rolemig_db)
    migrate(rolemig_db)
    rolemig_db.execute("DROP INDEX IF EXISTS migration_tracking.migration_log_user_latest_idx")
    merged, deleted, unlogged = [r["id"] for r in rows(
        rolemig_db, "SELECT id::text AS id FROM public.user_profiles ORDER BY id::text LIMIT 3")]
    copy = one(rolemig_db, "SELECT profiles_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (bid,))["c"]
    backed_up_role = {r["id"]: r["role"] for r in rows(
        rolemig_db, f'SELECT id::text AS id, role FROM migration_backup."{copy}"')}
    # the profile rows only: the users' sessions stay
    rolemig_db.execute("DELETE FROM public.user_profiles WHERE id = %s::uuid", (merged,))
    rolemig_db.execute("""INSERT INTO migration_tracking.migration_log (batch_id, user_key, status)
                          SELECT max(batch_id), %s, 'merged' FROM migration_tracking.migration_log""", (merged,))
    result = post(rolemig_db, bid)
    assert {k: v["status"] for k, v in result.items()} == dict.fromkeys(POST_CHECKS, "pass")
    assert result["roles_match_mapping"]["details"]["merged_rows"] == 1
    assert result["user_count_unchanged"]["details"] == {"backup_id": bid, "backed_up_users": 130,
                                                         "live_users": 129, "merged_rows": 1}

    rolemig_db.execute("DELETE FROM public.user_profiles WHERE id = ANY (%s::uuid[])", ([deleted, unlogged],))
    rolemig_db.execute("DELETE FROM migration_tracking.migration_log WHERE user_key = %s", (unlogged,))
    result = post(rolemig_db, bid)
    mismatch = result["roles_match_mapping"]
    assert mismatch["status"] == "fail"
    assert mismatch["details"]["mismatched"] == 2 and mismatch["details"]["merged_rows"] == 1
    assert sorted((s["user_key"], s["backed_up_role"], s["current_role"], s["missing"])
                  for s in mismatch["details"]["sample"]) == sorted(
        (k, backed_up_role[k], None, True) for k in (deleted, unlogged))
    assert result["user_count_unchanged"]["status"] == "fail"
    assert result["user_count_unchanged"]["details"]["live_users"] == 127


def test_sessions_added_after_the_backup_are_not_missing_ones(rolemig_db):
    bid = backup(rolemig_db)
    migrate(rolemig_db)
    backed_up = one(rolemig_db, "SELECT count(*) AS n FROM auth.sessions")["n"]
    added = [r["id"] for r in rows(rolemig_db, "INSERT INTO auth.sessions (user_id) SELECT id FROM auth.users "
                                               "ORDER BY id LIMIT 2 RETURNING id::text AS id")]
    sessions = post(rolemig_db, bid)["sessions_intact"]
    assert sessions["status"] == "pass"
    assert sessions["details"] == {"backup_id": bid, "backed_up_sessions": backed_up, "missing": 0, "sample": []}
    # one session added and one backed-up session gone: as many sessions as backed up, one missing
    rolemig_db.execute("DELETE FROM auth.sessions WHERE id = %s::uuid", (added[0],))
    gone = one(rolemig_db, "DELETE FROM auth.sessions WHERE id = (SELECT min(id::text)::uuid FROM auth.sessions "
                           "WHERE id <> %s::uuid) RETURNING id::text, user_id::text", (added[1],))
    assert one(rolemig_db, "SELECT count(*) AS n FROM auth.sessions")["n"] == backed_up
    sessions = post(rolemig_db, bid)["sessions_intact"]
    assert sessions["status"] == "fail" and sessions["details"]["missing"] == 1
    assert sessions["details"]["sample"] == [{"session_key": gone["id"], "user_key": gone["user_id"]}]


# ---------------------------------------------------------- authentication ----

def test_authentication_passes_before_and_after_migration(rolemig_db):
    before = auth(rolemig_db, 200)
    assert {k: v["status"] for k, v in before.items()} == dict.fromkeys(AUTH_CHECKS, "pass")
    assert before["own_profile_readable"]["details"]["users_tested"] == 130
    # staff roles see every profile (a policy names them), everybody else only their own
    assert before["rls_applies"]["details"]["users_filtered"] == 80
    backup(rolemig_db)
    migrate(rolemig_db)
    after = auth(rolemig_db, 200)
    assert {k: v["status"] for k, v in after.items()} == dict.fromkeys(AUTH_CHECKS, "pass")
    # after the migration: owner, admin and moderator read all
    # (from super_admin, admin, org_owner, org_admin, support_agent)
    assert after["rls_applies"]["details"]["users_filtered"] == 130 - 70


def test_sample_has_every_role_and_the_callers_role_is_restored(rolemig_db):
    result = auth(rolemig_db, 1)
    assert result["own_profile_readable"]["details"]["users_tested"] == 13  # at least one per role
    state = one(rolemig_db, "SELECT current_user::text AS u, current_setting('role') AS r, "
                            "coalesce(current_setting('request.jwt.claims', true), '') AS c")
    assert state == {"u": rolemig_db.info.user, "r": "none", "c": ""}
    prosecdef = one(rolemig_db, """SELECT p.prosecdef FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'migration_validation' AND p.proname = 'test_user_authentication'""")["prosecdef"]
    assert prosecdef is False


def test_sample_smaller_than_the_users_is_exact_and_covers_every_role(rolemig_db):
    # 20 of 130 users: drawn from a Bernoulli sample, one per role, the rest random
    result = auth(rolemig_db, 20)
    assert result["own_profile_readable"]["details"]["users_tested"] == 20
    assert {k: v["status"] for k, v in result.items()} == dict.fromkeys(AUTH_CHECKS, "pass")
    # a role the Bernoulli draw cannot see (1 of 131 users) is still logged in as
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    rare = one(rolemig_db, "SELECT id::text AS k FROM public.user_profiles ORDER BY id LIMIT 1")["k"]
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'auditor' WHERE id = %s", (rare,))
    tested = auth(rolemig_db, 1)["own_profile_readable"]["details"]["users_tested"]
    assert tested == 14  # one per role: 13 legacy roles and the rare one


def test_policy_that_locks_users_out_fails_naming_them(rolemig_db):
    rolemig_db.execute("""CREATE POLICY "lockout" ON public.user_profiles AS RESTRICTIVE FOR SELECT TO authenticated
                          USING (public.current_user_role() IS DISTINCT FROM 'author')""")
    authors = {r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles WHERE role = 'author'")}
    result = auth(rolemig_db, 200)
    profile = result["own_profile_readable"]
    assert profile["status"] == "fail"
    assert profile["details"]["failing_roles"] == ["author"] and profile["details"]["failing_users"] == 10
    assert {s["key"] for s in profile["details"]["sample"]} == authors
    assert all(s["rows_seen"] == 0 for s in profile["details"]["sample"])
    assert result["own_sessions_readable"]["status"] == "pass"


def test_sessions_hidden_by_policy_fail_own_sessions_readable(rolemig_db):
    rolemig_db.execute("""CREATE POLICY "no viewers" ON auth.sessions AS RESTRICTIVE FOR SELECT TO authenticated
                          USING ((auth.jwt() ->> 'user_role') <> 'viewer')""")
    viewers_with_sessions = one(rolemig_db, """SELECT count(DISTINCT p.id) AS n FROM public.user_profiles p
        JOIN auth.sessions s ON s.user_id = p.id WHERE p.role = 'viewer'""")["n"]
    assert viewers_with_sessions > 0
    result = auth(rolemig_db, 200)["own_sessions_readable"]
    assert result["status"] == "fail" and result["details"]["failing_roles"] == ["viewer"]
    assert result["details"]["failing_users"] == viewers_with_sessions


def test_everyone_seeing_every_profile_warns(rolemig_db):
    rolemig_db.execute("""CREATE POLICY "open" ON public.user_profiles FOR SELECT TO authenticated USING (true)""")
    result = auth(rolemig_db, 200)["rls_applies"]
    assert result["status"] == "warn"
    assert result["details"]["users_filtered"] == 0
    assert {s["role"] for s in result["details"]["sample"]} <= {"manager", "team_lead", "editor", "author",
                                                                "contributor", "moderator", "viewer", "billing_admin"}


def test_bad_sample_size_raises(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="sample size must be a positive integer, got 0"):
        auth(rolemig_db, 0)


# --------------------------------------------------------------------- RLS ----

def test_rls_disabled_table_fails_rls_enabled(rolemig_db):
    assert checks(rolemig_db, "migration_validation.validate_rls_policies()")["rls_enabled"]["status"] == "pass"
    rolemig_db.execute("ALTER TABLE public.documents DISABLE ROW LEVEL SECURITY")
    result = checks(rolemig_db, "migration_validation.validate_rls_policies()")["rls_enabled"]
    assert result["status"] == "fail"
    assert result["details"]["sample"] == [{"schema": "public", "table": "documents", "policies": 6}]


def test_policy_roles_match_phase(rolemig_db):
    def phase(p):
        return checks(rolemig_db, "migration_validation.validate_rls_policies(%s)", (p,))["policy_roles_match_phase"]

    assert phase("pre")["status"] == "pass"
    assert phase("expand")["status"] == "pass"
    assert phase("auto")["details"]["phase"] == "pre"
    before_post = phase("post")
    assert before_post["status"] == "fail"
    assert {s["role_name"] for s in before_post["details"]["sample"]} <= LEGACY_ONLY
    assert "billing: billing staff" in before_post["details"]["policies"]

    # the first batch (walk order: physical) must hold a user whose new role is new-only
    # (super_admin -> owner); the UPDATE gives the row a new place, CLUSTER puts it first again
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'super_admin' "
                       "WHERE id = (SELECT id FROM public.user_profiles ORDER BY id LIMIT 1)")
    rolemig_db.execute("CLUSTER public.user_profiles USING user_profiles_pkey")
    backup(rolemig_db)
    migrate(rolemig_db, p_batch_size=7, p_max_batches=1)
    assert phase("auto")["details"]["phase"] == "expand"
    migrate(rolemig_db)
    assert phase("auto")["details"]["phase"] == "post"
    assert phase("post")["status"] == "pass"
    after_pre = phase("pre")
    assert after_pre["status"] == "fail" and {s["role_name"] for s in after_pre["details"]["sample"]} == {"owner"}
    with pytest.raises(psycopg.errors.RaiseException, match="unknown RLS validation phase 'during'"):
        phase("during")


# ------------------------------------------------------------------ runner ----

def test_comprehensive_validation_stores_every_row(rolemig_db):
    result = rows(rolemig_db, "SELECT * FROM migration_validation.run_comprehensive_validation('pre_migration')")
    assert [r["validation_type"] for r in result][:8] == ["pre_migration_state"] * 8
    assert {r["validation_type"] for r in result} == {"pre_migration_state", "rls_policies", "backup", "security"}
    run = result[0]["details"]["validation_run"]
    stored = rows(rolemig_db, """SELECT validation_type, check_name, status FROM migration_validation.validation_results
                                  WHERE validation_run = %s ORDER BY result_id""", (run,))
    assert stored == [{k: r[k] for k in ("validation_type", "check_name", "status")} for r in result]

    backup(rolemig_db)
    migrate(rolemig_db)
    result = rows(rolemig_db, "SELECT * FROM migration_validation.run_comprehensive_validation('post_migration')")
    assert {r["validation_type"] for r in result} == {"post_migration_state", "rls_policies", "authentication",
                                                      "security"}
    assert all(r["status"] == "pass" for r in result), [r for r in result if r["status"] != "pass"]


def test_post_rollback_validation(rolemig_db):
    result = rows(rolemig_db, "SELECT * FROM migration_validation.run_comprehensive_validation('post_rollback')")
    assert result[0]["check_name"] == "rollback_recorded" and result[0]["status"] == "fail"
    bid = backup(rolemig_db)
    migrate(rolemig_db)
    one(rolemig_db, "SELECT * FROM migration_backup.execute_rollback(%s)", (bid,))
    result = rows(rolemig_db, "SELECT * FROM migration_validation.run_comprehensive_validation('post_rollback')")
    assert {r["validation_type"] for r in result} == {"rollback", "rls_policies", "authentication", "security"}
    assert all(r["status"] == "pass" for r in result), [r for r in result if r["status"] != "pass"]


def test_unknown_phase_raises(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="unknown validation phase 'mid_migration'") as err:
        rolemig_db.execute("SELECT * FROM migration_validation.run_comprehensive_validation('mid_migration')")
    assert "pre_migration, post_migration, post_rollback" in err.value.diag.message_detail
