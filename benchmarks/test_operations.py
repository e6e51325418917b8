"""Backup, migration, rollback and validation against the bare SQL a DBA would type, on the same data.

Each test runs three times per size, ``baseline`` first, then ``floor``, then
``project`` (the migration also as ``backfill``, see below); the floor and project
runs store ``ratio`` = their median / the baseline's median in their extra_info,
and the end-of-run summary prints every ratio and the verdict on each target
(``bench_report.TARGETS``).

Baselines (the demo's tables; the role CHECK constraint has to make room for
the new roles, as the project's migration does, so the baselines replace it too):

- backup: ``CREATE TABLE ... AS SELECT *`` of profiles, sessions and ``pg_policy``;
- migration: drop the role CHECK, one ``UPDATE ... FROM role_mapping``, add the CHECK for the new roles
  (the same baseline for ``migration_cli``: ``rolemig migrate``, a COMMIT after every batch
  so the progress bar moves and Ctrl-C stops between batches);
- rollback: drop the CHECK, one ``UPDATE ... FROM`` the backup's typed copy of the profiles, add
  the original CHECK back;
- validation: one ``count(*)`` over profiles, sessions and the backup's two copies.

The backfill, for the migration: what a hand-written pgroll-style backfill does, a procedure
walking the profiles in keyset batches of 1,000 by primary key, each batch one ``UPDATE ... FROM
role_mapping`` that logs its changed users (unindexed log, from RETURNING) and commits.

Floors: the baseline plus the least of what the issue also asks for, written as bare SQL.
A floor above a target means no design that does that work can meet the target here:

- backup: the baseline's copies, then one checksum pass over them (``hash_record_extended``,
  the cheapest row hash PostgreSQL has): a backup that can later prove its content unchanged
  has to hash every row once;
- migration and rollback: the baseline's ``UPDATE`` writing one log row per changed user
  into an unindexed table, in the same statement (key, old and new role; a rollback's row
  has key and restored role only);
- validation: the baseline's counts, plus one checksum pass over the live tables; the backup
  side is only counted, so this floor is generous (a content check reads both sides).
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from conftest import measure
from pytest_rolemig import api
from pytest_rolemig.cli import main as rolemig_cli

KINDS = ["baseline", "floor", "project"]
LEGACY_CHECK = (
    "CHECK (role IN ('super_admin', 'admin', 'org_owner', 'org_admin', 'billing_admin', 'manager', "
    "'team_lead', 'editor', 'author', 'contributor', 'moderator', 'support_agent', 'viewer'))"
)


def _backup(conn: Any, checksum: bool) -> None:
    conn.execute(
        "CREATE TABLE public.bench_profiles_copy AS SELECT * FROM public.user_profiles;"
        "CREATE TABLE public.bench_sessions_copy AS SELECT * FROM auth.sessions;"
        "CREATE TABLE public.bench_policies_copy AS SELECT * FROM pg_catalog.pg_policy;"
    )
    if checksum:  # the floor
        conn.execute(
            "SELECT (SELECT sum(hash_record_extended(c, 0)) FROM public.bench_profiles_copy AS c), "
            "(SELECT sum(hash_record_extended(c, 0)) FROM public.bench_sessions_copy AS c)").fetchone()


def _update_roles(conn: Any, update: str, returning: str, params: tuple[Any, ...], check: str,
                  log: bool) -> None:
    """Drop the role CHECK, run ``update``, add ``check``.

    With ``log`` (the floor) the rows ``update`` + ``returning`` gives (key, old role, new role)
    go into an unindexed log table in the same statement; the table is created first. Without
    it nothing is returned: sending the rows to the client would slow the baseline down.
    """
    if log:
        conn.execute("CREATE TABLE public.bench_floor_log "
                     "(user_key text NOT NULL, old_role text, new_role text)")
        update = (f"WITH changed AS ({update} {returning}) "
                  "INSERT INTO public.bench_floor_log SELECT * FROM changed")
    with conn.transaction():
        conn.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
        updated = conn.execute(update, params).rowcount
        conn.execute(f"ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check {check}")
    assert updated > 0


def _migration(conn: Any, log: bool) -> None:
    new_roles = conn.execute(
        "SELECT string_agg(quote_literal(role_name), ', ') FROM migration_control.new_roles"
    ).fetchone()[0]
    _update_roles(conn,
                  "UPDATE public.user_profiles AS p SET role = m.new_role "
                  "FROM migration_control.role_mapping AS m "
                  "WHERE p.role = m.legacy_role AND p.role IS DISTINCT FROM m.new_role",
                  "RETURNING p.id::text, m.legacy_role, m.new_role",
                  (), f"CHECK (role IN ({new_roles}))", log)


def _copies(conn: Any, backup_id: str) -> tuple[str, str]:
    """The backup's typed copies of profiles and sessions, as qualified names."""
    profiles, sessions = conn.execute(
        "SELECT format('migration_backup.%%I', profiles_copy), format('migration_backup.%%I', sessions_copy) "
        "FROM migration_backup.backup_log WHERE backup_id = %s", (backup_id,)).fetchone()
    return profiles, sessions


def _backfill(conn: Any) -> None:
    """The pgroll-style backfill: keyset batches of 1,000 in a procedure, COMMIT after each, logged."""
    new_roles = conn.execute(
        "SELECT string_agg(quote_literal(role_name), ', ') FROM migration_control.new_roles").fetchone()[0]
    conn.execute("""
        CREATE TABLE public.bench_backfill_log (user_key text NOT NULL, old_role text, new_role text);
        CREATE PROCEDURE public.bench_backfill(p_batch integer) LANGUAGE plpgsql AS $$
        DECLARE
            v_last uuid;
        BEGIN
            LOOP
                WITH batch AS (SELECT p.id FROM public.user_profiles AS p
                                WHERE v_last IS NULL OR p.id > v_last ORDER BY p.id LIMIT p_batch),
                     changed AS (UPDATE public.user_profiles AS p SET role = m.new_role
                                   FROM batch AS b, migration_control.role_mapping AS m
                                  WHERE p.id = b.id AND p.role = m.legacy_role AND p.role IS DISTINCT FROM m.new_role
                                 RETURNING p.id::text, m.legacy_role, m.new_role),
                     logged AS (INSERT INTO public.bench_backfill_log SELECT * FROM changed)
                SELECT (SELECT b.id FROM batch AS b ORDER BY b.id DESC LIMIT 1) INTO v_last;
                EXIT WHEN v_last IS NULL;
                COMMIT;
            END LOOP;
        END
        $$""")
    conn.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
    conn.execute("CALL public.bench_backfill(1000)")
    conn.execute(f"ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check "
                 f"CHECK (role IN ({new_roles}))")
    assert conn.execute("SELECT count(*) FROM public.bench_backfill_log").fetchone()[0] > 0


def _rollback(conn: Any, backup_id: str, log: bool) -> None:
    # RETURNING sees the row as updated and nothing else holds the old role without another
    # scan of the table: the floor logs key and restored role (less than a real log would)
    profiles, _sessions = _copies(conn, backup_id)
    _update_roles(conn,
                  f"UPDATE public.user_profiles AS p SET role = b.role FROM {profiles} AS b "
                  "WHERE b.id = p.id AND p.role IS DISTINCT FROM b.role",
                  "RETURNING p.id::text, NULL::text, b.role",
                  (), LEGACY_CHECK, log)


def _validation(conn: Any, backup_id: str, checksum: bool) -> None:
    profiles, sessions = _copies(conn, backup_id)
    conn.execute(
        "SELECT (SELECT count(*) FROM public.user_profiles), (SELECT count(*) FROM auth.sessions), "
        f"(SELECT count(*) FROM {profiles}), (SELECT count(*) FROM {sessions})").fetchone()
    if checksum:  # the floor
        conn.execute("SELECT (SELECT sum(hash_record_extended(t, 0)) FROM public.user_profiles AS t), "
                     "(SELECT sum(hash_record_extended(t, 0)) FROM auth.sessions AS t)").fetchone()


@pytest.mark.parametrize("kind", KINDS)
def test_backup(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str) -> None:
    setup, teardown = fresh_copy(prepared.seeded)

    def project(conn: Any, **_: Any) -> None:
        assert api.backup(conn, "bench").profiles_count == prepared.size

    def bare(conn: Any, **_: Any) -> None:
        _backup(conn, checksum=kind == "floor")

    measure(benchmark, results, "backup", prepared.size, kind,
            project if kind == "project" else bare, setup, teardown)


@pytest.mark.parametrize("kind", [*KINDS[:2], "backfill", KINDS[2]])
def test_migration(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, rolemig_config: Any,
                   kind: str) -> None:
    setup, teardown = fresh_copy(prepared.backed_up)

    def project(conn: Any, **_: Any) -> None:
        done = api.migrate(conn, backup_id=prepared.backup_id, batch_size=rolemig_config.target.batch_size)
        assert done.users_migrated + done.users_unchanged == prepared.size

    def bare(conn: Any, **_: Any) -> None:
        if kind == "backfill":
            _backfill(conn)
        else:
            _migration(conn, log=kind == "floor")

    measure(benchmark, results, "migration", prepared.size, kind,
            project if kind == "project" else bare, setup, teardown)


@pytest.mark.parametrize("kind", KINDS)
def test_migration_cli(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, rolemig_config: Any,
                       kind: str) -> None:
    setup, teardown = fresh_copy(prepared.backed_up)

    def project(conn: Any, **_: Any) -> None:
        out, err = io.StringIO(), io.StringIO()
        argv = ["migrate", "--dsn", conn.info.dsn, "--backup-id", prepared.backup_id,
                "--batch-size", str(rolemig_config.target.batch_size), "--no-validate", "--quiet", "--json"]
        code = rolemig_cli(argv, out, err)
        assert code == 0, (out.getvalue(), err.getvalue())
        done = json.loads(out.getvalue())
        assert done["complete"] and done["users_migrated"] + done["users_unchanged"] == prepared.size

    def bare(conn: Any, **_: Any) -> None:
        _migration(conn, log=kind == "floor")

    measure(benchmark, results, "migration_cli", prepared.size, kind,
            project if kind == "project" else bare, setup, teardown)


@pytest.mark.parametrize("kind", KINDS)
def test_rollback(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str) -> None:
    setup, teardown = fresh_copy(prepared.migrated)

    def project(conn: Any, **_: Any) -> None:
        assert api.rollback(conn, prepared.backup_id, "bench").status == "completed"

    def bare(conn: Any, **_: Any) -> None:
        _rollback(conn, prepared.backup_id, log=kind == "floor")

    measure(benchmark, results, "rollback", prepared.size, kind,
            project if kind == "project" else bare, setup, teardown)


@pytest.mark.parametrize("phase", ["pre", "post"])
@pytest.mark.parametrize("kind", KINDS)
def test_validation(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str,
                    phase: str) -> None:
    """``run_comprehensive_validation`` before (backed-up state) and after the migration."""
    setup, teardown = fresh_copy(prepared.backed_up if phase == "pre" else prepared.migrated)

    def project(conn: Any, **_: Any) -> None:
        report = api.validate(conn, f"{phase}_migration")
        assert report.ok, report.render(only_problems=True)

    def bare(conn: Any, **_: Any) -> None:
        _validation(conn, prepared.backup_id, checksum=kind == "floor")

    measure(benchmark, results, f"validation_{phase}", prepared.size, kind,
            project if kind == "project" else bare, setup, teardown)
