"""run_role_migration: execute_role_migration's migration with one COMMIT per batch (the CLI's path).

Real PostgreSQL through ``rolemig_db`` (demo app, infrastructure, 130 users, autocommit).
Expected states come from the rows read before the run with the mapping applied in Python,
and from the catalogs; the transactions are told apart by the xmin of the batch rows.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from pytest_rolemig import api, resources
from pytest_rolemig.mapping import load_mapping
from pytest_rolemig.online import Background, wait_blocked

MAPPING = load_mapping(resources.demo_mapping()).mapping
MOVING = 80  # of the 130 users, on a legacy role the mapping moves to another name


def backup(conn) -> str:
    return conn.execute("SELECT backup_id FROM migration_backup.create_comprehensive_backup()").fetchone()[0]


def roles(conn) -> dict[str, str]:
    return {k: r for k, r in conn.execute("SELECT id::text, role FROM public.user_profiles")}


def run(conn, **params) -> dict:
    args = ", ".join(f"{k} => %({k})s" for k in params)
    return conn.execute(f"CALL migration_control.run_role_migration({args})", params).fetchone()[0]


def batch_transactions(conn) -> int:
    """How many transactions wrote the completed batch rows (each batch row is completed by its own batch)."""
    return conn.execute("""SELECT count(DISTINCT xmin::text) FROM migration_tracking.migration_batch
                            WHERE status = 'completed' AND details ->> 'phase' = 'migrate'""").fetchone()[0]


def policy_text(conn, table: str, name: str) -> str:
    conn.execute("SET search_path = pg_catalog, pg_temp")
    try:
        return conn.execute("SELECT pg_get_expr(polqual, polrelid) FROM pg_policy "
                            "WHERE polrelid = %s::regclass AND polname = %s", (table, name)).fetchone()[0]
    finally:
        conn.execute("RESET search_path")


def test_one_commit_per_batch_then_the_end_state_of_the_one_call(rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    first = run(rolemig_db, p_batch_size=7, p_max_batches=3)
    assert (first["status"], first["batches"], first["users_migrated"]) == ("partial", 3, 21)
    assert batch_transactions(rolemig_db) == 3
    # the committed batches shared one prepared statement, which the run drops at its end
    assert rolemig_db.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
    now = roles(rolemig_db)
    assert sum(now[k] != before[k] for k in before) == 21

    rest = run(rolemig_db, p_batch_size=7)
    assert rest["status"] == "completed", rest
    assert rest["run_id"] != first["run_id"]
    assert first["users_migrated"] + rest["users_migrated"] == MOVING
    assert rest["users_unchanged"] == len(before) - MOVING
    assert rest["policies_rewritten"] > 0
    assert batch_transactions(rolemig_db) == 3 + rest["batches"] == 3 + 9  # 59 users left, 7 per batch
    assert roles(rolemig_db) == {k: MAPPING[r] for k, r in before.items()}
    rolemig_db.execute("SET search_path = pg_catalog, pg_temp")
    texts = " ".join(f"{q} {c}" for q, c in rolemig_db.execute("SELECT qual, with_check FROM pg_policies"))
    rolemig_db.execute("RESET search_path")
    legacy_only = {r for r in MAPPING if r not in MAPPING.values()}
    assert legacy_only and not [r for r in legacy_only if f"'{r}'" in texts]


def test_inside_a_transaction_block_it_fails_before_changing_anything(rolemig_server, rolemig_db):
    backup(rolemig_db)
    before = roles(rolemig_db)
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname)) as conn:  # not autocommit
        with pytest.raises(psycopg.errors.InvalidTransactionTermination):
            conn.execute("CALL migration_control.run_role_migration()")
    assert roles(rolemig_db) == before


def test_stops_after_the_batch_in_flight_when_another_session_asks(rolemig_server, rolemig_db):
    backup(rolemig_db)
    with psycopg.connect(rolemig_server.dsn(rolemig_db.info.dbname), autocommit=True) as side:
        api.request_stop(side, rolemig_db.info.backend_pid)
        stopped = run(rolemig_db, p_batch_size=10)
    assert (stopped["status"], stopped["batches"], stopped["stopped"]) == ("partial", 1, True)
    assert rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_log").fetchone()[0] == 10
    done = run(rolemig_db, p_batch_size=10)  # the request went with the side session
    assert (done["status"], done["stopped"]) == ("completed", False)


def test_progress_after_every_commit(rolemig_db):
    backup(rolemig_db)
    seen: list[dict] = []
    done = api.migrate_committed(rolemig_db, batch_size=20, on_batch=seen.append)
    assert done.status == "completed"
    assert [s["users_migrated"] for s in seen] == [20, 40, 60, 80]
    assert [s["batches"] for s in seen] == [1, 2, 3, 4]
    assert {s["run_id"] for s in seen} == {done.run_id}


def test_a_policy_replaced_between_two_batches_is_expanded_before_the_next(rolemig_server, rolemig_db):
    """A deploy between two committed batches: the next batch runs only once the new policy takes both names."""
    backup(rolemig_db)
    dsn = rolemig_server.dsn(rolemig_db.info.dbname)
    walk = [k for (k,) in rolemig_db.execute(
        """SELECT id::text FROM public.user_profiles
            WHERE role IN (SELECT legacy_role FROM migration_control.role_mapping WHERE new_role <> legacy_role)
            ORDER BY ctid""")]
    run(rolemig_db, p_batch_size=5, p_max_batches=1)  # widened and expanded: no lock on the table needed from here
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (walk[22],))
    job = Background(dsn, "CALL migration_control.run_role_migration(p_batch_size => 5, p_max_batches => 5)")
    try:
        wait_blocked(rolemig_db, job.pid)  # the fifth batch (the call's fourth) waits for the locked user
        assert rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_log").fetchone()[0] == 20
        rolemig_db.execute("""DROP POLICY "orgs: owner updates" ON public.organizations;
                              CREATE POLICY "orgs: owner updates" ON public.organizations FOR UPDATE TO authenticated
                                  USING ((SELECT public.current_user_role()) = 'org_admin')""")
    finally:
        blocker.rollback()
        blocker.close()
    job.join()
    assert job.error is None, job.error
    result = job.result[0][0]
    assert (result["status"], result["batches"], result["users_migrated"]) == ("partial", 5, 25)
    expanded = policy_text(rolemig_db, "public.organizations", "orgs: owner updates")
    assert "'org_admin'" in expanded and f"'{MAPPING['org_admin']}'" in expanded, expanded


def test_the_run_goes_through_every_refusal_again_when_the_mapping_changes(rolemig_db):
    backup(rolemig_db)
    run(rolemig_db, p_batch_size=10, p_max_batches=1)
    run_id = rolemig_db.execute("SELECT max(run_id) FROM migration_tracking.migration_batch").fetchone()[0]
    resume = rolemig_db.execute("SELECT migration_control.run_resume('role_system_migration', %s, 10)",
                                (run_id,)).fetchone()[0]
    rolemig_db.execute("UPDATE migration_control.role_mapping SET new_role = 'viewer' WHERE legacy_role = 'author'")
    step = rolemig_db.execute("SELECT migration_control.committed_batch('role_system_migration', %s, %s, %s)",
                              (run_id, json.dumps(resume), resume["after"])).fetchone()[0]
    assert step == {"changed": True}
    assert rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_log").fetchone()[0] == 10
