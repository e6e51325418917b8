"""migration-rollback-system.sql: rollbacks restore exactly, refuse what they must, survive failures.

A migration is simulated with plain SQL (widen the role CHECK, ``UPDATE ... FROM
migration_control.role_mapping``, ``ALTER POLICY`` on the literal role lists, narrow the CHECK), so
these tests do not depend on ``execute_role_migration``. "Exactly restored" is judged by the
test's own snapshot (ordered ``to_jsonb`` dumps, ``pg_policies``, ``pg_constraint``, RLS flags)
taken before the migration, not only by ``validate_rollback_success``.
"""

from __future__ import annotations

import re

import psycopg
import pytest
from sql_helpers import one, rows, skip_unless_server_has_libxml

ROLLBACK_ID = re.compile(r"^rb_\d{8}_\d{6}_[0-9a-f]{6}$")
LEGACY = ["super_admin", "admin", "org_owner", "org_admin", "billing_admin", "manager", "team_lead",
          "editor", "author", "contributor", "moderator", "support_agent", "viewer"]
NEW = ["owner", "admin", "manager", "editor", "moderator", "viewer"]
ROLLBACK_CHECKS = ["rollback_recorded", "profiles_roles_restored", "migration_undone", "profiles_content",
                   "profiles_count", "sessions_intact", "policies_restored", "rls_flags_restored",
                   "role_constraints_restored"]


def policies(conn):
    conn.execute("SET search_path = pg_catalog")
    result = rows(conn, """
        SELECT schemaname::text AS s, tablename::text AS t, policyname::text AS name, permissive, cmd,
               ARRAY(SELECT r::text FROM unnest(roles) r ORDER BY 1) AS roles, qual, with_check
          FROM pg_policies WHERE schemaname IN ('public', 'auth') ORDER BY 1, 2, 3""")
    conn.execute("RESET search_path")
    return result


def snapshot(conn):
    """Everything a rollback must restore, read independently of the project's functions."""
    return {
        "profiles": [r["j"] for r in rows(conn, "SELECT to_jsonb(p) AS j FROM public.user_profiles p ORDER BY p.id")],
        "sessions": [r["j"] for r in rows(conn, "SELECT to_jsonb(s) AS j FROM auth.sessions s ORDER BY s.id")],
        "policies": policies(conn),
        "checks": rows(conn, """SELECT conname::text, pg_get_constraintdef(oid) AS def FROM pg_constraint
                                 WHERE conrelid = 'public.user_profiles'::regclass AND contype = 'c' ORDER BY 1"""),
        "rls": rows(conn, """SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity
                               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                              WHERE n.nspname IN ('public', 'auth') AND c.relkind = 'r' ORDER BY 1, 2"""),
    }


def profiles_copy(conn, backup_id):
    """The qualified name of the typed copy holding a backup's profile rows."""
    name = one(conn, "SELECT profiles_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (backup_id,))["c"]
    return f'migration_backup."{name}"'


def set_role_check(conn, roles):
    conn.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT IF EXISTS user_profiles_role_check")
    listed = ", ".join(f"'{r}'" for r in roles)
    conn.execute(f"ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check CHECK (role IN ({listed}))")


def simulate_migration(conn, limit=None, rewrite_policies=True):
    """What a role migration does, in plain SQL. Returns the number of policies rewritten."""
    set_role_check(conn, LEGACY + ["owner"])
    conn.execute("""UPDATE public.user_profiles AS t SET role = m.new_role
                      FROM migration_control.role_mapping AS m
                     WHERE m.legacy_role = t.role
                       AND t.id IN (SELECT p.id FROM public.user_profiles p ORDER BY p.id LIMIT %s)""", (limit,))
    if limit is not None or not rewrite_policies:
        return 0
    mapping = {r["legacy_role"]: r["new_role"] for r in rows(conn, "SELECT * FROM migration_control.role_mapping")}
    rewritten = 0
    for p in policies(conn):
        new = {}
        for clause in ("qual", "with_check"):
            if p[clause] is not None:
                new[clause] = re.sub(r"'(\w+)'::text", lambda m: f"'{mapping.get(m.group(1), m.group(1))}'::text",
                                     p[clause])
        if all(new[c] == p[c] for c in new):
            continue
        sql = f'ALTER POLICY "{p["name"]}" ON {p["s"]}.{p["t"]}'
        sql += f" USING ({new['qual']})" if "qual" in new else ""
        sql += f" WITH CHECK ({new['with_check']})" if "with_check" in new else ""
        conn.execute(sql)
        conn.execute("""INSERT INTO migration_tracking.rls_policy_changes
                        (run_id, schema_name, table_name, policy_name, change_type, old_using, new_using)
                        VALUES ('run_sim', %s, %s, %s, 'rewrite', %s, %s)""",
                     (p["s"], p["t"], p["name"], p["qual"], new.get("qual")))
        rewritten += 1
    set_role_check(conn, NEW)
    return rewritten


def backup(conn):
    result = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup()")
    assert result["status"] == "completed"
    return result["backup_id"]


def rollback(conn, backup_id, reason="test"):
    return one(conn, "SELECT * FROM migration_backup.execute_rollback(%s, %s)", (backup_id, reason))


def emergency(conn, backup_id=None):
    return one(conn, "SELECT * FROM migration_backup.emergency_rollback(%s)", (backup_id,))


def check_rollback(conn, backup_id, rollback_id=None):
    return {r["check_name"]: r for r in rows(
        conn, "SELECT * FROM migration_backup.validate_rollback_success(%s, %s)", (backup_id, rollback_id))}


def statuses(checks):
    return {k: v["status"] for k, v in checks.items()}


def key_of(conn, email_prefix):
    return one(conn, "SELECT id::text AS k FROM public.user_profiles WHERE email LIKE %s ORDER BY id LIMIT 1",
               (email_prefix + "%",))["k"]


def user_with_role(conn, role, offset=0):
    return one(conn, "SELECT id::text AS k FROM public.user_profiles WHERE role = %s ORDER BY id OFFSET %s LIMIT 1",
               (role, offset))["k"]


# ------------------------------------------------------------- revert ----

def test_revert_after_full_migration_restores_exactly(rolemig_db):
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    changed = one(rolemig_db, """SELECT count(*) AS n FROM public.user_profiles p
                                   JOIN migration_control.role_mapping m ON m.legacy_role = p.role
                                  WHERE m.new_role <> m.legacy_role""")["n"]
    rewritten = simulate_migration(rolemig_db)
    assert rewritten > 0 and snapshot(rolemig_db) != before

    result = rollback(rolemig_db, bid, "full revert")
    assert ROLLBACK_ID.match(result["rollback_id"])
    assert (result["status"], result["profiles_restored"], result["sessions_restored"], result["conflicts"]) == (
        "completed", changed, 0, 0)
    assert result["policies_restored"] == rewritten
    assert snapshot(rolemig_db) == before
    assert statuses(check_rollback(rolemig_db, bid, result["rollback_id"])) == {c: "pass" for c in ROLLBACK_CHECKS}
    log = one(rolemig_db, "SELECT * FROM migration_backup.rollback_log")
    assert (log["mode"], log["reason"], log["backup_id"], log["error"]) == ("revert", "full revert", bid, None)
    restored = rows(rolemig_db, """SELECT DISTINCT change_type FROM migration_tracking.rls_policy_changes
                                    WHERE run_id = %s""", (result["rollback_id"],))
    assert restored == [{"change_type": "restore"}]


def test_revert_after_partial_migration_restores_exactly(rolemig_db):
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    simulate_migration(rolemig_db, limit=40)
    assert snapshot(rolemig_db)["profiles"] != before["profiles"]
    result = rollback(rolemig_db, bid)
    assert result["status"] == "completed" and 0 < result["profiles_restored"] <= 40
    assert snapshot(rolemig_db) == before
    assert set(statuses(check_rollback(rolemig_db, bid)).values()) == {"pass"}


def test_revert_is_compare_and_swap(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db, rewrite_policies=False)  # CHECK stays wide: legacy + owner
    # after the migration the application promotes one user and edits another one's name
    promoted = user_with_role(rolemig_db, "editor", offset=3)  # editor by mapping, now set to a third role
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'org_admin' WHERE id = %s", (promoted,))
    renamed = user_with_role(rolemig_db, "owner")
    rolemig_db.execute("UPDATE public.user_profiles SET full_name = 'Renamed' WHERE id = %s", (renamed,))
    backed_role = one(rolemig_db, """SELECT role FROM migration_backup.user_profiles_complete_backup
                                      WHERE user_key = %s""", (promoted,))["role"]

    result = rollback(rolemig_db, bid)
    assert (result["status"], result["conflicts"]) == ("completed", 1)
    assert one(rolemig_db, "SELECT role FROM public.user_profiles WHERE id = %s", (promoted,))["role"] == "org_admin"
    kept = one(rolemig_db, "SELECT role, full_name FROM public.user_profiles WHERE id = %s", (renamed,))
    assert kept["full_name"] == "Renamed" and kept["role"] in ("super_admin", "org_owner")  # role reverted only
    conflicts = one(rolemig_db, "SELECT conflicts FROM migration_backup.rollback_log")["conflicts"]
    assert conflicts == [{"user_key": promoted, "backup_role": backed_role, "current_role": "org_admin",
                          "reason": "role changed after backup"}]
    checks = check_rollback(rolemig_db, bid)
    assert checks["profiles_roles_restored"]["status"] == "pass"
    assert checks["profiles_roles_restored"]["details"]["conflicts_excluded"] == 1
    assert checks["profiles_content"]["status"] == "warn"  # revert mode: the app's edits are kept
    differing = {d["user_key"]: d["columns"] for d in checks["profiles_content"]["details"]["sample"]}
    assert differing == {promoted: ["role"], renamed: ["full_name"]}

    # failing side: a reverted user whose role then moves again is reported by key
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE id = %s", (renamed,))
    checks = check_rollback(rolemig_db, bid)
    assert checks["profiles_roles_restored"]["status"] == "fail"
    assert [s["user_key"] for s in checks["profiles_roles_restored"]["details"]["sample"]] == [renamed]


def test_revert_keeps_conflicting_rows_writable(rolemig_db):
    bid = backup(rolemig_db)  # CHECK: the legacy roles
    simulate_migration(rolemig_db, rewrite_policies=False)  # CHECK stays wide: legacy + owner
    # after the migration the application makes an editor an owner: a role the backed-up CHECK rejects
    promoted = user_with_role(rolemig_db, "editor", offset=2)
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'owner' WHERE id = %s", (promoted,))

    warnings = []
    rolemig_db.add_notice_handler(lambda d: warnings.append(d.message_primary))
    result = rollback(rolemig_db, bid)
    assert (result["status"], result["conflicts"]) == ("completed", 1)
    assert any("user_profiles_role_check restored accepting also owner" in w for w in warnings), warnings
    check = one(rolemig_db, """SELECT convalidated, pg_get_constraintdef(oid) AS def FROM pg_constraint
                               WHERE conname = 'user_profiles_role_check'""")
    assert check["convalidated"], check  # NOT VALID would reject every later write to the row
    # the application can still write the conflicting row, whatever column it changes
    rolemig_db.execute("UPDATE public.user_profiles SET full_name = 'Still editable' WHERE id = %s", (promoted,))
    # the check accepts the backed-up roles and the conflicting one, and nothing else
    other = user_with_role(rolemig_db, "viewer")
    for role in [*LEGACY, "owner"]:
        rolemig_db.execute("UPDATE public.user_profiles SET role = %s WHERE id = %s", (role, other))
    with pytest.raises(psycopg.errors.CheckViolation):
        rolemig_db.execute("UPDATE public.user_profiles SET role = 'intern' WHERE id = %s", (other,))
    # the rollback's validation says the constraint was widened, as a warning, not a failure
    constraints = check_rollback(rolemig_db, bid)["role_constraints_restored"]
    assert constraints["status"] == "warn" and constraints["details"]["widened_for_conflicts"] == 1, constraints
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check, "
                       "ADD CONSTRAINT user_profiles_role_check CHECK (role <> 'intern')")
    assert check_rollback(rolemig_db, bid)["role_constraints_restored"]["status"] == "fail"


def test_revert_refuses_unknown_backup_and_changes_nothing(rolemig_db):
    backup(rolemig_db)
    simulate_migration(rolemig_db)
    during = snapshot(rolemig_db)
    with pytest.raises(psycopg.errors.RaiseException, match="backup 'bk_nope' does not exist") as exc:
        rollback(rolemig_db, "bk_nope")
    assert exc.value.diag.message_hint and exc.value.diag.message_detail
    assert snapshot(rolemig_db) == during
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.rollback_log")["n"] == 0


def test_revert_refuses_backup_failing_validation_and_changes_nothing(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db)
    during = snapshot(rolemig_db)
    copy = profiles_copy(rolemig_db, bid)
    rolemig_db.execute(f"UPDATE {copy} SET phone = '555' WHERE id = (SELECT min(id::text)::uuid FROM {copy})")
    with pytest.raises(psycopg.errors.RaiseException, match=f"backup {bid} failed validation") as exc:
        rollback(rolemig_db, bid)
    assert "profiles_checksum" in exc.value.diag.message_detail
    assert snapshot(rolemig_db) == during
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.rollback_log")["n"] == 0
    listed = {b["backup_id"]: b["restorable"] for b in
              rows(rolemig_db, "SELECT * FROM migration_backup.list_available_backups()")}
    assert listed == {bid: False}


def test_error_during_restore_undoes_everything_and_is_logged(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db)
    during = snapshot(rolemig_db)
    victim = user_with_role(rolemig_db, "owner")
    rolemig_db.execute(f"""
        CREATE FUNCTION public.block_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = '{victim}' THEN RAISE EXCEPTION 'blocked by test trigger'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER block_one BEFORE UPDATE ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.block_one();""")
    result = rollback(rolemig_db, bid)
    assert (result["status"], result["profiles_restored"], result["policies_restored"]) == ("failed", 0, 0)
    assert snapshot(rolemig_db) == during  # roles, narrowed CHECK (dropped then undone), policies
    log = one(rolemig_db, "SELECT * FROM migration_backup.rollback_log")
    assert log["status"] == "failed" and "blocked by test trigger" in log["error"]
    assert log["rollback_id"] == result["rollback_id"] and log["completed_at"] is not None
    checks = check_rollback(rolemig_db, bid)
    assert checks["rollback_recorded"]["status"] == "fail"
    assert checks["profiles_roles_restored"]["status"] == "fail"
    # once the obstacle is gone, the same backup rolls back
    rolemig_db.execute("DROP TRIGGER block_one ON public.user_profiles")
    assert rollback(rolemig_db, bid)["status"] == "completed"
    assert set(statuses(check_rollback(rolemig_db, bid)).values()) == {"pass"}


def test_revert_drops_created_policy_and_restores_rls_flags(rolemig_db):
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    simulate_migration(rolemig_db)
    rolemig_db.execute("CREATE POLICY \"documents: owners read all\" ON public.documents FOR SELECT "
                       "TO authenticated USING (public.current_user_role() = 'owner')")
    rolemig_db.execute("""INSERT INTO migration_tracking.rls_policy_changes
                          (run_id, schema_name, table_name, policy_name, change_type, new_using)
                          VALUES ('run_sim', 'public', 'documents', 'documents: owners read all', 'create', 'x')""")
    rolemig_db.execute("DROP POLICY \"tickets: own\" ON public.support_tickets")
    rolemig_db.execute("ALTER POLICY \"own sessions\" ON auth.sessions TO authenticated, anon")
    rolemig_db.execute("ALTER TABLE public.billing_accounts DISABLE ROW LEVEL SECURITY")
    rolemig_db.execute("ALTER TABLE public.projects FORCE ROW LEVEL SECURITY")
    checks = statuses(check_rollback(rolemig_db, bid))
    assert (checks["policies_restored"], checks["rls_flags_restored"], checks["role_constraints_restored"]) == (
        "fail", "fail", "fail")

    result = rollback(rolemig_db, bid)
    assert result["status"] == "completed"
    assert snapshot(rolemig_db) == before
    changes = rows(rolemig_db, """SELECT policy_name, change_type FROM migration_tracking.rls_policy_changes
                                   WHERE run_id = %s ORDER BY change_id""", (result["rollback_id"],))
    kinds = {c["policy_name"]: c["change_type"] for c in changes}
    assert kinds["documents: owners read all"] == "drop"
    assert kinds["tickets: own"] == kinds["own sessions"] == "restore"
    assert set(statuses(check_rollback(rolemig_db, bid)).values()) == {"pass"}


def test_revert_repairs_tracking(rolemig_db):
    bid = backup(rolemig_db)
    batch = one(rolemig_db, "SELECT migration_tracking.start_migration_batch('m', 10, 'run_t') AS b")["b"]
    user = user_with_role(rolemig_db, "author")
    rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, %s, 'author', 'editor')", (batch, user))
    simulate_migration(rolemig_db)  # the batch is left 'running', as after a crash
    result = rollback(rolemig_db, bid)
    assert result["status"] == "completed"
    assert one(rolemig_db, "SELECT status FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["status"] == "rolled_back"
    logged = rows(rolemig_db, "SELECT user_key, old_role, new_role, status, batch_id "
                              "FROM migration_tracking.migration_log ORDER BY log_id")
    # every user whose role the rollback changed (logged by the migration or not) gets a row,
    # filed under the rollback that wrote it, not under the migration batch the user was in
    assert [r for r in logged if r["user_key"] == user][-1] == {
        "user_key": user, "old_role": "editor", "new_role": "author", "status": "rolled_back",
        "batch_id": result["rollback_id"]}
    reverted = [r for r in logged if r["status"] == "rolled_back"]
    assert len(reverted) == result["profiles_restored"]
    assert {r["batch_id"] for r in reverted} == {result["rollback_id"]}


def test_revert_refused_while_a_migration_holds_the_lock(rolemig_db, rolemig_server):
    bid = backup(rolemig_db)
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname)) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtext('pytest_rolemig.migration'))")
        with pytest.raises(psycopg.errors.RaiseException, match="another role migration is running"):
            rollback(rolemig_db, bid)
        with pytest.raises(psycopg.errors.RaiseException, match="another role migration is running"):
            emergency(rolemig_db, bid)
        other.rollback()
    assert rollback(rolemig_db, bid)["status"] == "completed"


# ---------------------------------------------------------- emergency ----

def test_emergency_restores_half_done_migration_with_broken_tracking(rolemig_db):
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    batch = one(rolemig_db, "SELECT migration_tracking.start_migration_batch('m', 40, 'run_e') AS b")["b"]
    simulate_migration(rolemig_db, limit=60)
    # tracking is garbage: the log of the batch deleted, nonsense rows written, the batch left running
    rolemig_db.execute("DELETE FROM migration_tracking.migration_log")
    rolemig_db.execute("""INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status)
                          VALUES (%s, 'not-a-user', 'x', 'y', 'failed')""", (batch,))
    # the application kept writing meanwhile: edits, a deleted profile, a changed and a revoked session
    rolemig_db.execute("UPDATE public.user_profiles SET metadata = '{\"x\": 1}', last_seen_at = now() "
                       "WHERE id IN (SELECT id FROM public.user_profiles ORDER BY id DESC LIMIT 5)")
    gone = user_with_role(rolemig_db, "viewer")
    rolemig_db.execute("DELETE FROM public.user_profiles WHERE id = %s", (gone,))
    sessions = rows(rolemig_db, "SELECT id::text AS id FROM auth.sessions ORDER BY id LIMIT 2")
    rolemig_db.execute("UPDATE auth.sessions SET user_agent = 'changed', ip = '10.0.0.1' WHERE id = %s",
                       (sessions[0]["id"],))
    rolemig_db.execute("DELETE FROM auth.sessions WHERE id = %s", (sessions[1]["id"],))

    result = emergency(rolemig_db, bid)
    assert (result["status"], result["sessions_restored"]) == ("completed", 0)
    after = snapshot(rolemig_db)
    assert after["profiles"] == before["profiles"]  # every column, the deleted row re-inserted
    assert after["policies"] == before["policies"] and after["checks"] == before["checks"]
    # sessions are never written: the application's change stays, the revoked one stays revoked
    expected_sessions = [
        {**s, "user_agent": "changed", "ip": "10.0.0.1"} if s["id"] == sessions[0]["id"] else s
        for s in before["sessions"] if s["id"] != sessions[1]["id"]
    ]
    assert after["sessions"] == expected_sessions
    assert one(rolemig_db, "SELECT status FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["status"] == "rolled_back"
    checks = check_rollback(rolemig_db, bid, result["rollback_id"])
    assert checks["rollback_recorded"]["details"]["mode"] == "emergency"
    sessions_check = checks.pop("sessions_intact")
    assert sessions_check["status"] == "warn"
    assert sessions_check["details"]["revoked_sample"] == [sessions[1]["id"]]
    assert sessions_check["details"]["differs_sample"] == [sessions[0]["id"]]
    assert set(statuses(checks).values()) == {"pass"}


def test_emergency_validation_fails_on_any_content_difference(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db, limit=10)
    result = emergency(rolemig_db)
    assert result["status"] == "completed" and result["profiles_restored"] > 0
    assert check_rollback(rolemig_db, bid)["profiles_content"]["status"] == "pass"
    key = key_of(rolemig_db, "")
    rolemig_db.execute("UPDATE public.user_profiles SET locale = 'zz-test' WHERE id = %s", (key,))
    rolemig_db.execute("UPDATE auth.sessions SET tag = 'changed-by-test' "
                       "WHERE id = (SELECT min(id::text)::uuid FROM auth.sessions)")
    checks = check_rollback(rolemig_db, bid)
    assert checks["profiles_content"]["status"] == "fail"
    assert checks["profiles_content"]["details"]["sample"] == [{"user_key": key, "columns": ["locale"]}]
    # a session changed after the backup is the application's business: reported, not failed
    assert checks["sessions_intact"]["status"] == "warn"
    assert checks["sessions_intact"]["details"]["content_differs"] == 1


def test_emergency_default_uses_newest_intact_backup(rolemig_db):
    older = backup(rolemig_db)
    before = snapshot(rolemig_db)
    rolemig_db.execute("UPDATE public.user_profiles SET display_name = 'between backups'")
    newer = backup(rolemig_db)
    rolemig_db.execute("UPDATE migration_backup.rls_policies_backup SET roles = '{anon}' WHERE backup_id = %s",
                       (newer,))
    listed = {b["backup_id"]: b["restorable"] for b in
              rows(rolemig_db, "SELECT * FROM migration_backup.list_available_backups()")}
    assert listed == {older: True, newer: False}
    result = emergency(rolemig_db)
    assert one(rolemig_db, "SELECT backup_id FROM migration_backup.rollback_log WHERE rollback_id = %s",
               (result["rollback_id"],))["backup_id"] == older
    assert snapshot(rolemig_db)["profiles"] == before["profiles"]


def test_emergency_refuses_unknown_corrupt_or_missing_backups(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="no intact completed backup"):
        emergency(rolemig_db)
    with pytest.raises(psycopg.errors.RaiseException, match="backup 'bk_missing' does not exist"):
        emergency(rolemig_db, "bk_missing")
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db)
    during = snapshot(rolemig_db)
    copy = profiles_copy(rolemig_db, bid)
    rolemig_db.execute(f"DELETE FROM {copy} WHERE id = (SELECT min(id::text)::uuid FROM {copy})")
    with pytest.raises(psycopg.errors.RaiseException, match=f"backup {bid} is not intact") as exc:
        emergency(rolemig_db, bid)
    assert "profiles_count" in exc.value.diag.message_detail
    assert snapshot(rolemig_db) == during
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_backup.rollback_log")["n"] == 0


def test_emergency_ignores_live_only_warnings(rolemig_db):
    bid = backup(rolemig_db)
    late = one(rolemig_db, """WITH u AS (INSERT INTO auth.users (email) VALUES ('late@example.org') RETURNING id)
        INSERT INTO public.user_profiles (id, email, role) SELECT id, 'late@example.org', 'viewer' FROM u
        RETURNING id::text AS id""")["id"]
    simulate_migration(rolemig_db)
    assert emergency(rolemig_db, bid)["status"] == "completed"
    # the user created after the backup is neither deleted nor touched beyond what the backup knows
    assert one(rolemig_db, "SELECT role FROM public.user_profiles WHERE id = %s", (late,))["role"] == "viewer"
    checks = check_rollback(rolemig_db, bid)
    assert checks["profiles_count"]["status"] == "warn"
    assert checks["profiles_count"]["details"]["not_in_backup"] == 1


# --------------------------------------------------------- validation ----

def test_validate_rollback_success_fails_when_nothing_was_rolled_back(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db)
    checks = check_rollback(rolemig_db, bid)
    assert list(checks) == ROLLBACK_CHECKS
    got = statuses(checks)
    assert got["rollback_recorded"] == "fail" and checks["rollback_recorded"]["details"]["found"] is False
    assert got["profiles_roles_restored"] == "fail"
    assert len(checks["profiles_roles_restored"]["details"]["sample"]) == 20
    assert got["policies_restored"] == "fail" and got["role_constraints_restored"] == "fail"
    assert got["sessions_intact"] == "pass" and got["profiles_count"] == "pass"
    assert statuses(check_rollback(rolemig_db, "bk_unknown")) == {"rollback_recorded": "fail"}


def test_validate_rollback_samples_what_it_counts_and_nothing_when_all_is_well(rolemig_db):
    bid = backup(rolemig_db)
    simulate_migration(rolemig_db)
    result = rollback(rolemig_db, bid)
    checks = check_rollback(rolemig_db, bid, result["rollback_id"])
    assert set(statuses(checks).values()) == {"pass"}
    assert checks["profiles_count"]["details"]["sample"] == []
    assert checks["sessions_intact"]["details"]["revoked_sample"] == []
    assert checks["sessions_intact"]["details"]["differs_sample"] == []
    # after the rollback: two backed-up users with sessions (a quarter of the seeded users have
    # none) deleted with their sessions, and another user's session changed
    with_sessions = ("SELECT p.id::text AS id FROM public.user_profiles p "
                     "WHERE EXISTS (SELECT 1 FROM auth.sessions s WHERE s.user_id = p.id) "
                     "ORDER BY p.id LIMIT 2")
    gone = [r["id"] for r in rows(rolemig_db, with_sessions)]
    revoked = [r["id"] for r in rows(rolemig_db, "SELECT id::text AS id FROM auth.sessions "
                                                "WHERE user_id::text = ANY (%s) ORDER BY id", (gone,))]
    assert revoked
    changed = one(rolemig_db, "SELECT min(id::text) AS id FROM auth.sessions "
                              "WHERE NOT (user_id::text = ANY (%s))", (gone,))["id"]
    rolemig_db.execute("DELETE FROM auth.users WHERE id::text = ANY (%s)", (gone,))
    rolemig_db.execute("UPDATE auth.sessions SET tag = 'changed' WHERE id = %s", (changed,))
    checks = check_rollback(rolemig_db, bid, result["rollback_id"])
    assert checks["profiles_count"]["status"] == "fail"
    assert checks["profiles_count"]["details"]["missing_from_live"] == 2
    assert checks["profiles_count"]["details"]["sample"] == gone
    sessions = checks["sessions_intact"]["details"]
    assert (sessions["revoked_after_backup"], sessions["revoked_sample"]) == (len(revoked), revoked)
    assert (sessions["content_differs"], sessions["differs_sample"]) == (1, [changed])


def test_validate_rollback_rejects_a_rollback_of_another_backup(rolemig_db):
    first = backup(rolemig_db)
    second = backup(rolemig_db)
    result = rollback(rolemig_db, second)
    checks = check_rollback(rolemig_db, first, result["rollback_id"])
    assert checks["rollback_recorded"]["status"] == "fail"
    assert checks["rollback_recorded"]["details"]["rollback_backup_id"] == second
    assert check_rollback(rolemig_db, second, result["rollback_id"])["rollback_recorded"]["status"] == "pass"


def test_rollback_works_with_empty_search_path(rolemig_db):
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    simulate_migration(rolemig_db)
    rolemig_db.execute("SET search_path = ''")
    assert rollback(rolemig_db, bid)["status"] == "completed"
    rolemig_db.execute("RESET search_path")
    assert snapshot(rolemig_db) == before


ODD_SETTINGS = {"TimeZone": "Asia/Kathmandu", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
                "extra_float_digits": "0", "bytea_output": "escape", "xmloption": "document"}


def use_odd_settings(conn):
    """Set, for the rest of the session, settings that change how rows are rendered as text."""
    for name, value in ODD_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


@pytest.mark.parametrize("with_xml", [False, True], ids=["without-xml", "with-xml"])
def test_session_settings_change_neither_the_backup_nor_its_checks(rolemig_db, with_xml):
    """A backup taken, and a rollback checked, under any session settings restores the same bytes.

    to_jsonb renders timestamptz in the session's TimeZone, intervals in its IntervalStyle,
    float8 with extra_float_digits and bytea in bytea_output, and xml is read back by
    xmloption: a backup taken with extra_float_digits = 0 kept 0.3 for 0.1 + 0.2, checks run
    in another time zone saw every timestamp as changed, and an emergency rollback with
    xmloption = document failed on an xml fragment. The xml column is a case of its own: a
    server built without libxml (the embedded binaries) refuses xml values, and skips it.
    """
    conn = rolemig_db
    if with_xml:
        skip_unless_server_has_libxml(conn)
    conn.execute("ALTER TABLE public.user_profiles ADD COLUMN score float8, ADD COLUMN idle interval, "
                 "ADD COLUMN blob bytea" + (", ADD COLUMN doc xml" if with_xml else ""))
    # the last user: simulate_migration(limit=40) leaves their row alone
    key = one(conn, "SELECT id::text AS k FROM public.user_profiles ORDER BY id DESC LIMIT 1")["k"]
    conn.execute("UPDATE public.user_profiles SET score = 0.1::float8 + 0.2::float8, "
                 "idle = '-1 day +2 hours', blob = '\\x00ff5c'"
                 + (", doc = 'text and <b>a fragment</b>'" if with_xml else "") + " WHERE id = %s", (key,))
    read_back = "SELECT score::text AS s, idle::text AS i FROM public.user_profiles WHERE id = %s"
    exact = one(conn, read_back, (key,))
    before = snapshot(conn)
    use_odd_settings(conn)
    bid = backup(conn)
    conn.execute("RESET ALL")
    assert statuses({r["check_name"]: r for r in rows(
        conn, "SELECT * FROM migration_backup.validate_backup_completeness(%s)", (bid,))}) == {
        "backup_exists": "pass", "backup_status": "pass",
        "profiles_count": "pass", "profiles_checksum": "pass",
        "sessions_count": "pass", "sessions_checksum": "pass", "policies_count": "pass",
        "policies_checksum": "pass", "profiles_keys_consistent": "pass", "covers_live_users": "pass"}

    simulate_migration(conn, limit=40)
    # the only change of this row: a value whose text, rounded to 15 digits, is the backed-up one's
    conn.execute("UPDATE public.user_profiles SET score = 0.1::float8 + 0.2::float8 + 1e-16 WHERE id = %s",
                 (key,))
    use_odd_settings(conn)
    result = emergency(conn, bid)
    conn.execute("RESET ALL")
    assert result["status"] == "completed"
    assert one(conn, read_back, (key,)) == exact
    assert snapshot(conn) == before
    assert set(statuses(check_rollback(conn, bid, result["rollback_id"])).values()) == {"pass"}
    use_odd_settings(conn)
    assert set(statuses(check_rollback(conn, bid, result["rollback_id"])).values()) == {"pass"}


# ------------------------------------------------- with the real migration ----

def _has_migration(conn):
    return one(conn, """SELECT count(*) AS n FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = 'migration_control' AND p.proname = 'execute_role_migration'""")["n"] > 0


@pytest.mark.parametrize("max_batches", [None, 1])
def test_rollback_of_execute_role_migration_restores_exactly(rolemig_db, max_batches):
    if not _has_migration(rolemig_db):
        pytest.skip("migration_control.execute_role_migration is not installed")
    bid = backup(rolemig_db)
    before = snapshot(rolemig_db)
    run = one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration(p_batch_size => 50, "
                          "p_backup_id => %s, p_max_batches => %s)", (bid, max_batches))
    assert run["status"] in ("completed", "partial"), run  # partial: stopped after p_max_batches
    assert snapshot(rolemig_db) != before
    result = rollback(rolemig_db, bid)
    assert (result["status"], result["conflicts"]) == ("completed", 0)
    assert snapshot(rolemig_db) == before
    assert set(statuses(check_rollback(rolemig_db, bid)).values()) == {"pass"}
    reverted = one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_log "
                               "WHERE status = 'rolled_back'")["n"]
    assert reverted == result["profiles_restored"] > 0
