"""role-migration.sql: batched, logged, resumable role migration with policy rewrite.

Real PostgreSQL through the plugin's ``rolemig_db`` fixture (infrastructure installed, demo
mapping, 130 users: 10 per legacy role, no backup). Expected states are computed by independent
queries on the live tables and catalogs.
"""

from __future__ import annotations

import psycopg
import pytest
from sql_helpers import one, rows

from pytest_rolemig import resources
from pytest_rolemig.mapping import load_mapping

MAPPING = load_mapping(resources.demo_mapping()).mapping
NEW_ROLES = ["owner", "admin", "manager", "editor", "moderator", "viewer"]
LEGACY_ONLY = {"super_admin", "org_owner", "org_admin", "billing_admin", "team_lead", "author", "contributor",
               "support_agent"}


def empty_sessions_copy(conn, backup_id):
    """Corrupt a backup: delete every row of its sessions copy."""
    name = one(conn, "SELECT sessions_copy AS c FROM migration_backup.backup_log WHERE backup_id = %s",
               (backup_id,))["c"]
    conn.execute(f'DELETE FROM migration_backup."{name}"')


def backup(conn):
    return one(conn, "SELECT backup_id FROM migration_backup.create_comprehensive_backup()")["backup_id"]


def migrate(conn, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    return one(conn, f"SELECT * FROM migration_control.execute_role_migration({args})", kw)


def assert_refused(conn, match, **kw):
    with pytest.raises(psycopg.errors.RaiseException, match=match) as err:
        migrate(conn, **kw)
    assert err.value.diag.message_hint
    return err.value.diag


def roles(conn):
    return {r["id"]: r["role"] for r in rows(conn, "SELECT id::text, role FROM public.user_profiles")}


def policies(conn):
    conn.execute("SET search_path = pg_catalog")
    result = {r["policyname"]: (r["qual"], r["with_check"]) for r in rows(conn, "SELECT * FROM pg_policies")}
    conn.execute("RESET search_path")
    return result


def role_check(conn):
    return one(conn, """SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint
                         WHERE conrelid = 'public.user_profiles'::regclass
                           AND conname = 'user_profiles_role_check'""")["d"]


def expand(conn, expr):
    return conn.execute("SELECT migration_control.expand_role_literals(%s)", (expr,)).fetchone()[0]


def rewrite(conn, expr, mode="migrate"):
    return one(conn, "SELECT migration_control.rewrite_role_literals(%s, %s) AS r", (expr, mode))["r"]


# ---------------------------------------------------------------- rewrite ----

@pytest.mark.parametrize(("expr", "expected"), [
    ("(public.current_user_role() = ANY (ARRAY['billing_admin'::text, 'org_owner'::text, 'super_admin'::text]))",
     "(public.current_user_role() = ANY (ARRAY['admin'::text, 'owner'::text, 'owner'::text]))"),
    ("((public.current_user_role() = 'org_owner'::text) OR (public.current_user_role() = 'super_admin'::text))",
     "((public.current_user_role() = 'owner'::text) OR (public.current_user_role() = 'owner'::text))"),
    ("public.has_any_role(ARRAY['super_admin'::text, 'admin'::text])",
     "public.has_any_role(ARRAY['owner'::text, 'admin'::text])"),
    # the claim name 'user_role' is not a role
    ("((auth.jwt() ->> 'user_role'::text) = ANY (ARRAY['moderator'::text, 'support_agent'::text]))",
     "((auth.jwt() ->> 'user_role'::text) = ANY (ARRAY['moderator'::text, 'moderator'::text]))"),
    # a quote inside a quoted identifier does not start a literal; doubled quotes survive
    ("(\"it's 'author'\" = 'author'::text) AND (x = 'it''s author'::text)",
     "(\"it's 'author'\" = 'editor'::text) AND (x = 'it''s author'::text)"),
    ("(status = 'published'::text)", "(status = 'published'::text)"),
    ("(role = 'team_lead'::character varying)", "(role = 'manager'::character varying)"),
])
def test_rewrite_role_literals(rolemig_db, expr, expected):
    assert rewrite(rolemig_db, expr) == expected


def test_rewrite_modes_and_chains(rolemig_db):
    # a legacy name that is also a new name but maps elsewhere: 'migrate' rewrites it, 'legacy_only' keeps it
    rolemig_db.execute("UPDATE migration_control.role_mapping SET new_role = 'owner' WHERE legacy_role = 'admin'")
    expr = "(r = ANY (ARRAY['admin'::text, 'org_admin'::text]))"
    assert rewrite(rolemig_db, expr) == "(r = ANY (ARRAY['owner'::text, 'admin'::text]))"  # no chaining admin->owner
    assert rewrite(rolemig_db, expr, "legacy_only") == "(r = ANY (ARRAY['admin'::text, 'admin'::text]))"
    assert rewrite(rolemig_db, None) is None
    with pytest.raises(psycopg.errors.RaiseException, match="unknown rewrite mode 'all'"):
        rewrite(rolemig_db, expr, "all")


# ------------------------------------------------------------ refusals ----

def test_refuses_without_a_valid_backup(rolemig_db):
    before = roles(rolemig_db)
    diag = assert_refused(rolemig_db, "no valid backup: refusing to migrate without one")
    assert "prepare_for_migration" in diag.message_hint
    assert_refused(rolemig_db, "backup bk_nope does not exist or is not completed", p_backup_id="bk_nope")
    bid = backup(rolemig_db)
    empty_sessions_copy(rolemig_db, bid)
    assert_refused(rolemig_db, f"backup {bid} does not validate: .*sessions_count", p_backup_id=bid)
    assert_refused(rolemig_db, "no valid backup")
    assert roles(rolemig_db) == before
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_batch")["n"] == 0


def test_refuses_unknown_and_unmapped_roles(rolemig_db):
    backup(rolemig_db)
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    rolemig_db.execute("""UPDATE public.user_profiles SET role = 'ghost'
                           WHERE id = (SELECT min(id::text)::uuid FROM public.user_profiles)""")
    assert_refused(rolemig_db, r"users have unknown roles: 'ghost' \(1 users\)")
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE role = 'ghost'")
    rolemig_db.execute("ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check "
                       "CHECK (role IN ('super_admin', 'admin', 'org_owner', 'org_admin', 'billing_admin', 'manager', "
                       "'team_lead', 'editor', 'author', 'contributor', 'moderator', 'support_agent', 'viewer', "
                       "'auditor'))")
    assert_refused(rolemig_db, r"unmapped legacy roles: auditor \(found in check\)")
    assert one(rolemig_db, "SELECT count(*) AS n FROM public.user_profiles WHERE role = 'owner'")["n"] == 0


def test_refuses_while_another_migration_holds_the_lock(rolemig_db, rolemig_server):
    backup(rolemig_db)
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname)) as other:
        other.execute("SELECT pg_advisory_xact_lock(hashtext('pytest_rolemig.migration'))")
        assert_refused(rolemig_db, "another role migration is running")
        other.rollback()
    assert migrate(rolemig_db)["status"] == "completed"


def test_refuses_bad_arguments(rolemig_db):
    assert_refused(rolemig_db, "batch size must be a positive integer, got 0", p_batch_size=0)
    assert_refused(rolemig_db, "max batches must be a positive integer or NULL, got -1", p_max_batches=-1)
    assert_refused(rolemig_db, "migration name must not be empty", p_migration_name=" ")


# ------------------------------------------------------------ migration ----

def test_partial_run_migrates_exactly_two_batches_then_resumes(rolemig_db):
    bid = backup(rolemig_db)
    before = roles(rolemig_db)
    policies_before = policies(rolemig_db)
    # a plain table is walked in physical order (ctid), and a batch holds users who move (an
    # identity-mapped user, 'admin' -> 'admin', is never read, locked or logged): the first 14
    # such users as they lie in the table
    first_keys = [r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles ORDER BY ctid")
                  if MAPPING[before[r["id"]]] != before[r["id"]]][:14]

    first = migrate(rolemig_db, p_batch_size=7, p_max_batches=2)
    assert first["status"] == "partial" and first["batches"] == 2 and first["policies_rewritten"] == 0
    assert (first["users_migrated"], first["users_unchanged"]) == (14, 0)  # unchanged: counted at the end
    # the first 14 users in walk order, each changed exactly as the mapping says
    logged = rows(rolemig_db, "SELECT user_key, old_role, new_role, status FROM migration_tracking.migration_log "
                              "ORDER BY user_key")
    assert [r["user_key"] for r in logged] == sorted(first_keys)
    after = roles(rolemig_db)
    for r in logged:
        assert r["old_role"] == before[r["user_key"]]
        assert r["new_role"] == MAPPING[r["old_role"]] == after[r["user_key"]]
        assert r["status"] == "migrated" and r["old_role"] != r["new_role"]
    untouched = {k: v for k, v in before.items() if k not in first_keys}
    assert {k: v for k, v in after.items() if k not in first_keys} == untouched
    batches = rows(rolemig_db, """SELECT run_id, batch_number, status, first_key, last_key, processed_users, details
                                   FROM migration_tracking.migration_batch ORDER BY batch_number""")
    assert [(b["batch_number"], b["status"], b["processed_users"]) for b in batches] == [
        (1, "completed", 7), (2, "completed", 7)]
    assert {b["run_id"] for b in batches} == {first["run_id"]}
    assert (batches[0]["first_key"], batches[0]["last_key"], batches[1]["first_key"], batches[1]["last_key"]) == (
        first_keys[0], first_keys[6], first_keys[7], first_keys[13])
    assert batches[0]["details"]["backup_id"] == bid
    assert batches[0]["details"]["constraints_widened"][0]["constraint"] == "user_profiles_role_check"
    # mixed data: legacy and new roles allowed; every policy accepts both names (expand form),
    # so a user keeps their access whichever name they hold between two committed calls
    assert "'owner'::text" in role_check(rolemig_db) and "'super_admin'::text" in role_check(rolemig_db)
    # the new roles first: every row a batch writes holds one, and PostgreSQL tests the list in order
    assert role_check(rolemig_db).startswith(
        "CHECK ((role = ANY (ARRAY[" + ", ".join(f"'{r}'::text" for r in NEW_ROLES) + ", ")
    assert policies(rolemig_db) == {name: tuple(expand(rolemig_db, e) for e in pair)
                                    for name, pair in policies_before.items()}
    assert policies(rolemig_db) != policies_before

    second = migrate(rolemig_db, p_batch_size=7)
    assert second["status"] == "completed" and second["run_id"] != first["run_id"]
    assert first["users_migrated"] + second["users_migrated"] == 80
    assert first["users_unchanged"] + second["users_unchanged"] == 50
    assert second["batches"] == 10 and second["policies_rewritten"] == 8  # 66 users, 7 a batch
    per_user = rows(rolemig_db, "SELECT user_key, count(*) AS n FROM migration_tracking.migration_log GROUP BY 1")
    assert len(per_user) == 80 and {r["n"] for r in per_user} == {1}
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}
    assert role_check(rolemig_db) == ("CHECK ((role = ANY (ARRAY['owner'::text, 'admin'::text, 'manager'::text, "
                                      "'editor'::text, 'moderator'::text, 'viewer'::text])))")
    # contracted from the text before the expand: the same policies as a one-call migration writes
    assert policies(rolemig_db) == {name: tuple(rewrite(rolemig_db, e) for e in pair)
                                    for name, pair in policies_before.items()}

    third = migrate(rolemig_db)
    assert (third["status"], third["batches"], third["users_migrated"], third["policies_rewritten"]) == (
        "completed", 0, 0, 0)


def test_a_batch_crosses_a_long_stretch_without_pending_users(rolemig_db):
    # 4,000 users after the seeded ones, identity-mapped ('admin' -> 'admin', never pending) but
    # every 400th, who moves: the walk crosses the stretches between them in growing windows,
    # and each batch must still hold exactly its 7 users, in walk order
    rolemig_db.execute("""
        WITH u AS (INSERT INTO auth.users (email)
                   SELECT format('stretch%s@example.org', i) FROM generate_series(1, 4000) AS i RETURNING id, email)
        INSERT INTO public.user_profiles (id, email, role)
        SELECT id, email, CASE WHEN substring(email FROM 'stretch(\\d+)@')::int % 400 = 0 THEN 'super_admin'
                               ELSE 'admin' END
        FROM u""")
    backup(rolemig_db)
    before = roles(rolemig_db)
    keys = [r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles ORDER BY ctid")
            if MAPPING[before[r["id"]]] != before[r["id"]]]
    assert len(keys) == 90
    done = migrate(rolemig_db, p_batch_size=7)
    assert (done["status"], done["users_migrated"], done["batches"]) == ("completed", 90, 13)
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}
    batches = rows(rolemig_db, """SELECT first_key, last_key, processed_users FROM migration_tracking.migration_batch
                                   WHERE details ->> 'phase' = 'migrate' ORDER BY batch_number""")
    assert [b["processed_users"] for b in batches] == [7] * 12 + [6]
    assert [(b["first_key"], b["last_key"]) for b in batches] == [
        (keys[i], keys[min(i + 6, len(keys) - 1)]) for i in range(0, 90, 7)]


def prepared_batch_statements(conn):
    return [r["name"] for r in rows(conn, "SELECT name FROM pg_prepared_statements "
                                          "WHERE name LIKE 'rolemig_batch_%' ORDER BY name")]


def test_batches_share_one_prepared_statement_and_the_walk_leaves_none(rolemig_db):
    backup(rolemig_db)
    name = one(rolemig_db, "SELECT migration_control.batch_statement_name("
                           "migration_control.batch_context(7)) AS n")["n"]
    calls = """SELECT * FROM migration_control.migrate_batch('m', '-infinity', %s, 7, %s,
                                                            migration_control.batch_context(7))"""
    with rolemig_db.transaction(force_rollback=True):  # two batches by hand, undone after
        rolemig_db.execute("SELECT migration_control.adjust_role_constraints('widen')")
        batch = one(rolemig_db, "SELECT migration_tracking.start_migration_batch('m', 7, 'r', '{}') AS b")["b"]
        first = one(rolemig_db, calls, (None, batch))
        second = one(rolemig_db, calls, (first["after_position"], batch))
        assert (first["migrated"], second["migrated"]) == (7, 7)
    assert prepared_batch_statements(rolemig_db) == [name]  # planned once, run by both; outlives the transaction
    rolemig_db.execute("SELECT migration_control.forget_batch_statement(migration_control.batch_context(7))")
    assert prepared_batch_statements(rolemig_db) == []
    done = migrate(rolemig_db, p_batch_size=7)
    assert done["status"] == "completed" and done["users_migrated"] == 80
    assert prepared_batch_statements(rolemig_db) == []  # execute_role_migration's walk drops its own


def test_a_prepared_statement_that_takes_the_batch_statements_name_is_replaced(rolemig_db):
    # code running in the migrating session (a trigger of a SECURITY DEFINER function, say) could
    # prepare a statement under the batch statement's name to have the migration run it: the
    # batches check its text and prepare their own
    backup(rolemig_db)
    before = roles(rolemig_db)
    name = one(rolemig_db, "SELECT migration_control.batch_statement_name("
                           "migration_control.batch_context(7)) AS n")["n"]
    rolemig_db.execute(f'''PREPARE "{name}"(text, timestamptz, text, bigint, text, text) AS
                           SELECT 0::bigint, NULL::text, NULL::text, NULL::text, 0::bigint''')
    done = migrate(rolemig_db, p_batch_size=7)
    assert (done["status"], done["users_migrated"]) == ("completed", 80)
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}


def test_resume_goes_on_from_the_last_batch_and_wraps_around_once(rolemig_db):
    bid = backup(rolemig_db)
    before = roles(rolemig_db)
    # walk order: physical, users who move only
    keys = [r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles ORDER BY ctid")
            if MAPPING[before[r["id"]]] != before[r["id"]]]
    first = migrate(rolemig_db, p_batch_size=10, p_max_batches=3)
    assert first["status"] == "partial" and first["users_migrated"] == 30
    # behind the resume point, the application puts a finished user back on a legacy role
    straggler = keys[5]
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'super_admin' WHERE id = %s", (straggler,))

    second = migrate(rolemig_db, p_batch_size=10, p_max_batches=1)
    assert second["status"] == "partial"
    batch = one(rolemig_db, "SELECT first_key, last_key FROM migration_tracking.migration_batch "
                            "WHERE run_id = %s", (second["run_id"],))
    # the next ten users after the resume point, not the straggler behind it
    assert (batch["first_key"], batch["last_key"]) == (keys[30], keys[39])

    last = migrate(rolemig_db, p_batch_size=10)
    assert last["status"] == "completed"
    assert roles(rolemig_db) == {k: MAPPING["super_admin" if k == straggler else v] for k, v in before.items()}
    straggler_batches = rows(rolemig_db, """SELECT b.run_id, l.old_role, l.new_role
                                            FROM migration_tracking.migration_log l
                                            JOIN migration_tracking.migration_batch b USING (batch_id)
                                            WHERE l.user_key = %s ORDER BY l.log_id""", (straggler,))
    assert [(r["old_role"], r["new_role"]) for r in straggler_batches][-1] == ("super_admin", "owner")
    assert straggler_batches[-1]["run_id"] == last["run_id"]
    assert bid


def pending(conn, name="role_system_migration"):
    """pending_count, and the per-user predicate it replaces counted row by row, for the same state."""
    cutoff = one(conn, """SELECT coalesce(max(started_at), '-infinity')::text AS c
                            FROM migration_backup.rollback_log WHERE status = 'completed'""")["c"]
    predicate = one(conn, "SELECT migration_control.pending_users_sql() AS p")["p"]
    predicate = predicate.replace("$1", "%(name)s::text").replace("$2", "%(cutoff)s::timestamptz")
    args = {"name": name, "cutoff": cutoff}
    counted = one(conn, "SELECT migration_control.pending_count(%(name)s, %(cutoff)s::timestamptz) AS n",
                  args)["n"]
    probed = one(conn, f"SELECT count(*) AS n FROM public.user_profiles t WHERE {predicate}", args)["n"]
    return counted, probed


def test_pending_count_follows_batches_application_writes_and_rollbacks(rolemig_db):
    bid = backup(rolemig_db)
    # identity-mapped users ('admin' -> 'admin') never have to move: 80 of the 130 do
    assert pending(rolemig_db) == (80, 80)
    assert migrate(rolemig_db, p_batch_size=7, p_max_batches=2)["status"] == "partial"
    assert pending(rolemig_db) == (66, 66)
    # the application puts a migrated user back on a legacy role: pending again
    done = one(rolemig_db, """SELECT user_key FROM migration_tracking.migration_log
                               WHERE status = 'migrated' ORDER BY user_key LIMIT 1""")["user_key"]
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'team_lead' WHERE id = %s", (done,))
    assert pending(rolemig_db) == (67, 67)
    # whoever this migration moved holds a new role, which no mapping moves on (no chain here):
    # pending for any migration, the same users
    assert pending(rolemig_db, "another_migration") == (67, 67)
    assert migrate(rolemig_db)["status"] == "completed"
    assert pending(rolemig_db) == (0, 0)
    rolled = one(rolemig_db, "SELECT status FROM migration_backup.execute_rollback(%s)", (bid,))
    assert rolled["status"] == "completed"
    # logged before the rollback: to do again, everybody on a legacy role that moves (the user the
    # application put on 'team_lead' kept the migration's 'manager' through the revert, unless
    # their backed-up role maps there too)
    on_moving = sum(1 for r in roles(rolemig_db).values() if MAPPING.get(r, r) != r)
    assert on_moving >= 79 and pending(rolemig_db) == (on_moving, on_moving)


def test_resume_trusts_the_verified_backup_and_rollback_checks_it_again(rolemig_db):
    bid = backup(rolemig_db)
    assert migrate(rolemig_db, p_batch_size=10, p_max_batches=1, p_backup_id=bid)["status"] == "partial"
    empty_sessions_copy(rolemig_db, bid)
    # the migration verified the backup when it started with it; a resume does not re-read it all
    assert migrate(rolemig_db, p_batch_size=10, p_max_batches=1, p_backup_id=bid)["status"] == "partial"
    assert migrate(rolemig_db, p_batch_size=10, p_max_batches=1)["status"] == "partial"
    # a migration that has not used the backup yet refuses it, and so does a rollback
    assert_refused(rolemig_db, f"backup {bid} does not validate: .*sessions_count",
                   p_migration_name="another_migration", p_backup_id=bid)
    with pytest.raises(psycopg.errors.RaiseException, match="does not validate|not intact|checksum|sessions_count"):
        rolemig_db.execute("SELECT * FROM migration_backup.execute_rollback(%s, 'test')", (bid,))


def test_policies_are_rewritten_and_logged(rolemig_db):
    backup(rolemig_db)
    before = policies(rolemig_db)
    result = migrate(rolemig_db)
    after = policies(rolemig_db)
    # the demo calls the role helpers as (SELECT ...) initPlans, once per statement
    assert after["billing: billing staff"][0] == (
        "(( SELECT public.current_user_role() AS current_user_role) = ANY "
        "(ARRAY['admin'::text, 'owner'::text, 'owner'::text]))")
    assert after["orgs: owner updates"][0] == (
        "((( SELECT public.current_user_role() AS current_user_role) = 'owner'::text) OR "
        "(( SELECT public.current_user_role() AS current_user_role) = 'owner'::text))")
    assert after["documents: moderators update"][0] == (
        "((auth.jwt() ->> 'user_role'::text) = "
        "ANY (ARRAY['moderator'::text, 'moderator'::text, 'admin'::text, 'owner'::text]))")
    assert after["documents: writers insert"][1].endswith(
        "ARRAY['editor'::text, 'editor'::text, 'editor'::text, 'manager'::text, 'manager'::text])))")
    assert after["projects: owner or management"][0] == after["projects: owner or management"][1]
    changed = {name for name in before if before[name] != after[name]}
    assert len(changed) == 8 and {n for n in before if n not in changed} >= {"profiles: read own", "own sessions",
                                                                             "documents: no deletes by viewers"}
    # logged twice per policy: expanded before the first user moved, contracted at the end
    logged = rows(rolemig_db, "SELECT * FROM migration_tracking.rls_policy_changes ORDER BY change_id")
    expanded = [r for r in logged if r["run_id"] == "expand:" + result["run_id"]]
    contracted = [r for r in logged if r["run_id"] == "contract:" + result["run_id"]]
    assert len(expanded) + len(contracted) == len(logged) and {r["change_type"] for r in logged} == {"rewrite"}
    assert {r["policy_name"] for r in expanded} == {r["policy_name"] for r in contracted} == changed
    assert max(r["change_id"] for r in expanded) < min(r["change_id"] for r in contracted)
    for r in expanded:
        assert (r["old_using"], r["old_check"]) == before[r["policy_name"]]
    for r in contracted:
        assert (r["old_using"], r["old_check"]) == (
            next((e["new_using"], e["new_check"]) for e in expanded if e["policy_name"] == r["policy_name"]))
        assert (r["new_using"], r["new_check"]) == after[r["policy_name"]]
    literals = " ".join(q or "" for pair in after.values() for q in pair)
    assert not any(f"'{role}'" in literals for role in LEGACY_ONLY)

    post = {r["check_name"]: r["status"]
            for r in rows(rolemig_db, "SELECT * FROM migration_validation.validate_post_migration_state()")}
    assert set(post.values()) == {"pass"}, post
    auth = rows(rolemig_db, "SELECT * FROM migration_validation.test_user_authentication(200)")
    assert {r["status"] for r in auth} == {"pass"}, auth


def test_rewrite_can_be_deferred(rolemig_db):
    backup(rolemig_db)
    before = policies(rolemig_db)
    result = migrate(rolemig_db, p_rewrite_policies=False)
    assert result["status"] == "completed" and result["policies_rewritten"] == 0
    assert policies(rolemig_db) == before
    check = one(rolemig_db, """SELECT * FROM migration_validation.validate_post_migration_state()
                                WHERE check_name = 'no_legacy_roles_in_policies'""")
    assert check["status"] == "fail"
    assert migrate(rolemig_db)["policies_rewritten"] == 8


def test_failing_batch_is_undone_recorded_and_resumable(rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    # walk order: physical, users who move only; the victim is the first of the third batch of 10
    keys = [r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles ORDER BY ctid")
            if MAPPING[before[r["id"]]] != before[r["id"]]]
    victim = keys[20]
    rolemig_db.execute(f"""
        CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = '{victim}' THEN RAISE EXCEPTION 'refusing %', NEW.id; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_one BEFORE UPDATE ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.refuse_one()""")

    result = migrate(rolemig_db, p_batch_size=10)
    assert result["status"] == "failed" and f"refusing {victim}" in result["error"]
    assert result["batches"] == 3 and result["policies_rewritten"] == 0
    batches = rows(rolemig_db, "SELECT batch_number, status, error, processed_users "
                               "FROM migration_tracking.migration_batch ORDER BY batch_number")
    assert [(b["batch_number"], b["status"]) for b in batches] == [(1, "completed"), (2, "completed"), (3, "failed")]
    assert f"refusing {victim}" in batches[2]["error"] and batches[2]["processed_users"] == 0
    after = roles(rolemig_db)
    assert all(after[k] == MAPPING[before[k]] for k in keys[:20])
    assert all(after[k] == before[k] for k in keys[20:])  # the failed batch left nothing behind
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_log")["n"] == 20
    assert "'super_admin'::text" in str(policies(rolemig_db)["billing: billing staff"])

    rolemig_db.execute("DROP TRIGGER refuse_one ON public.user_profiles")
    resumed = migrate(rolemig_db, p_batch_size=10)
    assert resumed["status"] == "completed" and resumed["batches"] == 6  # the 60 users left
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}


NOT_EXPANDABLE = """CREATE POLICY "profiles: lower-case admins" ON public.user_profiles FOR SELECT
                     USING (lower(role) = lower('super_admin'))"""


def test_batched_call_is_refused_when_a_policy_cannot_accept_both_names(rolemig_db):
    """Between committed calls users hold both names: a policy that cannot accept both is refused up front."""
    backup(rolemig_db)
    rolemig_db.execute(NOT_EXPANDABLE)
    before, policies_before = roles(rolemig_db), policies(rolemig_db)
    diag = assert_refused(rolemig_db, "refusing a batched migration: policy \"profiles: lower-case admins\" on "
                                      "public.user_profiles: cannot expand role literal 'super_admin'",
                          p_batch_size=10, p_max_batches=1)
    assert "without p_max_batches" in diag.message_hint
    assert roles(rolemig_db) == before and policies(rolemig_db) == policies_before
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_batch")["n"] == 0


def test_one_call_without_expand_is_all_or_nothing(rolemig_db):
    """Without an expand a failed batch would commit a mixed state that policies do not accept: undo it all."""
    backup(rolemig_db)
    rolemig_db.execute(NOT_EXPANDABLE)
    keys = [r["id"] for r in rows(rolemig_db, "SELECT id::text FROM public.user_profiles ORDER BY id")]
    victim = keys[25]
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'author' WHERE id = %s", (victim,))
    before, policies_before = roles(rolemig_db), policies(rolemig_db)
    rolemig_db.execute(f"""
        CREATE FUNCTION public.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id = '{victim}' THEN RAISE EXCEPTION 'refusing %', NEW.id; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_one BEFORE UPDATE ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.refuse_one()""")
    result = migrate(rolemig_db, p_batch_size=10)
    assert result["status"] == "failed" and f"refusing {victim}" in result["error"]
    assert "the run was undone: no user moved" in result["error"] and "cannot expand" in result["error"]
    assert roles(rolemig_db) == before and policies(rolemig_db) == policies_before
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_log")["n"] == 0
    batches = rows(rolemig_db, "SELECT status FROM migration_tracking.migration_batch")
    assert [b["status"] for b in batches] == ["failed"]

    rolemig_db.execute("DROP TRIGGER refuse_one ON public.user_profiles")
    done = migrate(rolemig_db, p_batch_size=10)
    assert done["status"] == "completed" and roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}


def test_migrate_again_after_rollback(rolemig_db):
    bid = backup(rolemig_db)
    before = roles(rolemig_db)
    migrate(rolemig_db)
    rollback = one(rolemig_db, "SELECT * FROM migration_backup.execute_rollback(%s)", (bid,))
    assert rollback["status"] == "completed" and roles(rolemig_db) == before
    again = migrate(rolemig_db)
    assert again["status"] == "completed"
    assert again["users_migrated"] == 80 and again["users_unchanged"] == 50 and again["policies_rewritten"] == 8
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}


def test_runs_with_an_empty_search_path(rolemig_db):
    rolemig_db.execute("SET search_path = ''")
    backup(rolemig_db)
    result = migrate(rolemig_db, p_batch_size=50)
    assert result["status"] == "completed" and result["batches"] == 2  # 80 users move
    statuses = {r["check_name"]: r["status"] for r in rows(
        rolemig_db, "SELECT * FROM migration_validation.run_comprehensive_validation('post_migration')")}
    assert set(statuses.values()) == {"pass"}, statuses


def test_enum_role_column_and_integer_key(rolemig_db):
    """A different application: enum role column, integer key, own sessions table."""
    rolemig_db.execute("""
        CREATE SCHEMA app;
        CREATE TYPE app.role AS ENUM ('super_admin', 'author', 'viewer', 'owner', 'editor');
        CREATE TABLE app.members (member_no integer PRIMARY KEY, rank app.role NOT NULL);
        CREATE TABLE app.logins (login_id bigint PRIMARY KEY, member_no integer REFERENCES app.members);
        INSERT INTO app.members SELECT g, (ARRAY['super_admin', 'author', 'viewer'])[1 + g % 3]::app.role
          FROM generate_series(1, 25) g;
        INSERT INTO app.logins SELECT g, 1 + g % 25 FROM generate_series(1, 40) g;
        ALTER TABLE app.members ENABLE ROW LEVEL SECURITY;
        CREATE POLICY "members: writers" ON app.members FOR UPDATE
            USING (rank = ANY (ARRAY['author'::app.role, 'super_admin'::app.role]));
    """)
    rolemig_db.execute("""SELECT * FROM migration_control.configure_target(p_profiles_table => 'app.members',
        p_key_column => 'member_no', p_role_column => 'rank', p_sessions_table => 'app.logins',
        p_sessions_user_column => 'member_no', p_policy_schemas => ARRAY['app'])""")
    rolemig_db.execute("""SELECT * FROM migration_control.load_role_mapping(
        '{"super_admin": "owner", "author": "editor", "viewer": "viewer"}', ARRAY['owner', 'editor', 'viewer'])""")
    discovered = {r["role_name"]: r["sources"]
                  for r in rows(rolemig_db, "SELECT * FROM migration_control.discover_legacy_roles()")}
    assert discovered == {"super_admin": ["enum", "data", "mapping"], "author": ["enum", "data", "mapping"],
                          "viewer": ["enum", "data", "mapping"]}
    backup(rolemig_db)
    first = migrate(rolemig_db, p_batch_size=4, p_max_batches=2)
    assert first["users_migrated"] == 8
    batches = rows(rolemig_db, "SELECT last_key FROM migration_tracking.migration_batch ORDER BY batch_number")
    # the users who move (not the 'viewer' ones, g % 3 = 2), in the order the rows were inserted
    assert [r["last_key"] for r in batches] == ["6", "12"]
    result = migrate(rolemig_db, p_batch_size=4)
    assert result["status"] == "completed" and result["policies_rewritten"] == 1
    ranks = rows(rolemig_db, "SELECT DISTINCT rank::text FROM app.members")
    assert {r["rank"] for r in ranks} == {"owner", "editor", "viewer"}
    rolemig_db.execute("SET search_path = pg_catalog")
    qual = one(rolemig_db, "SELECT qual FROM pg_policies WHERE policyname = 'members: writers'")["qual"]
    assert qual == "(rank = ANY (ARRAY['editor'::app.role, 'owner'::app.role]))"


def test_enum_without_the_new_roles_is_refused(rolemig_db):
    rolemig_db.execute("""
        CREATE SCHEMA app;
        CREATE TYPE app.role AS ENUM ('super_admin', 'viewer');
        CREATE TABLE app.members (id integer PRIMARY KEY, rank app.role NOT NULL);
        CREATE TABLE app.logins (id bigint PRIMARY KEY, member_id integer);
        INSERT INTO app.members VALUES (1, 'super_admin'), (2, 'viewer');
        SELECT * FROM migration_control.configure_target(p_profiles_table => 'app.members', p_role_column => 'rank',
            p_sessions_table => 'app.logins', p_sessions_user_column => 'member_id', p_policy_schemas => ARRAY['app']);
        SELECT * FROM migration_control.load_role_mapping('{"super_admin": "owner", "viewer": "viewer"}',
                                                          ARRAY['owner', 'viewer']);
    """)
    backup(rolemig_db)
    diag = assert_refused(rolemig_db, "enum app.role lacks new role")
    assert "ALTER TYPE app.role ADD VALUE" in diag.message_hint
