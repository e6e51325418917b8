"""Kill the migrating backend (pg_terminate_backend) at precise points, then resume or roll back.

Each test stops the backend by making it wait for a lock the test holds (an advisory lock taken
by a trigger inside a batch, a row lock on the next batch's first user, a table lock during policy
DDL, backup or rollback), kills it from another connection, and checks with an independent ordered
dump of the tables (``oracle.take_snapshot`` plus per-user roles) that nothing was lost, half
applied or applied twice.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from pytest_rolemig import resources
from pytest_rolemig.mapping import load_mapping
from pytest_rolemig.online import Background, call, terminate, wait_blocked
from pytest_rolemig.roundtrip.oracle import take_snapshot
from pytest_rolemig.target import Target

MAPPING = load_mapping(resources.demo_mapping()).mapping
TARGET = Target()
CALL = ("CALL migration_control.run_online_migration(p_batch_size => 20, p_lock_timeout_ms => 50, "
        "p_max_retries => 1000)")


def backup(conn) -> str:
    return conn.execute("SELECT backup_id FROM migration_backup.create_comprehensive_backup()").fetchone()[0]


def roles(conn) -> dict[str, str]:
    return {k: r for k, r in conn.execute("SELECT id::text, role FROM public.user_profiles")}


def other_columns(conn) -> dict[str, str]:
    return {k: v for k, v in conn.execute(
        "SELECT id::text, (to_jsonb(t) - 'role')::text FROM public.user_profiles t ORDER BY 1")}


def done_log(conn) -> dict[str, int]:
    return {k: n for k, n in conn.execute(
        """SELECT l.user_key, count(*) FROM migration_tracking.migration_log l
           JOIN migration_tracking.migration_batch b USING (batch_id)
           WHERE b.status = 'completed' AND l.status IN ('migrated', 'unchanged') GROUP BY 1""")}


def assert_consistent_after_kill(conn, before_roles, before_other):
    """Every user is either fully handled by a committed batch (logged once, new role) or untouched."""
    now = roles(conn)
    log = done_log(conn)
    assert set(log.values()) <= {1}
    for key, old in before_roles.items():
        expected = MAPPING[old] if key in log else old
        assert now[key] == expected, (key, old, now[key], key in log)
    assert other_columns(conn) == before_other
    return log


def assert_resumes_to_the_end(conn, before_roles, before_sessions):
    result = call(conn, p_batch_size=20)
    assert result["status"] == "completed"
    assert roles(conn) == {k: MAPPING[r] for k, r in before_roles.items()}
    # every user who moves logged once (an identity-mapped user is never batched nor logged)
    moving = {k for k, r in before_roles.items() if MAPPING[r] != r}
    assert set(done_log(conn).values()) == {1} and set(done_log(conn)) == moving
    assert take_snapshot(conn, TARGET).sessions == before_sessions


@pytest.fixture
def dsn(rolemig_server, rolemig_db):
    return rolemig_server.dsn(rolemig_db.info.dbname)


def test_kill_inside_a_batch(rolemig_db, dsn):
    db = rolemig_db
    backup(db)
    before, other, sessions = roles(db), other_columns(db), take_snapshot(db, TARGET).sessions
    # the 50th user by key is in batch 3 (20 per batch), after some rows of that batch were updated
    victim = db.execute("""SELECT id FROM public.user_profiles
                           WHERE role IN (SELECT legacy_role FROM migration_control.role_mapping
                                          WHERE new_role <> legacy_role)
                           ORDER BY id OFFSET 49 LIMIT 1""").fetchone()[0]
    db.execute("""CREATE FUNCTION public.fault_hook() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM pg_catalog.pg_advisory_xact_lock(4242); RETURN NEW; END $$""")
    db.execute(f"""CREATE TRIGGER fault_hook BEFORE UPDATE ON public.user_profiles FOR EACH ROW
                   WHEN (NEW.id = '{victim}') EXECUTE FUNCTION public.fault_hook()""")
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        run = Background(dsn, CALL)
        assert wait_blocked(db, run.pid) == "Lock:advisory"
        terminate(db, run.pid)
    run.join()
    assert isinstance(run.error, psycopg.OperationalError)
    log = assert_consistent_after_kill(db, before, other)
    assert len(log) % 20 == 0 and str(victim) not in log, "the killed batch must have left nothing behind"
    assert roles(db)[str(victim)] == before[str(victim)]
    db.execute("DROP TRIGGER fault_hook ON public.user_profiles")
    assert_resumes_to_the_end(db, before, sessions)


def test_kill_between_batches(rolemig_db, dsn):
    db = rolemig_db
    backup(db)
    before, other, sessions = roles(db), other_columns(db), take_snapshot(db, TARGET).sessions
    # the walk goes in physical order over the users who move (an identity-mapped user is never
    # batched): batch 3 is the 41st to 60th of them as the rows lie now
    batch_3 = [r[0] for r in db.execute(
        """SELECT id FROM public.user_profiles WHERE role IN (SELECT legacy_role FROM migration_control.role_mapping
                                                              WHERE new_role <> legacy_role)
            ORDER BY ctid OFFSET 40 LIMIT 20""")]
    call(db, p_batch_size=20, p_max_batches=2)  # policies expanded, 2 batches committed
    next_first = batch_3[0]  # the application holds the first user of batch 3
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (next_first,))
        run = Background(dsn, CALL)
        wait_blocked(db, run.pid)
        terminate(db, run.pid)
        holder.rollback()
    run.join()
    log = assert_consistent_after_kill(db, before, other)
    assert len(log) == 40
    assert_resumes_to_the_end(db, before, sessions)


def test_kill_during_policy_ddl(rolemig_db, dsn):
    db = rolemig_db
    bid = backup(db)
    before, other = roles(db), other_columns(db)
    before_snap = take_snapshot(db, TARGET)
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE public.projects IN ACCESS SHARE MODE")
        run = Background(dsn, CALL)
        wait_blocked(db, run.pid)
        terminate(db, run.pid)
        holder.rollback()
    run.join()
    assert roles(db) == before and other_columns(db) == other  # users move only after the policies
    # every policy differing from the backup is one the log explains (its logged new text)
    mid = take_snapshot(db, TARGET)
    changed = {k for k in mid.policies if mid.policies[k] != before_snap.policies.get(k)}
    logged = {(s, t, p) for s, t, p in db.execute(
        "SELECT schema_name, table_name, policy_name FROM migration_tracking.rls_policy_changes")}
    assert changed and changed == logged
    assert not any(t == "projects" for _, t, _ in changed), "projects was locked: its policy cannot have changed"
    assert_resumes_to_the_end(db, before, before_snap.sessions)
    result = db.execute("SELECT * FROM migration_backup.execute_rollback(%s)", (bid,)).fetchone()
    assert result[1] == "completed"
    assert take_snapshot(db, TARGET) == before_snap


def test_kill_during_backup_then_migrate(rolemig_db, dsn):
    db = rolemig_db
    before_snap = take_snapshot(db, TARGET)
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE auth.sessions IN ACCESS EXCLUSIVE MODE")
        run = Background(dsn, "SELECT backup_id FROM migration_backup.create_comprehensive_backup()")
        wait_blocked(db, run.pid)
        terminate(db, run.pid)
        holder.rollback()
    run.join()
    assert db.execute("SELECT count(*) FROM migration_backup.backup_log WHERE status = 'completed'").fetchone()[0] == 0
    with pytest.raises(psycopg.errors.RaiseException, match="no valid backup"):
        call(db)
    assert take_snapshot(db, TARGET) == before_snap
    bid = backup(db)
    assert call(db, p_batch_size=20)["status"] == "completed"
    assert db.execute("SELECT * FROM migration_backup.execute_rollback(%s)", (bid,)).fetchone()[1] == "completed"
    assert take_snapshot(db, TARGET) == before_snap


def test_kill_during_rollback_then_roll_back_again(rolemig_db, dsn):
    db = rolemig_db
    bid = backup(db)
    before_snap = take_snapshot(db, TARGET)
    call(db, p_batch_size=20)
    migrated_snap = take_snapshot(db, TARGET)
    someone = db.execute("SELECT id FROM public.user_profiles WHERE role = 'owner' LIMIT 1").fetchone()[0]
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (someone,))
        run = Background(dsn, "SELECT * FROM migration_backup.execute_rollback(%s)", (bid,))
        wait_blocked(db, run.pid)
        terminate(db, run.pid)
        holder.rollback()
    run.join()
    assert take_snapshot(db, TARGET) == migrated_snap, "a killed rollback must leave nothing half done"
    assert db.execute("SELECT * FROM migration_backup.execute_rollback(%s)", (bid,)).fetchone()[1] == "completed"
    assert take_snapshot(db, TARGET) == before_snap
    # and the migration can run again after the rollback: users pending again, each handled once more
    assert call(db, p_batch_size=20)["status"] == "completed"
    assert take_snapshot(db, TARGET).profiles == migrated_snap.profiles


def test_rollback_while_the_application_keeps_writing(rolemig_db, dsn):
    db = rolemig_db
    bid = backup(db)
    call(db, p_batch_size=20)
    users = [k for (k,) in db.execute("SELECT id::text FROM public.user_profiles ORDER BY id LIMIT 40")]
    demoted = db.execute("SELECT id::text FROM public.user_profiles WHERE role = 'admin' LIMIT 1").fetchone()[0]
    db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE id = %s", (demoted,))  # app changed it
    written: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def application():
        try:
            with psycopg.connect(dsn, autocommit=True) as app:
                i = 0
                while not stop.is_set() or i < 40:
                    user = users[i % len(users)]
                    name = f"written-{i}"
                    app.execute("UPDATE public.user_profiles SET display_name = %s WHERE id = %s", (name, user))
                    app.execute("INSERT INTO public.support_tickets (requester_id, subject) VALUES (%s, %s)",
                                (user, name))
                    written.append((user, name))
                    i += 1
        except BaseException as exc:  # a deadlock victim, say: the rollback must never kill the application
            errors.append(exc)

    thread = threading.Thread(target=application)
    thread.start()
    result = db.execute("SELECT * FROM migration_backup.execute_rollback(%s)", (bid,)).fetchone()
    stop.set()
    thread.join(60)
    assert not thread.is_alive(), "the application thread did not stop"
    assert not errors, f"the application failed during the rollback: {errors!r}"
    assert written, "the application wrote nothing"
    assert result[1] == "completed" and result[5] >= 1  # the demoted user is a logged conflict
    last = {}
    for user, name in written:
        last[user] = name
    names = dict(db.execute("SELECT id::text, display_name FROM public.user_profiles WHERE id::text = ANY(%s)",
                            (list(last),)).fetchall())
    assert names == last, "an application write was overwritten by the rollback"
    tickets = {s for (s,) in db.execute("SELECT subject FROM public.support_tickets")}
    assert {n for _, n in written} <= tickets
    assert roles(db)[demoted] == "viewer"
    assert not set(roles(db).values()) - set(MAPPING) - {"viewer"}  # everybody else back on a legacy role


def test_rollback_gives_up_on_a_busy_table_and_names_it(rolemig_db, dsn):
    db = rolemig_db
    bid = backup(db)
    before_snap = take_snapshot(db, TARGET)
    call(db, p_batch_size=20)
    with psycopg.connect(dsn) as holder:
        holder.execute("LOCK TABLE public.support_tickets IN ROW EXCLUSIVE MODE")  # an open application write
        holder_pid = holder.info.backend_pid
        with pytest.raises(psycopg.errors.LockNotAvailable) as raised:
            db.execute("SELECT migration_backup.lock_restore_tables(%s, 10, 2)", (bid,))
        db.rollback()
        assert "public.support_tickets" in raised.value.diag.message_primary
        assert f"public.support_tickets (pid {holder_pid}, RowExclusiveLock)" in raised.value.diag.message_detail
        # while it waits, the rollback holds no table another session needs: the holder still
        # reads the profiles table, as an application's foreign key or policy check would
        run = Background(dsn, "SELECT * FROM migration_backup.execute_rollback(%s)", (bid,))
        wait_blocked(db, run.pid)
        holder.execute("SELECT count(*) FROM public.user_profiles")
        holder.rollback()
    run.join()
    assert run.error is None and run.result[0][1] == "completed", (run.error, run.result)
    assert take_snapshot(db, TARGET) == before_snap
    assert db.execute("SELECT count(*) FROM migration_backup.rollback_log WHERE status = 'failed'").fetchone()[0] == 0
