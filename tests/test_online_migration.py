"""online-migration.sql: per-batch commits, resume without double apply, one run at a time,
lock_timeout + retry on policy DDL, expand then contract with access kept, sessions untouched.

Real PostgreSQL through ``rolemig_db`` (demo app, infrastructure, 130 users). Expected states are
computed in Python from the rows read before the run (the mapping applied by hand), not by the
project's SQL.
"""

from __future__ import annotations

import psycopg
import pytest

from pytest_rolemig import resources
from pytest_rolemig.mapping import load_mapping
from pytest_rolemig.online import Background, act_as, call, wait_blocked, wait_until
from pytest_rolemig.roundtrip.oracle import take_snapshot
from pytest_rolemig.target import Target

MAPPING = load_mapping(resources.demo_mapping()).mapping
TARGET = Target()


def dsn_of(server, conn) -> str:
    return server.dsn(conn.info.dbname)


def backup(conn) -> str:
    return conn.execute("SELECT backup_id FROM migration_backup.create_comprehensive_backup()").fetchone()[0]


def roles(conn) -> dict[str, str]:
    return {k: r for k, r in conn.execute("SELECT id::text, role FROM public.user_profiles")}


def moving(before: dict[str, str]) -> set[str]:
    """The users whose legacy role maps to another name: those a migration moves and logs."""
    return {k for k, r in before.items() if MAPPING[r] != r}


def done_log(conn) -> dict[str, int]:
    """How many times each user was logged as handled by a completed batch."""
    return {k: n for k, n in conn.execute(
        """SELECT l.user_key, count(*) FROM migration_tracking.migration_log l
           JOIN migration_tracking.migration_batch b USING (batch_id)
           WHERE b.status = 'completed' AND l.status IN ('migrated', 'unchanged') GROUP BY 1""")}


def policy_text(conn, name: str) -> str:
    conn.execute("SET search_path = pg_catalog, pg_temp")
    try:
        return conn.execute("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy WHERE polname = %s",
                            (name,)).fetchone()[0]
    finally:
        conn.execute("RESET search_path")


def test_expand_in_committed_batches_resumes_without_double_apply(rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    first = call(rolemig_db, p_batch_size=20, p_max_batches=2)
    assert first["status"] == "partial" and first["batches"] == 2
    middle = roles(rolemig_db)
    moved = {k for k in before if middle[k] != before[k]}
    assert 0 < len(moved) <= 40 and len(done_log(rolemig_db)) == 40

    second = call(rolemig_db, p_batch_size=20)
    assert second["status"] == "completed" and second["pending"] == 0
    # the batches shared one prepared statement, which the procedure drops at its end
    assert rolemig_db.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
    after = roles(rolemig_db)
    assert after == {k: MAPPING[r] for k, r in before.items()}
    log = done_log(rolemig_db)
    # every user who moves logged once (an identity-mapped user is never batched nor logged)
    assert set(log) == moving(before) and set(log.values()) == {1}, "a user was handled twice or not at all"
    sizes = [n for (n,) in rolemig_db.execute(
        """SELECT count(*) FROM migration_tracking.migration_log l JOIN migration_tracking.migration_batch b
           USING (batch_id) WHERE b.details ->> 'phase' = 'migrate' GROUP BY b.batch_id""")]
    assert sorted(sizes) == [20, 20, 20, 20], sizes  # 80 users move, 20 per batch, each its own commit

    snap = take_snapshot(rolemig_db, TARGET)
    batches = rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_batch").fetchone()[0]
    again = call(rolemig_db, p_batch_size=20)
    assert again["batches"] == 0 and again["policies_changed"] == 0 and again["status"] == "completed"
    assert take_snapshot(rolemig_db, TARGET) == snap
    assert rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_batch").fetchone()[0] == batches


def test_refuses_without_backup_and_inside_a_transaction(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="no valid backup"):
        call(rolemig_db)
    backup(rolemig_db)
    rolemig_db.autocommit = False
    try:
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            rolemig_db.execute("CALL migration_control.run_online_migration()")
        rolemig_db.rollback()
    finally:
        rolemig_db.autocommit = True
    held = rolemig_db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
    assert held == 0 and set(roles(rolemig_db).values()) - set(MAPPING.values()), "nothing may have moved"


def test_refuses_users_with_unknown_roles_naming_them(rolemig_db):
    backup(rolemig_db)
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'ghost' WHERE role = 'author'")
    before = roles(rolemig_db)
    with pytest.raises(psycopg.errors.RaiseException, match=r"users have unknown roles: 'ghost' \(10 users\)"):
        call(rolemig_db)
    assert roles(rolemig_db) == before
    assert rolemig_db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0


def test_contract_refused_while_users_are_pending(rolemig_db):
    backup(rolemig_db)
    call(rolemig_db, p_batch_size=20, p_max_batches=1)
    with pytest.raises(psycopg.errors.RaiseException, match="still on a legacy role"):
        call(rolemig_db, p_phase="contract")
    assert rolemig_db.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0


def test_second_run_is_refused_while_one_runs(rolemig_server, rolemig_db):
    backup(rolemig_db)
    dsn = dsn_of(rolemig_server, rolemig_db)
    first_user = rolemig_db.execute(
        """SELECT min(id::text) FROM public.user_profiles
           WHERE role IN (SELECT legacy_role FROM migration_control.role_mapping WHERE new_role <> legacy_role)"""
    ).fetchone()[0]
    with psycopg.connect(dsn) as blocker:  # holds a row the run must change: it waits and retries
        blocker.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (first_user,))
        run = Background(dsn, "CALL migration_control.run_online_migration(p_batch_size => 20, "
                              "p_lock_timeout_ms => 50, p_max_retries => 1000)")
        wait_blocked(rolemig_db, run.pid)
        with pytest.raises(psycopg.errors.RaiseException, match="another role migration is running") as err:
            call(rolemig_db)
        assert str(run.pid) in (err.value.diag.message_detail or "")
        with pytest.raises(psycopg.errors.RaiseException, match="another role migration is running"):
            rolemig_db.execute("SELECT * FROM migration_control.execute_role_migration()")
        blocker.rollback()
    run.join()
    assert run.error is None and run.result[0][0]["status"] == "completed"


def test_batch_locks_only_the_users_whose_role_changes(rolemig_server, rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    call(rolemig_db, p_batch_size=20, p_max_batches=1)  # constraints and policies done: no table lock left
    kept = min(k for k, r in before.items() if MAPPING[r] == r and k not in done_log(rolemig_db))  # 'editor'
    with psycopg.connect(dsn_of(rolemig_server, rolemig_db)) as app:  # the application holds that row
        app.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (kept,))
        result = call(rolemig_db, p_batch_size=20, p_lock_timeout_ms=50, p_max_retries=0)
        app.rollback()
    assert result["status"] == "completed" and result["lock_retries"] == 0
    assert roles(rolemig_db) == {k: MAPPING[r] for k, r in before.items()}
    log = done_log(rolemig_db)
    assert set(log) == moving(before) and set(log.values()) == {1}


def test_role_changed_by_the_application_while_the_batch_waits_is_not_overwritten(rolemig_server, rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    call(rolemig_db, p_batch_size=20, p_max_batches=1)  # constraints and policies done: no table lock left
    victim = min(k for k, r in before.items() if MAPPING[r] != r and k not in done_log(rolemig_db))
    changed_to = "support_agent" if before[victim] != "support_agent" else "team_lead"
    dsn = dsn_of(rolemig_server, rolemig_db)
    with psycopg.connect(dsn) as app:
        app.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (victim,))
        run = Background(dsn, "CALL migration_control.run_online_migration(p_batch_size => 20, "
                              "p_lock_timeout_ms => 60000)")  # waits for the row instead of retrying
        assert wait_blocked(rolemig_db, run.pid).startswith("Lock:")
        app.execute("UPDATE public.user_profiles SET role = %s WHERE id = %s", (changed_to, victim))
        app.commit()
    run.join()
    assert run.error is None, run.error
    assert run.result[0][0]["status"] == "completed" and run.result[0][0]["pending"] == 0
    # the batch skipped the row it no longer matched; the second pass moved the application's value
    assert roles(rolemig_db) == {**{k: MAPPING[r] for k, r in before.items()}, victim: MAPPING[changed_to]}
    log = done_log(rolemig_db)
    assert set(log) == moving(before) and set(log.values()) == {1}
    assert rolemig_db.execute("""SELECT old_role FROM migration_tracking.migration_log
                                 WHERE user_key = %s""", (victim,)).fetchall() == [(changed_to,)]


def test_policy_ddl_times_out_and_retries_without_blocking_the_app(rolemig_server, rolemig_db):
    backup(rolemig_db)
    dsn = dsn_of(rolemig_server, rolemig_db)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as app:
        holder.execute("LOCK TABLE public.billing_accounts IN ACCESS SHARE MODE")  # a long reader
        run = Background(dsn, "CALL migration_control.run_online_migration(p_lock_timeout_ms => 50, "
                              "p_max_retries => 1000)")
        wait_until(rolemig_db, """SELECT true FROM pg_stat_activity
                                  WHERE pid = %s AND wait_event = 'PgSleep'""", (run.pid,))  # a backoff
        # the DDL is retrying, not queued: the application still reads the table meanwhile
        wait_blocked(rolemig_db, run.pid)
        assert app.execute("SELECT count(*) FROM public.billing_accounts").fetchone() is not None
        assert "'billing_admin'" in policy_text(rolemig_db, "billing: billing staff")
        assert "'owner'" not in policy_text(rolemig_db, "billing: billing staff")
        holder.rollback()
    run.join()
    assert run.error is None, run.error
    result = run.result[0][0]
    assert result["status"] == "completed" and result["lock_retries"] >= 1
    assert "'admin'::text" in policy_text(rolemig_db, "billing: billing staff")


def _access(conn, user_id: str, claim_role: str | None = None) -> dict[str, int]:
    """What one authenticated user reaches: billing rows, profiles, own sessions, updatable documents."""
    with conn.transaction(force_rollback=True):
        act_as(conn, user_id, claim_role)
        return {
            "billing": conn.execute("SELECT count(*) FROM public.billing_accounts").fetchone()[0],
            "profiles": conn.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0],
            "own_sessions": conn.execute("SELECT count(*) FROM auth.sessions").fetchone()[0],
            "doc_updates": len(conn.execute("UPDATE public.documents SET title = title RETURNING id").fetchall()),
        }


def test_expand_then_contract_keeps_access_and_sessions(rolemig_db):
    db = rolemig_db
    db.execute("INSERT INTO public.billing_accounts (card_last4) VALUES ('4242')")
    author = db.execute("SELECT id FROM public.user_profiles WHERE role = 'editor' LIMIT 1").fetchone()[0]
    db.execute("INSERT INTO public.documents (author_id, title, status) VALUES (%s, 'd', 'published')", (author,))
    billing = db.execute("SELECT id::text FROM public.user_profiles WHERE role = 'billing_admin' LIMIT 1").fetchone()[0]
    logged_in = db.execute("""SELECT p.id::text FROM public.user_profiles p JOIN auth.sessions s ON s.user_id = p.id
                              WHERE p.role = 'support_agent' LIMIT 1""").fetchone()[0]
    backup(db)
    before_snap = take_snapshot(db, TARGET)
    # a support agent's old token says support_agent; a refreshed one will say moderator
    legacy_token = _access(db, logged_in, "support_agent")
    billing_before = _access(db, billing)
    assert billing_before["billing"] == 1 and legacy_token["doc_updates"] == 1 and legacy_token["own_sessions"] >= 1

    call(db, p_batch_size=25)  # expand: users moved, policies accept both names
    # billing_admin -> admin also gains user_profiles:SELECT: declared in [access_changes]
    declared = {**billing_before, "profiles": 130}
    assert _access(db, billing) == declared
    assert _access(db, logged_in, "support_agent") == legacy_token
    assert _access(db, logged_in, "moderator") == legacy_token
    expanded = take_snapshot(db, TARGET)
    assert expanded.sessions == before_snap.sessions

    changes = db.execute("""SELECT count(*) FROM migration_tracking.rls_policy_changes
                            WHERE run_id LIKE 'expand:%%'""").fetchone()[0]
    assert changes > 0
    call(db, p_phase="contract")
    assert _access(db, billing) == declared
    assert _access(db, logged_in, "moderator") == legacy_token
    assert _access(db, logged_in, "support_agent")["doc_updates"] == 0, "contract must drop the legacy name"
    after = take_snapshot(db, TARGET)
    assert after.sessions == before_snap.sessions
    assert not [p for p, v in after.policies.items() if any("support_agent" in str(x) for x in v)]
    # the end state is exactly the offline path's: contract restarted from the pre-expand text
    offline = db.execute("""SELECT count(*) FROM migration_tracking.rls_policy_changes c
                            WHERE c.run_id LIKE 'contract:%%'
                              AND c.new_using IS DISTINCT FROM migration_control.rewrite_role_literals(
                                  (SELECT e.old_using FROM migration_tracking.rls_policy_changes e
                                   WHERE e.run_id LIKE 'expand:%%' AND e.policy_name = c.policy_name
                                   ORDER BY e.change_id DESC LIMIT 1), 'migrate')""").fetchone()[0]
    assert offline == 0


def test_expand_role_literals_forms(rolemig_db):
    def expand(expr):
        return rolemig_db.execute("SELECT migration_control.expand_role_literals(%s)", (expr,)).fetchone()[0]

    assert expand("(r = 'org_owner'::text)") == "(r = ANY (ARRAY['org_owner'::text, 'owner'::text]))"
    assert expand("(r <> 'author'::text)") == "(r <> ALL (ARRAY['author'::text, 'editor'::text]))"
    listed = expand("(r = ANY (ARRAY['billing_admin'::text, 'viewer'::text]))")
    assert listed == "(r = ANY (ARRAY['billing_admin'::text, 'admin'::text, 'viewer'::text]))"
    assert expand(listed) == listed, "expanding twice must change nothing"
    assert expand("((auth.jwt() ->> 'user_role'::text) = 'viewer'::text)") == \
        "((auth.jwt() ->> 'user_role'::text) = 'viewer'::text)"
    with pytest.raises(psycopg.errors.RaiseException, match="cannot expand role literal"):
        expand("('org_owner'::text = r)")
