"""migration-control-system.sql: target configuration, role mapping, discovery and master control.

Real PostgreSQL through the plugin's fixtures: ``rolemig_db`` (everything installed, demo mapping,
130 users, no backup), ``rolemig_bare_db`` (application and users only) and ``rolemig_empty_db``.
Each function is exercised for its refusing result as well as its accepting one.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb
from sql_helpers import one, rows

from pytest_rolemig import resources
from pytest_rolemig.db.install import install
from pytest_rolemig.errors import InstallError
from pytest_rolemig.mapping import load_mapping

MY_SCHEMAS = ("migration_validation", "migration_control")
MY_FILES = ("migration-validation-functions.sql", "migration-control-system.sql", "role-migration.sql")
DEMO_MAPPING = load_mapping(resources.demo_mapping())


def raises(conn, query, params=None, *, match):
    with pytest.raises(psycopg.errors.RaiseException, match=match) as err:
        conn.execute(query, params)
    assert err.value.diag.message_hint, "every refusal carries a HINT"
    return err.value.diag


def configure(conn, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    return {r["setting"]: r["value"]
            for r in rows(conn, f"SELECT * FROM migration_control.configure_target({args})", kw)}


# ---------------------------------------------------------------- hygiene ----

ROW_TEXT = ["DateStyle=ISO, YMD", "IntervalStyle=postgres", "extra_float_digits=1", "bytea_output=hex",
            "xmloption=content"]
NO_RLS = ["row_security=off"]
EXTRA_SETTINGS = {
    "migration_control.migrate_batch": ["enable_seqscan=off", *NO_RLS],
    "migration_control.execute_role_migration": NO_RLS,
    "migration_control.committed_batch": NO_RLS,
    "migration_control.users_on_legacy_roles": NO_RLS,
    "migration_control.pending_count": NO_RLS,
    "migration_control.unchanged_count": [*NO_RLS, "enable_nestloop=off"],
    "migration_control.migration_state": NO_RLS,
    "migration_control.online_precheck": NO_RLS,
    "migration_control.refuse_unready_mapping": NO_RLS,
    "migration_validation.pre_migration_checks": NO_RLS,
    "migration_validation.validate_post_migration_state": NO_RLS,
    "migration_validation.find_role_mentions": NO_RLS,
    "migration_backup.create_comprehensive_backup": ["TimeZone=UTC", *ROW_TEXT, *NO_RLS],
    "migration_backup.validate_backup_completeness": ["TimeZone=UTC", *ROW_TEXT, *NO_RLS],
    "migration_backup.validate_rollback_success": ["TimeZone=UTC", *ROW_TEXT, *NO_RLS],
    "migration_backup.perform_rollback": [*ROW_TEXT, *NO_RLS, "work_mem=64MB"],
}


def test_every_function_pins_search_path_is_invoker_and_not_public(rolemig_db):
    # procedures that COMMIT cannot carry a SET clause; functions all do
    funcs = rows(rolemig_db, """
        SELECT n.nspname || '.' || p.proname AS name, p.prosecdef, p.proconfig,
               has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (%s) AND p.prokind = 'f' ORDER BY 1""", (list(MY_SCHEMAS),))
    names = {f["name"] for f in funcs}
    assert {"migration_control.configure_target", "migration_control.execute_role_migration",
            "migration_control.rewrite_role_literals", "migration_validation.test_user_authentication",
            "migration_validation.run_comprehensive_validation"} <= names
    for f in funcs:
        # search_path and jit = off pinned everywhere (catalog queries and batches of index
        # probes, priced high on default row estimates: JIT compiling took 0.5-1.8 s a query,
        # many times the query); the only other settings are migrate_batch's enable_seqscan =
        # off and unchanged_count's enable_nestloop = off (plans priced on stale log
        # statistics: a sequential scan of the table per batch, a nested loop of log and batches),
        # perform_rollback's work_mem (its hashes of copy, live table and log spilled to disk),
        # the settings that decide how rows render as text where backups are written, read
        # back and compared, and row_security = off where the application's rows are copied,
        # moved or checked
        assert f["proconfig"][:2] == ["search_path=pg_catalog, pg_temp", "jit=off"], f
        extra = EXTRA_SETTINGS.get(f["name"], [])
        assert f["proconfig"][2:] == extra, f
        assert f["prosecdef"] is False, f
        assert f["public_exec"] is False, f


def test_files_install_twice_and_keep_configuration(rolemig_db):
    before = rows(rolemig_db, "SELECT * FROM migration_control.role_mapping ORDER BY 1")
    rolemig_db.execute("INSERT INTO migration_validation.validation_results (validation_run, validation_type, "
                       "check_name, status) VALUES ('r', 't', 'c', 'pass')")
    for _ in range(2):
        for name in MY_FILES:
            rolemig_db.execute(resources.sql_file(name).read_text(encoding="utf-8").encode())
    assert rows(rolemig_db, "SELECT * FROM migration_control.role_mapping ORDER BY 1") == before
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_validation.validation_results")["n"] == 1
    for name in MY_FILES:
        text = resources.sql_file(name).read_text(encoding="utf-8").rstrip()
        assert text.startswith("-- ") and "Depends on" in text
        assert text.splitlines()[-1].startswith("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_")


# ------------------------------------------------------------------ target ----

def test_configure_target_stores_checked_target(rolemig_db):
    settings = configure(rolemig_db, p_batch_size=50, p_policy_schemas=["public"])
    assert settings == {"profiles_table": "public.user_profiles", "key_column": "id", "role_column": "role",
                        "user_column": "id",
                        "sessions_table": "auth.sessions", "sessions_key_column": "id",
                        "sessions_user_column": "user_id", "policy_schemas": "public", "batch_size": "50",
                        "auth_role": "authenticated", "role_claim": "user_role"}
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_control.target_config")["n"] == 1


def test_configure_target_refuses_missing_or_unfit_objects(rolemig_db):
    diag = raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_profiles_table => 'public.members')",
                  match="target table public.members does not exist")
    assert "configure_target" in diag.message_hint
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_sessions_table => 'auth.nope')",
           match="target table auth.nope does not exist")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_role_column => 'rank')",
           match=r"target column public.user_profiles.rank does not exist")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_sessions_user_column => 'owner')",
           match=r"target column auth.sessions.owner does not exist")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_profiles_table => 'user_profiles')",
           match="table names must be schema-qualified: got user_profiles")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_key_column => 'email')",
           match="key column public.user_profiles.email is not unique")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_role_column => 'metadata')",
           match="role column public.user_profiles.metadata has type jsonb")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_policy_schemas => ARRAY['public','app'])",
           match=r"policy schema\(s\) app do not exist")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_batch_size => 0)",
           match="batch size must be a positive integer, got 0")
    rolemig_db.execute("CREATE TABLE auth.pairs (a int, b int, user_id uuid, PRIMARY KEY (a, b))")
    raises(rolemig_db, "SELECT * FROM migration_control.configure_target(p_sessions_table => 'auth.pairs')",
           match="sessions table auth.pairs has no single-column primary key")
    # nothing was stored by the refused calls
    assert one(rolemig_db, "SELECT profiles_table, role_column, batch_size FROM migration_control.target_config") == {
        "profiles_table": "user_profiles", "role_column": "role", "batch_size": 1000}


def test_ensure_target_configured_inserts_defaults_and_rechecks(rolemig_db):
    rolemig_db.execute("DELETE FROM migration_control.target_config")
    result = {r["setting"]: r["value"]
              for r in rows(rolemig_db, "SELECT * FROM migration_control.ensure_target_configured()")}
    assert result["profiles_table"] == "public.user_profiles" and result["sessions_key_column"] == "id"
    rolemig_db.execute("ALTER TABLE public.user_profiles RENAME TO members")
    diag = raises(rolemig_db, "SELECT * FROM migration_control.ensure_target_configured()",
                  match="target table public.user_profiles does not exist")
    assert "load the application schema first" in diag.message_hint


def test_install_on_database_without_the_application_fails_clearly(rolemig_empty_db):
    with pytest.raises(InstallError, match="target table public.user_profiles does not exist") as err:
        install(rolemig_empty_db, mapping=DEMO_MAPPING)
    assert "HINT: load the application schema first" in str(err.value)
    # one transaction: nothing left behind
    assert rows(rolemig_empty_db, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'migration_%%'") == []


def test_install_on_bare_application_works(rolemig_bare_db):
    install(rolemig_bare_db, mapping=DEMO_MAPPING)
    status = {r["component"]: r["status"]
              for r in rows(rolemig_bare_db, "SELECT * FROM migration_control.get_infrastructure_status()")}
    assert status == {"schemas": "pass", "tables": "pass", "functions": "pass", "target": "pass",
                      "mapping": "pass", "backups": "warn", "migrations": "pass"}


# ----------------------------------------------------------------- mapping ----

def test_load_role_mapping_replaces_both_tables(rolemig_db):
    result = rows(rolemig_db, "SELECT * FROM migration_control.load_role_mapping(%s, %s)",
                  (Jsonb({"super_admin": "boss", "viewer": "reader"}), ["boss", "reader"]))
    assert result == [{"legacy_role": "super_admin", "new_role": "boss"},
                      {"legacy_role": "viewer", "new_role": "reader"}]
    assert rows(rolemig_db, "SELECT role_name, position FROM migration_control.new_roles ORDER BY position") == [
        {"role_name": "boss", "position": 1}, {"role_name": "reader", "position": 2}]


@pytest.mark.parametrize(("mapping", "new_roles", "message"), [
    ({"super_admin": "root"}, ["owner"], r"role mapping targets outside the new roles: super_admin -> root"),
    ({"super_admin": 3}, ["owner"], r"non-string values: 'super_admin' -> 3"),
    ({"": "owner"}, ["owner"], r"empty names or non-string values: '' -> \"owner\""),
    ({"super_admin": ""}, ["owner"], r"empty names or non-string values"),
    ({}, ["owner"], r"role mapping must be a non-empty JSON object"),
    (["owner"], ["owner"], r"role mapping must be a non-empty JSON object"),
    ({"super_admin": "owner"}, [], r"new roles list is empty"),
    ({"super_admin": "owner"}, ["owner", ""], r"new roles list contains empty names: ''"),
    ({"super_admin": "owner"}, ["owner", "owner"], r"new role\(s\) listed twice: owner"),
])
def test_load_role_mapping_refuses_bad_documents(rolemig_db, mapping, new_roles, message):
    before = rows(rolemig_db, "SELECT * FROM migration_control.role_mapping ORDER BY 1")
    raises(rolemig_db, "SELECT * FROM migration_control.load_role_mapping(%s, %s::text[])",
           (Jsonb(mapping), new_roles), match=message)
    assert rows(rolemig_db, "SELECT * FROM migration_control.role_mapping ORDER BY 1") == before


def test_discover_legacy_roles(rolemig_db):
    found = rows(rolemig_db, "SELECT * FROM migration_control.discover_legacy_roles()")
    assert {r["role_name"]: r["mapped_to"] for r in found} == DEMO_MAPPING.mapping
    assert all(r["sources"] == ["check", "data", "mapping"] for r in found)

    rolemig_db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE role = 'team_lead'")
    rolemig_db.execute("DELETE FROM migration_control.role_mapping WHERE legacy_role = 'team_lead'")
    team_lead = [r for r in rows(rolemig_db, "SELECT * FROM migration_control.discover_legacy_roles()")
                 if r["role_name"] == "team_lead"]
    assert team_lead == [{"role_name": "team_lead", "sources": ["check"], "mapped_to": None}]


def _roles_in_data(conn):
    found = one(conn, "SELECT roles, has_null FROM migration_control.roles_in_data()")
    return found["roles"], found["has_null"]


def _distinct_roles(conn):
    return (sorted(r["role"] for r in rows(conn, "SELECT DISTINCT role FROM public.user_profiles "
                                                 "WHERE role IS NOT NULL")),
            one(conn, "SELECT count(*) > 0 AS b FROM public.user_profiles WHERE role IS NULL")["b"])


@pytest.mark.parametrize("indexed", [True, False], ids=["index on role: loose index scan", "no index: one pass"])
def test_roles_in_data_matches_a_plain_distinct(rolemig_db, indexed):
    if not indexed:
        rolemig_db.execute("DROP INDEX public.user_profiles_role_idx")
    assert _roles_in_data(rolemig_db) == _distinct_roles(rolemig_db)
    assert len(_roles_in_data(rolemig_db)[0]) == 13
    rolemig_db.execute("ALTER TABLE public.user_profiles ALTER COLUMN role DROP NOT NULL")
    rolemig_db.execute("UPDATE public.user_profiles SET role = NULL WHERE role = 'author'")
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE role = 'team_lead'")
    assert _roles_in_data(rolemig_db) == _distinct_roles(rolemig_db)
    roles, has_null = _roles_in_data(rolemig_db)
    assert has_null and "author" not in roles and "team_lead" not in roles and len(roles) == 11
    # the migration's refusal names the users without a role
    with pytest.raises(psycopg.errors.RaiseException, match=r"users have unknown roles: NULL \(10 users\)"):
        rolemig_db.execute("SELECT * FROM migration_control.execute_role_migration()")


def test_discover_leaves_out_new_roles_written_by_the_migration(rolemig_db):
    # the first user in key order maps to 'owner', so the first batch surely writes it (with
    # random keys, the first 21 users held no super_admin or org_owner in about 3% of runs)
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'super_admin' "
                       "WHERE id = (SELECT id FROM public.user_profiles ORDER BY id LIMIT 1)")
    one(rolemig_db, "SELECT * FROM migration_backup.create_comprehensive_backup()")
    one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration(p_batch_size => 7, p_max_batches => 3)")
    assert one(rolemig_db, "SELECT count(*) AS n FROM public.user_profiles WHERE role = 'owner'")["n"] > 0
    names = {r["role_name"] for r in rows(rolemig_db, "SELECT * FROM migration_control.discover_legacy_roles()")}
    assert names == set(DEMO_MAPPING.mapping)


# ---------------------------------------------------------- master control ----

def test_initialize_exercises_every_component_and_leaves_nothing(rolemig_db):
    result = {r["component"]: r
              for r in rows(rolemig_db, "SELECT * FROM migration_control.initialize_migration_infrastructure()")}
    assert {k: v["status"] for k, v in result.items()} == dict.fromkeys(
        ["target", "mapping", "tracking", "backup", "validation"], "pass")
    assert result["backup"]["details"]["profiles_count"] == 130
    assert result["tracking"]["details"]["processed_users"] == 1
    counts = one(rolemig_db, """SELECT (SELECT count(*) FROM migration_backup.backup_log) AS backups,
                                       (SELECT count(*) FROM migration_tracking.migration_batch) AS batches,
                                       (SELECT count(*) FROM migration_validation.validation_results) AS results""")
    assert counts == {"backups": 0, "batches": 0, "results": 0}


def test_initialize_reports_a_broken_component(rolemig_db):
    rolemig_db.execute("DROP FUNCTION migration_tracking.complete_migration_batch(text, text, text)")
    result = {r["component"]: r
              for r in rows(rolemig_db, "SELECT * FROM migration_control.initialize_migration_infrastructure()")}
    assert result["tracking"]["status"] == "fail"
    assert "complete_migration_batch" in result["tracking"]["details"]["error"]
    assert result["backup"]["status"] == "pass"


def test_prepare_for_migration_takes_and_checks_a_backup(rolemig_db):
    steps = {r["step"]: r
             for r in rows(rolemig_db, "SELECT * FROM migration_control.prepare_for_migration('rehearsal')")}
    assert list(steps) == ["backup", "backup_validation", "pre_migration_validation", "ready"]
    assert {k: v["status"] for k, v in steps.items()} == dict.fromkeys(steps, "pass")
    bid = steps["backup"]["details"]["backup_id"]
    assert one(rolemig_db, "SELECT backup_name, status FROM migration_backup.backup_log WHERE backup_id = %s",
               (bid,)) == {"backup_name": "rehearsal_backup", "status": "completed"}
    runs = one(rolemig_db, "SELECT count(DISTINCT validation_run) AS n FROM migration_validation.validation_results")
    assert runs["n"] == 1


def test_prepare_for_migration_reports_failing_validation(rolemig_db):
    rolemig_db.execute("DELETE FROM migration_control.role_mapping WHERE legacy_role = 'author'")
    steps = {r["step"]: r for r in rows(rolemig_db, "SELECT * FROM migration_control.prepare_for_migration()")}
    assert steps["backup"]["status"] == "pass"
    assert steps["pre_migration_validation"]["status"] == "fail"
    assert {c["check_name"] for c in steps["pre_migration_validation"]["details"]["failing"]} == {
        "all_roles_known", "mapping_total"}
    assert steps["ready"]["status"] == "fail"
    raises(rolemig_db, "SELECT * FROM migration_control.prepare_for_migration('')",
           match="migration name must not be empty")


def test_infrastructure_status_lists_missing_pieces(rolemig_db):
    status = {r["component"]: r
              for r in rows(rolemig_db, "SELECT * FROM migration_control.get_infrastructure_status()")}
    assert status["backups"]["status"] == "warn" and status["functions"]["status"] == "pass"
    one(rolemig_db, "SELECT * FROM migration_backup.create_comprehensive_backup()")
    rolemig_db.execute("DROP FUNCTION migration_backup.get_backup_summary()")
    rolemig_db.execute("UPDATE migration_control.target_config SET role_column = 'rank'")
    status = {r["component"]: r
              for r in rows(rolemig_db, "SELECT * FROM migration_control.get_infrastructure_status()")}
    assert status["functions"]["status"] == "fail"
    assert status["functions"]["details"]["missing"] == ["migration_backup.get_backup_summary"]
    assert status["target"]["status"] == "fail" and "rank" in status["target"]["details"]["error"]
    assert status["backups"]["status"] == "pass" and status["backups"]["details"]["completed"] == 1


# ------------------------------------------------ mapping changes mid-migration ----

CHANGED_MAPPING = {**DEMO_MAPPING.mapping, "support_agent": "editor"}
LOAD = "SELECT * FROM migration_control.load_role_mapping(%s, %s::text[])"


def _migrate_one_batch(conn) -> str:
    """A backup and one batch of 10 users: a migration under way. Returns the backup id."""
    backup_id = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup('b')")["backup_id"]
    one(conn, "SELECT * FROM migration_control.execute_role_migration(p_batch_size => 10, p_max_batches => 1)")
    assert one(conn, "SELECT migration_control.users_moved_since_rollback() AS n")["n"] > 0
    return backup_id


def _mapping(conn):
    return (rows(conn, "SELECT * FROM migration_control.role_mapping ORDER BY 1"),
            rows(conn, "SELECT * FROM migration_control.new_roles ORDER BY position"))


def test_load_role_mapping_refuses_another_mapping_mid_migration(rolemig_db):
    _migrate_one_batch(rolemig_db)
    before = _mapping(rolemig_db)
    diag = raises(rolemig_db, LOAD, (Jsonb(CHANGED_MAPPING), list(DEMO_MAPPING.new_roles)),
                  match=r"while a migration is in effect: support_agent: moderator -> editor\n")
    assert "Nothing was changed" in diag.message_detail
    assert diag.message_hint.startswith("roll back first")
    unmapped = {k: v for k, v in DEMO_MAPPING.mapping.items() if k != "viewer"}
    raises(rolemig_db, LOAD, (Jsonb(unmapped), list(DEMO_MAPPING.new_roles)), match=r"viewer: viewer -> unmapped")
    raises(rolemig_db, LOAD, (Jsonb(DEMO_MAPPING.mapping), [*DEMO_MAPPING.new_roles, "guest"]),
           match=r"new roles \+guest")
    assert _mapping(rolemig_db) == before
    # the same mapping again (a repeated `rolemig install`) is allowed, in any order of the new roles
    rows(rolemig_db, LOAD, (Jsonb(DEMO_MAPPING.mapping), list(reversed(DEMO_MAPPING.new_roles))))
    assert _mapping(rolemig_db)[0] == before[0]


def test_load_role_mapping_refuses_after_a_finished_migration_until_rolled_back(rolemig_db):
    backup_id = _migrate_one_batch(rolemig_db)
    assert one(rolemig_db, "SELECT status FROM migration_control.execute_role_migration()")["status"] == "completed"
    raises(rolemig_db, LOAD, (Jsonb(CHANGED_MAPPING), list(DEMO_MAPPING.new_roles)), match="in effect")
    rollback = one(rolemig_db, "SELECT * FROM migration_backup.execute_rollback(%s)", (backup_id,))
    assert rollback["status"] == "completed"
    assert one(rolemig_db, "SELECT migration_control.users_moved_since_rollback() AS n")["n"] == 0
    rows(rolemig_db, LOAD, (Jsonb(CHANGED_MAPPING), list(DEMO_MAPPING.new_roles)))
    assert one(rolemig_db, "SELECT new_role FROM migration_control.role_mapping "
                           "WHERE legacy_role = 'support_agent'")["new_role"] == "editor"
    # a migration started after the rollback counts again (a batch big enough to hold users who
    # move: the walk goes in physical order, and after the rollback the first rows in the table
    # are those neither the migration nor the rollback rewrote, the identity-mapped ones)
    moved = one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration(p_batch_size => 100, "
                            "p_max_batches => 1)")["users_migrated"]
    assert moved > 0
    raises(rolemig_db, LOAD, (Jsonb(DEMO_MAPPING.mapping), list(DEMO_MAPPING.new_roles)),
           match=r"support_agent: editor -> moderator")


def test_users_moved_since_rollback_without_the_rollback_log(rolemig_db):
    # migration-control-system.sql installs before migration-rollback-system.sql
    assert one(rolemig_db, "SELECT migration_control.users_moved_since_rollback() AS n")["n"] == 0
    _migrate_one_batch(rolemig_db)
    rolemig_db.execute("DROP TABLE migration_backup.rollback_log CASCADE")
    assert one(rolemig_db, "SELECT migration_control.users_moved_since_rollback() AS n")["n"] > 0
    raises(rolemig_db, LOAD, (Jsonb(CHANGED_MAPPING), list(DEMO_MAPPING.new_roles)), match="in effect")
