"""The ``rolemig`` command against real ephemeral PostgreSQL databases.

Most tests call ``main([...])`` in-process on the test's own clone of the
template (``rolemig_db``: demo schema, infrastructure, mapping, 130 users, no
backup); the interruption tests run the installed console script as a
subprocess and stop it with SIGINT at a point held in place by a row lock.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pytest_rolemig.cli import errors, main
from pytest_rolemig.roundtrip.oracle import take_snapshot
from pytest_rolemig.target import Target

LOCK = "SELECT pg_advisory_lock(hashtext('pytest_rolemig.migration'))"
USERS = 130
MOVING = 80  # of them on a legacy role the mapping moves to another name


class Run:
    """Exit code and both outputs of one in-process ``rolemig`` call."""

    def __init__(self, *argv: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        self.code = main(list(argv), out=out, err=err)
        self.out, self.err = out.getvalue(), err.getvalue()

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Tty(io.StringIO):
    """Standard input that says it is a terminal, with the operator's answer in it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def dsn(rolemig_server, rolemig_db):
    return rolemig_server.dsn(rolemig_db.info.dbname)


def cli(dsn: str, *argv: str) -> Run:
    return Run(*argv, "--dsn", dsn)


def roles(conn) -> dict[str, str]:
    """Key -> role, read directly from the table."""
    return dict(conn.execute("SELECT id::text, role FROM public.user_profiles").fetchall())


def expected_after_migration(conn, before: dict[str, str]) -> dict[str, str]:
    mapping = dict(conn.execute("SELECT legacy_role, new_role FROM migration_control.role_mapping").fetchall())
    return {k: mapping[r] for k, r in before.items()}


# ------------------------------------------------------------- usage, connection ---

def test_help_lists_every_subcommand_and_the_exit_codes(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("install", "status", "plan", "backup", "migrate", "validate", "rollback",
                    "emergency-rollback", "backups"):
        assert command in text
    assert "130" in text and "a migration is already running" in text


def test_usage_errors_exit_2(capsys):
    assert main([]) == errors.USAGE
    assert main(["migrate", "--batch-size", "0", "--dsn", "x"]) == errors.USAGE
    assert main(["frobnicate"]) == errors.USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_no_dsn_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    run = Run("status")
    assert run.code == errors.USAGE, run
    assert "--dsn or set DATABASE_URL" in run.err


def test_unreachable_server_exits_3(rolemig_server):
    # a port nothing listens on, on this machine
    run = Run("status", "--dsn", "postgresql://nobody@127.0.0.1:1/nowhere?connect_timeout=3")
    assert run.code == errors.CONNECTION, run
    assert "cannot connect to" in run.err and "127.0.0.1" in run.err


def test_database_url_is_used_when_no_dsn(monkeypatch, dsn):
    monkeypatch.setenv("DATABASE_URL", dsn)
    run = Run("status", "--json")
    assert run.code == 0, run
    # 13 roles x 10 users; admin, editor, manager, moderator, viewer keep their name
    assert run.json()["users_to_migrate"] == 80


# ------------------------------------------------------------------ install ---

def test_missing_infrastructure_every_command_suggests_install(rolemig_server, rolemig_bare_db):
    bare = rolemig_server.dsn(rolemig_bare_db.info.dbname)
    for argv in (["status"], ["plan"], ["backup"], ["migrate"], ["validate"], ["backups"],
                 ["rollback", "--yes"], ["emergency-rollback", "--yes"]):
        run = cli(bare, *argv)
        assert run.code == errors.CONNECTION, (argv, run)
        assert "not installed" in run.err and "rolemig install" in run.err, (argv, run)


def test_install_then_status_is_green(rolemig_server, rolemig_bare_db):
    bare = rolemig_server.dsn(rolemig_bare_db.info.dbname)
    run = cli(bare, "install", "--json", "--batch-size", "40")
    assert run.code == 0, run
    data = run.json()
    assert data["target"]["batch_size"] == 40
    assert {r["component"]: r["status"] for r in data["status"]}["functions"] == "pass"
    mapped = rolemig_bare_db.execute("SELECT count(*) FROM migration_control.role_mapping").fetchone()[0]
    assert mapped == 13
    status = cli(bare, "status")
    assert status.code == 0, status
    assert "users still on a legacy role: 80" in status.out


def test_install_refusals(rolemig_server, rolemig_empty_db, tmp_path):
    empty = rolemig_server.dsn(rolemig_empty_db.info.dbname)
    bad = tmp_path / "roles.toml"
    bad.write_text('new_roles = ["owner"]\n[mapping]\nadmin = "nobody"\n')
    run = cli(empty, "install", "--mapping", str(bad))
    assert run.code == errors.USAGE, run
    assert "maps outside the new roles" in run.err
    run = cli(empty, "install")  # no application tables here
    assert run.code == errors.CONNECTION, run
    assert "user_profiles" in run.err and "--demo" in run.err
    assert rolemig_empty_db.execute("SELECT to_regnamespace('migration_control')").fetchone()[0] is None


def test_install_demo_into_an_empty_database(rolemig_server, rolemig_empty_db):
    empty = rolemig_server.dsn(rolemig_empty_db.info.dbname)
    run = cli(empty, "install", "--demo", "--demo-users", "26", "--json")
    assert run.code == 0, run
    assert run.json()["seeded_users"] == 26
    per_role = rolemig_empty_db.execute(
        "SELECT role, count(*) FROM public.user_profiles GROUP BY role").fetchall()
    assert len(per_role) == 13 and {n for _, n in per_role} == {2}
    again = cli(empty, "install", "--demo", "--json")  # idempotent: no second seeding
    assert again.code == 0 and again.json()["seeded_users"] == 0
    assert rolemig_empty_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0] == 26


# ------------------------------------------------------------- backup, backups ---

def test_backup_and_backups(dsn, rolemig_db):
    run = cli(dsn, "backup", "--json", "--name", "before_cli")
    assert run.code == 0, run
    data = run.json()
    assert data["status"] == "completed" and data["profiles_count"] == USERS
    assert all(c["status"] != "fail" for c in data["validation"])
    listed = cli(dsn, "backups", "--json")
    assert listed.code == 0
    assert [(b["backup_id"], b["restorable"]) for b in listed.json()] == [(data["backup_id"], True)]
    table = cli(dsn, "backups")
    assert data["backup_id"] in table.out and "before_cli" in table.out


def test_backup_failure_exits_1(dsn, rolemig_db):
    # a target table that no longer exists: the backup records the failure
    rolemig_db.execute("ALTER TABLE auth.sessions RENAME TO sessions_gone")
    run = cli(dsn, "backup", "--json")
    assert run.code == errors.CHECKS_FAILED, run
    assert run.json()["status"] == "failed" and run.json()["error"]


# ---------------------------------------------------------------------- plan ---

def test_plan_reports_and_writes_nothing(dsn, rolemig_db):
    target = Target()
    counts = "SELECT (SELECT count(*) FROM migration_tracking.migration_batch), " \
             "(SELECT count(*) FROM migration_backup.backup_log), " \
             "(SELECT count(*) FROM migration_tracking.rls_policy_changes)"
    before = take_snapshot(rolemig_db, target)
    tracked = rolemig_db.execute(counts).fetchone()
    run = cli(dsn, "plan", "--batch-size", "50", "--json")
    assert run.code == 0, run
    assert take_snapshot(rolemig_db, target).differences(before) == []
    assert rolemig_db.execute(counts).fetchone() == tracked

    plan = run.json()
    assert plan["dry_run"] and not plan["written"]
    per_role = {r["legacy_role"]: r for r in plan["users_per_role"]}
    assert sum(r["users"] for r in per_role.values()) == USERS
    assert per_role["support_agent"]["new_role"] == "moderator" and per_role["support_agent"]["action"] == "moves"
    assert per_role["viewer"]["action"] == "unchanged"
    assert plan["users_to_move"] == 80
    assert plan["batches"] == math.ceil(MOVING / 50)  # identity-mapped users are never batched
    assert plan["sample"]["users"] == 50 and plan["estimated_seconds"] >= 0
    rewritten = {p["policy"]: p for p in plan["policies_rewritten"]}
    billing = rewritten["billing: billing staff"]
    assert "'billing_admin'" in billing["old_using"] and "'billing_admin'" not in billing["new_using"]
    assert "'admin'" in billing["new_using"]
    assert "profiles: read own" not in rewritten  # names no role: untouched
    # billing_admin -> admin puts 'admin' in the billing policy: legacy admins gain billing rows
    changes = plan["access_changes"]
    assert changes["admin"]["gains"]["public.billing_accounts"] == ["SELECT", "INSERT", "UPDATE", "DELETE"]
    assert changes["viewer"] == {**changes["viewer"], "gains": {}, "loses": {}}
    assert "evaluated by PostgreSQL" in plan["access_method"]


def test_plan_readable_output(dsn):
    run = cli(dsn, "plan", "--batch-size", "40")
    assert run.code == 0, run
    assert "nothing was written" in run.out
    assert "USING old: " in run.out and "new: " in run.out
    assert "gains SELECT, INSERT, UPDATE, DELETE on public.billing_accounts" in run.out
    assert "Batches: 2 of up to 40 users" in run.out  # the 80 users who move


def test_plan_fails_on_an_unmapped_role(dsn, rolemig_db):
    rolemig_db.execute("DELETE FROM migration_control.role_mapping WHERE legacy_role = 'support_agent'")
    run = cli(dsn, "plan", "--no-access")
    assert run.code == errors.CHECKS_FAILED, run
    assert "support_agent" in run.err


# ------------------------------------------------------------------- migrate ---

def test_migrate_needs_a_backup(dsn, rolemig_db):
    before = roles(rolemig_db)
    run = cli(dsn, "migrate")
    assert run.code == errors.CHECKS_FAILED, run
    assert "rolemig backup" in run.err
    assert roles(rolemig_db) == before


def test_migrate_runs_batches_and_validates(dsn, rolemig_db):
    before = roles(rolemig_db)
    assert cli(dsn, "backup").code == 0
    run = cli(dsn, "migrate", "--batch-size", "25", "--json")
    assert run.code == 0, run
    data = run.json()
    assert data["complete"] and data["users_left"] == 0 and not data["interrupted"]
    assert data["batches"] == math.ceil(MOVING / 25)
    assert data["users_migrated"] == 80 and data["users_unchanged"] == 50
    assert data["policies_rewritten"] == 8
    assert data["validation"] and all(c["status"] != "fail" for c in data["validation"])
    assert roles(rolemig_db) == expected_after_migration(rolemig_db, before)
    # one progress line per batch when stderr is not a terminal
    assert run.err.count("migrate [") == data["batches"]
    assert "80/80 users" in run.err  # the users who move

    validate = cli(dsn, "validate", "--json")
    assert validate.code == 0, validate
    assert validate.json()["phase"] == "post_migration" and validate.json()["counts"]["fail"] == 0
    status = cli(dsn, "status")
    assert "State: migrated" in status.out and "Last validation val_" in status.out
    again = cli(dsn, "migrate", "--json")  # nothing left: one call, no batch
    assert again.code == 0 and again.json()["batches"] == 0


def test_migrate_stops_and_resumes(dsn, rolemig_db):
    before = roles(rolemig_db)
    assert cli(dsn, "backup").code == 0
    first = cli(dsn, "migrate", "--batch-size", "20", "--max-batches", "2", "--json")
    assert first.code == 0, first
    assert first.json()["batches"] == 2 and not first.json()["complete"]
    changed = {k for k, r in roles(rolemig_db).items() if r != before[k]}
    logged = {r[0] for r in rolemig_db.execute(
        "SELECT l.user_key FROM migration_tracking.migration_log l WHERE l.status = 'migrated'")}
    assert changed == logged and 0 < len(changed) < 80
    status = cli(dsn, "status", "--json").json()
    assert status["users_to_migrate"] == 80 - len(changed)
    second = cli(dsn, "migrate", "--batch-size", "20", "--json")
    assert second.code == 0, second
    assert second.json()["complete"]
    assert roles(rolemig_db) == expected_after_migration(rolemig_db, before)


def test_migrate_unknown_backup_id(dsn):
    run = cli(dsn, "migrate", "--backup-id", "bk_does_not_exist")
    assert run.code == errors.USAGE, run
    assert "unknown backup id 'bk_does_not_exist'" in run.err and "rolemig backups" in run.err


def test_migration_already_running(dsn, rolemig_server, rolemig_db):
    assert cli(dsn, "backup").code == 0
    before = roles(rolemig_db)
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(LOCK)
        for argv in (["migrate"], ["rollback", "--yes"], ["emergency-rollback", "--yes"]):
            run = cli(dsn, *argv)
            assert run.code == errors.LOCKED, (argv, run)
            assert "already running" in run.err, run
        plan = cli(dsn, "plan", "--no-access")
        assert plan.code == errors.LOCKED, plan
        status = cli(dsn, "status", "--json")
        migrations = {r["component"]: r for r in status.json()["infrastructure"]}["migrations"]
        assert migrations["details"]["lock_held"] is True
    assert roles(rolemig_db) == before


# ------------------------------------------------------------------ validate ---

def test_validate_fails_on_a_broken_migration(dsn, rolemig_db):
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "migrate", "-q").code == 0
    assert cli(dsn, "validate").code == 0
    # someone puts a user back on a legacy role by hand
    rolemig_db.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT IF EXISTS user_profiles_role_check")
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'support_agent' "
                       "WHERE id = (SELECT min(id::text)::uuid FROM public.user_profiles)")
    run = cli(dsn, "validate", "--phase", "post_migration", "--json")
    assert run.code == errors.CHECKS_FAILED, run
    failing = {c["check_name"] for c in run.json()["checks"] if c["status"] == "fail"}
    assert "every_user_has_new_role" in failing
    text = cli(dsn, "validate", "--phase", "post_migration")
    assert "[FAIL] post_migration_state/every_user_has_new_role" in text.out


def test_validate_pre_migration_phase(dsn):
    run = cli(dsn, "validate", "--json")
    assert run.json()["phase"] == "pre_migration"
    # no backup yet: the pre-migration validation says so
    assert run.code == errors.CHECKS_FAILED, run
    assert "valid_backup_exists" in {c["check_name"] for c in run.json()["checks"] if c["status"] == "fail"}
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "validate").code == 0


# ------------------------------------------------------------------ rollback ---

def test_rollback_asks_first(dsn, rolemig_db, monkeypatch):
    target = Target()
    original = take_snapshot(rolemig_db, target)
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "migrate", "-q").code == 0
    migrated = roles(rolemig_db)

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    run = cli(dsn, "rollback")
    assert run.code == errors.USAGE, run
    assert "standard input is not a terminal" in run.err and "--yes" in run.err
    assert roles(rolemig_db) == migrated

    monkeypatch.setattr(sys, "stdin", Tty("no\n"))
    run = cli(dsn, "rollback")
    assert run.code == errors.DECLINED, run
    assert "Type 'yes'" in run.err and "cancelled" in run.err
    assert roles(rolemig_db) == migrated

    monkeypatch.setattr(sys, "stdin", Tty("yes\n"))
    run = cli(dsn, "rollback", "--json")
    assert run.code == 0, run
    assert run.json()["status"] == "completed" and run.json()["profiles_restored"] == 80
    assert take_snapshot(rolemig_db, target).differences(original) == []
    status = cli(dsn, "validate", "--phase", "post_rollback")
    assert status.code == 0, status


def test_rollback_unknown_backup_id(dsn, rolemig_db):
    assert cli(dsn, "backup").code == 0
    for command in ("rollback", "emergency-rollback"):
        run = cli(dsn, command, "bk_nope", "--yes")
        assert run.code == errors.USAGE, run
        assert "unknown backup id 'bk_nope'" in run.err


def test_rollback_without_any_backup(dsn):
    run = cli(dsn, "rollback", "--yes")
    assert run.code == errors.CHECKS_FAILED, run
    assert "no restorable backup" in run.err


def test_emergency_rollback_after_a_partial_migration(dsn, rolemig_db):
    target = Target()
    original = take_snapshot(rolemig_db, target)
    backup = cli(dsn, "backup", "--json").json()["backup_id"]
    assert cli(dsn, "migrate", "--batch-size", "30", "--max-batches", "1", "-q").code == 0
    assert take_snapshot(rolemig_db, target).differences(original) != []
    # the application changed a column the migration never touches: emergency restores it too
    rolemig_db.execute("UPDATE public.user_profiles SET display_name = 'changed later'")
    run = cli(dsn, "emergency-rollback", backup, "--yes", "--json")
    assert run.code == 0, run
    assert run.json()["mode"] == "emergency" and run.json()["backup_id"] == backup
    assert take_snapshot(rolemig_db, target).differences(original) == []


# ---------------------------------------------------- console script, Ctrl-C ---

def _script() -> str:
    path = Path(sys.executable).with_name("rolemig")
    assert path.exists(), f"the console script is not installed next to {sys.executable}"
    return str(path)


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _role_that_changes(conn, position: int) -> None:
    """Give the user at ``position`` a legacy role the mapping changes (if theirs maps to itself).

    A batch locks only the users whose role changes: an identity-mapped user ('editor' ->
    'editor') is never locked, so a row lock on one blocks nothing until the policy rewrite.
    """
    changing = conn.execute("SELECT legacy_role FROM migration_control.role_mapping "
                            "WHERE new_role <> legacy_role ORDER BY legacy_role LIMIT 1").fetchone()[0]
    conn.execute("""UPDATE public.user_profiles SET role = %s
                    WHERE id = (SELECT id FROM public.user_profiles ORDER BY id OFFSET %s LIMIT 1)
                      AND role IN (SELECT legacy_role FROM migration_control.role_mapping
                                   WHERE new_role = legacy_role)""", (changing, position))
    # the migration walks a table in physical order: rewrite it in key order, so that position
    # counts in both (the UPDATE above gave that row a new place)
    conn.execute("CLUSTER public.user_profiles USING user_profiles_pkey")


def _blocked_migration(dsn: str, conn, tmp_path: Path, blocked_position: int):
    """Start ``rolemig migrate --batch-size 5`` with the user at ``blocked_position`` row-locked.

    Returns (process, blocker connection, stderr file); the process is waiting on the lock.
    The first batch runs in-process beforehand: it widens the role CHECK constraint
    (ALTER TABLE), which the row lock would block; later calls find it widened.
    """
    # the walk order: the users who move (an identity-mapped user is never batched), physically
    keys = [r[0] for r in conn.execute(
        """SELECT id FROM public.user_profiles WHERE role IN (SELECT legacy_role FROM migration_control.role_mapping
                                                              WHERE new_role <> legacy_role) ORDER BY ctid""")]
    first = cli(dsn, "migrate", "--batch-size", "5", "--max-batches", "1", "-q")
    assert first.code == 0, first
    blocker = psycopg.connect(dsn)
    blocker.execute("SELECT 1 FROM public.user_profiles WHERE id = %s FOR UPDATE", (keys[blocked_position],))
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "DATABASE_URL": dsn}
    proc = subprocess.Popen([_script(), "migrate", "--batch-size", "5"], env=env,
                            stdout=subprocess.PIPE, stderr=err_path.open("w"), text=True)

    def waiting() -> bool:
        assert proc.poll() is None, f"rolemig exited early: {err_path.read_text()}"
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rolemig' "
            "AND wait_event_type = 'Lock'").fetchone()[0] == 1

    _wait(waiting, "rolemig to block on the locked user")
    return proc, blocker, err_path


def _assert_whole_batches(conn, before: dict[str, str]) -> set[str]:
    """Every user whose role changed was logged by a completed batch, and nobody else was."""
    now = roles(conn)
    changed = {k for k in now if now[k] != before[k]}
    logged = {r[0] for r in conn.execute(
        """SELECT l.user_key FROM migration_tracking.migration_log l
           JOIN migration_tracking.migration_batch b USING (batch_id)
           WHERE l.status = 'migrated' AND b.status = 'completed'""")}
    assert changed == logged
    assert conn.execute("SELECT count(*) FROM migration_tracking.migration_batch "
                        "WHERE status = 'running'").fetchone()[0] == 0
    return changed


def test_console_script_ctrl_c_finishes_the_batch_and_resumes(dsn, rolemig_db, tmp_path):
    _role_that_changes(rolemig_db, 17)
    before = roles(rolemig_db)
    assert cli(dsn, "backup").code == 0
    proc, blocker, err_path = _blocked_migration(dsn, rolemig_db, tmp_path, blocked_position=17)
    try:
        done = rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_batch "
                                  "WHERE status = 'completed'").fetchone()[0]
        assert done == 3  # users 0-14 in three batches (one before the script); the fourth waits for user 17
        proc.send_signal(signal.SIGINT)
        _wait(lambda: "stopping after the current batch" in err_path.read_text(), "the interrupt notice")
    finally:
        blocker.rollback()  # the fourth batch can now finish
        blocker.close()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == errors.INTERRUPTED, (out, err_path.read_text())
    assert "run `rolemig migrate` again to resume" in out
    processed = rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_log").fetchone()[0]
    assert processed == 20  # the batch in flight committed whole, then the loop stopped
    changed = _assert_whole_batches(rolemig_db, before)
    assert 0 < len(changed) < 80

    resumed = subprocess.run([_script(), "migrate", "--json", "--dsn", dsn], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["complete"] is True
    assert roles(rolemig_db) == expected_after_migration(rolemig_db, before)


def test_console_script_second_ctrl_c_rolls_the_batch_back(dsn, rolemig_db, tmp_path):
    _role_that_changes(rolemig_db, 12)
    before = roles(rolemig_db)
    assert cli(dsn, "backup").code == 0
    proc, blocker, err_path = _blocked_migration(dsn, rolemig_db, tmp_path, blocked_position=12)
    try:
        proc.send_signal(signal.SIGINT)
        _wait(lambda: "stopping after the current batch" in err_path.read_text(), "the interrupt notice")
        proc.send_signal(signal.SIGINT)  # abort the batch in flight: psycopg cancels the statement
        out, _ = proc.communicate(timeout=60)
    finally:
        blocker.rollback()
        blocker.close()
    assert proc.returncode == errors.INTERRUPTED, (out, err_path.read_text())
    processed = rolemig_db.execute("SELECT count(*) FROM migration_tracking.migration_log").fetchone()[0]
    assert processed == 10  # two whole batches (one before the script); the cancelled third left nothing
    _assert_whole_batches(rolemig_db, before)
    assert cli(dsn, "migrate", "-q").code == 0
    assert roles(rolemig_db) == expected_after_migration(rolemig_db, before)


def test_console_script_killed_mid_migration_leaves_whole_batches_and_the_server_stops(dsn, rolemig_db, tmp_path):
    """kill -9 of the CLI: the server's CALL stops at the batch it cannot report, committed batches stay whole."""
    _role_that_changes(rolemig_db, 17)
    before = roles(rolemig_db)
    assert cli(dsn, "backup").code == 0
    proc, blocker, _err_path = _blocked_migration(dsn, rolemig_db, tmp_path, blocked_position=17)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        blocker.rollback()  # the batch in flight may now go on, without anybody to report to
        blocker.close()

    def server_done() -> bool:
        return rolemig_db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rolemig'"
                                  ).fetchone()[0] == 0

    _wait(server_done, "the server to end the killed client's migration")
    changed = _assert_whole_batches(rolemig_db, before)
    # three batches before the kill; after it, the batch in flight and the next (the first progress
    # notice to the dead client is still accepted by the socket, the second fails), at most one more
    assert 15 <= len(changed) <= 30
    assert cli(dsn, "migrate", "-q").code == 0
    assert roles(rolemig_db) == expected_after_migration(rolemig_db, before)


# ------------------------------------------- the promises on the path users run (#17) ---

def test_access_is_unchanged_for_every_user_at_every_committed_batch(dsn, rolemig_db, rolemig_mapping):
    """Between two `rolemig migrate` batches the application reads as before: measured as PostgREST would."""
    from pytest_rolemig.access.matrix import choose_actors, compute_matrix, row_lookup
    from pytest_rolemig.access.report import compare
    from pytest_rolemig.access.store import ReachStore

    target = Target()
    assert cli(dsn, "backup").code == 0
    actors = choose_actors(rolemig_db, target, per_role=2)
    with ReachStore.beside(rolemig_db) as store:
        before = compute_matrix(rolemig_db, target, actors, "before", store)
        moved = 0
        for batch in range(1, 5):
            run = cli(dsn, "migrate", "--batch-size", "35", "--max-batches", "1", "--json")
            assert run.code == 0, run
            moved += run.json()["users_migrated"]
            now = compute_matrix(rolemig_db, target, actors, f"batch {batch}", store)
            result = compare(before, now, f"after batch {batch}", rolemig_mapping.access_changes,
                             row_lookup(rolemig_db))
            assert result.ok, result.text()
        assert run.json()["complete"] and moved == 80


def test_status_tells_runs_and_rollbacks_apart(dsn, rolemig_db):
    status = cli(dsn, "status", "--json").json()
    assert status["state"]["state"] == "not migrated" and status["runs"] == []
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "migrate", "--batch-size", "20", "--max-batches", "2").code == 0
    status = cli(dsn, "status", "--json").json()
    assert status["state"]["state"] == "migrating" and status["users_to_migrate"] > 0
    assert cli(dsn, "migrate", "--batch-size", "20").code == 0
    text = cli(dsn, "status")
    assert "State: migrated" in text.out and "rolemig validate" in text.out
    assert cli(dsn, "rollback", "--yes").code == 0
    status = cli(dsn, "status", "--json").json()
    assert status["state"]["state"] == "rolled back" and status["users_to_migrate"] == 80
    kinds = [(r["kind"], r["status"]) for r in status["runs"]]
    assert kinds[0] == ("rollback", "completed") and kinds[1:] == [("migration", "completed")] * 2
    # each run counts its own batches and users: 80 users moved in all, never more
    assert sum(r["users"] for r in status["runs"][1:]) == 80
    assert [r["batches"] for r in status["runs"][1:]] == [2, 2]  # one run per `rolemig migrate`, 4 batches of 20
    assert cli(dsn, "migrate", "--batch-size", "50").code == 0
    status = cli(dsn, "status", "--json").json()
    assert status["state"]["state"] == "migrated" and status["runs"][0]["kind"] == "migration"


@pytest.mark.parametrize("when", ["after", "mid"])
def test_rollback_without_an_id_undoes_the_migration_despite_a_later_backup(dsn, rolemig_db, when):
    before = roles(rolemig_db)
    assert cli(dsn, "backup", "--name", "before").code == 0
    argv = ("--batch-size", "20") + (("--max-batches", "3") if when == "mid" else ())
    assert cli(dsn, "migrate", *argv).code == 0
    later = cli(dsn, "backup", "--name", when, "--json").json()["backup_id"]
    moved = roles(rolemig_db)
    assert moved != before

    refused = cli(dsn, "rollback", later, "--yes")
    assert refused.code == errors.CHECKS_FAILED, refused
    assert "was taken after the migration started moving users" in refused.err
    assert "roll back to backup bk_" in refused.err and "migration_" not in refused.err.split("hint")[-1]
    assert roles(rolemig_db) == moved

    run = cli(dsn, "rollback", "--yes", "--json")
    assert run.code == 0, run
    assert run.json()["backup_id"] != later and roles(rolemig_db) == before
    assert {c["check_name"]: c["status"] for c in run.json()["validation"]}["migration_undone"] == "pass"


def test_migrate_resumes_on_the_backup_the_migration_started_from(dsn, rolemig_db):
    """A backup taken mid-migration is not the resumed run's base: one migration, one base backup."""
    first = cli(dsn, "backup", "--name", "before", "--json").json()["backup_id"]
    assert cli(dsn, "migrate", "--batch-size", "20", "--max-batches", "2").code == 0
    assert cli(dsn, "backup", "--name", "mid").code == 0
    resumed = cli(dsn, "migrate", "--batch-size", "20", "--json")
    assert resumed.code == 0, resumed.out
    assert resumed.json()["backup_id"] == first
    bases = rolemig_db.execute("SELECT DISTINCT details ->> 'backup_id' FROM migration_tracking.migration_batch "
                               "WHERE details ->> 'phase' = 'migrate'").fetchall()
    assert bases == [(first,)]


def test_status_after_an_emergency_rollback_whose_client_was_killed(dsn, rolemig_db):
    """kill -9 of the CLI while the server runs its rollback: the server commits; status reads the server."""
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "migrate", "--batch-size", "40", "--max-batches", "1").code == 0
    running = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rolemig' "
               "AND query LIKE '%%emergency_rollback%%' AND state = 'active'")
    with psycopg.connect(dsn) as blocker:  # a reader holds the table the restore must lock: it waits, retrying
        blocker.execute("SELECT 1 FROM public.user_profiles LIMIT 1")
        proc = subprocess.Popen([sys.executable, "-c", "from pytest_rolemig.cli import run; run()",
                                 "emergency-rollback", "--yes", "--dsn", dsn],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not rolemig_db.execute(running).fetchone()[0]:
                assert time.monotonic() < deadline and proc.poll() is None, "the rollback never started"
                time.sleep(0.05)
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            blocker.rollback()
    deadline = time.monotonic() + 60
    while rolemig_db.execute(running).fetchone()[0]:  # the server finishes the statement on its own
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status = cli(dsn, "status", "--json").json()
    assert status["state"]["state"] == "rolled back", status["state"]
    assert status["runs"][0]["kind"] == "emergency rollback" and status["runs"][0]["status"] == "completed"
