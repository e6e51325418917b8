"""Backup, migration, rollback and validation against the bare SQL a DBA would type, on the same data.

Each test runs twice per size, ``baseline`` first, then ``project``; the
project run stores ``ratio`` = project median / baseline median in its
extra_info, and the end-of-run summary prints every ratio.

Baselines (the demo's tables; the role CHECK constraint has to make room for
the new roles, as the project's migration does, so the baselines replace it too):

- backup: ``CREATE TABLE ... AS SELECT *`` of profiles, sessions and ``pg_policy``;
- migration: drop the role CHECK, one ``UPDATE ... FROM role_mapping``, add the CHECK for the new roles
  (the same baseline for ``migration_cli``: ``rolemig migrate``, one committed call per batch
  so the progress bar moves and Ctrl-C stops between batches);
- rollback: drop the CHECK, one ``UPDATE ... FROM`` the backup table, add the original CHECK back;
- validation: one ``count(*)`` over profiles, sessions and the backup's two tables.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from conftest import measure
from pytest_rolemig import api
from pytest_rolemig.cli import main as rolemig_cli

KINDS = ["baseline", "project"]
LEGACY_CHECK = (
    "CHECK (role IN ('super_admin', 'admin', 'org_owner', 'org_admin', 'billing_admin', 'manager', "
    "'team_lead', 'editor', 'author', 'contributor', 'moderator', 'support_agent', 'viewer'))"
)


def _baseline_backup(conn: Any, **_: Any) -> None:
    conn.execute(
        "CREATE TABLE public.bench_profiles_copy AS SELECT * FROM public.user_profiles;"
        "CREATE TABLE public.bench_sessions_copy AS SELECT * FROM auth.sessions;"
        "CREATE TABLE public.bench_policies_copy AS SELECT * FROM pg_catalog.pg_policy;"
    )


def _baseline_migration(conn: Any, **_: Any) -> None:
    new_roles = conn.execute(
        "SELECT string_agg(quote_literal(role_name), ', ') FROM migration_control.new_roles"
    ).fetchone()[0]
    with conn.transaction():
        conn.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
        updated = conn.execute(
            "UPDATE public.user_profiles AS p SET role = m.new_role FROM migration_control.role_mapping AS m "
            "WHERE p.role = m.legacy_role AND p.role IS DISTINCT FROM m.new_role"
        ).rowcount
        conn.execute(f"ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check "
                     f"CHECK (role IN ({new_roles}))")
    assert updated > 0


def _baseline_rollback(conn: Any, backup_id: str) -> None:
    with conn.transaction():
        conn.execute("ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_role_check")
        updated = conn.execute(
            "UPDATE public.user_profiles AS p SET role = b.role "
            "FROM migration_backup.user_profiles_complete_backup AS b "
            "WHERE b.backup_id = %s AND b.user_key = p.id::text AND p.role IS DISTINCT FROM b.role",
            (backup_id,),
        ).rowcount
        conn.execute(f"ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_role_check {LEGACY_CHECK}")
    assert updated > 0


def _baseline_validation(conn: Any, backup_id: str) -> None:
    conn.execute(
        "SELECT (SELECT count(*) FROM public.user_profiles), (SELECT count(*) FROM auth.sessions), "
        "(SELECT count(*) FROM migration_backup.user_profiles_complete_backup WHERE backup_id = %s), "
        "(SELECT count(*) FROM migration_backup.user_sessions_backup WHERE backup_id = %s)",
        (backup_id, backup_id),
    ).fetchone()


@pytest.mark.parametrize("kind", KINDS)
def test_backup(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str) -> None:
    setup, teardown = fresh_copy(prepared.seeded)

    def project(conn: Any, **_: Any) -> None:
        assert api.backup(conn, "bench").profiles_count == prepared.size

    measure(benchmark, results, "backup", prepared.size, kind,
            project if kind == "project" else _baseline_backup, setup, teardown)


@pytest.mark.parametrize("kind", KINDS)
def test_migration(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, rolemig_config: Any,
                   kind: str) -> None:
    setup, teardown = fresh_copy(prepared.backed_up)

    def project(conn: Any, **_: Any) -> None:
        done = api.migrate(conn, backup_id=prepared.backup_id, batch_size=rolemig_config.target.batch_size)
        assert done.users_migrated + done.users_unchanged == prepared.size

    measure(benchmark, results, "migration", prepared.size, kind,
            project if kind == "project" else _baseline_migration, setup, teardown)


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

    measure(benchmark, results, "migration_cli", prepared.size, kind,
            project if kind == "project" else _baseline_migration, setup, teardown)


@pytest.mark.parametrize("kind", KINDS)
def test_rollback(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str) -> None:
    setup, teardown = fresh_copy(prepared.migrated)

    def project(conn: Any, **_: Any) -> None:
        assert api.rollback(conn, prepared.backup_id, "bench").status == "completed"

    def baseline(conn: Any, **_: Any) -> None:
        _baseline_rollback(conn, prepared.backup_id)

    measure(benchmark, results, "rollback", prepared.size, kind,
            project if kind == "project" else baseline, setup, teardown)


@pytest.mark.parametrize("phase", ["pre", "post"])
@pytest.mark.parametrize("kind", KINDS)
def test_validation(benchmark: Any, results: Any, prepared: Any, fresh_copy: Any, kind: str,
                    phase: str) -> None:
    """``run_comprehensive_validation`` before (backed-up state) and after the migration."""
    setup, teardown = fresh_copy(prepared.backed_up if phase == "pre" else prepared.migrated)

    def project(conn: Any, **_: Any) -> None:
        report = api.validate(conn, f"{phase}_migration")
        assert report.ok, report.render(only_problems=True)

    def baseline(conn: Any, **_: Any) -> None:
        _baseline_validation(conn, prepared.backup_id)

    measure(benchmark, results, f"validation_{phase}", prepared.size, kind,
            project if kind == "project" else baseline, setup, teardown)
