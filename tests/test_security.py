"""migration-security.sql: the API roles reach nothing, and every security check can fail.

Real PostgreSQL through the plugin's fixtures. Refusals are proven by acting as the API roles
(``SET ROLE anon`` / ``authenticated`` / ``service_role``, which are not superusers, so nothing is
bypassed), with the demo's Supabase-style grants in place and, in one scenario, with the broad
``ALTER DEFAULT PRIVILEGES`` a Supabase project has before the infrastructure is installed.
Each check of ``validate_security()`` is driven to ``fail`` by one deliberate weakening.
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pytest_rolemig import api, resources
from pytest_rolemig.assertions import RolemigAssertionError, assert_checks_pass
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.db import install as installer
from pytest_rolemig.target import Target

SCHEMAS = ("migration_tracking", "migration_backup", "migration_validation", "migration_control")
API_ROLES = ("anon", "authenticated", "service_role")
CHECKS = ("migration_objects_owned", "migration_objects_not_exposed", "migration_default_privileges",
          "backup_tables_protected", "security_definer_search_path", "application_tables_rls")


def rows(conn, query, params=None):
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def one(conn, query, params=None):
    (row,) = rows(conn, query, params)
    return row


def security(conn) -> CheckReport:
    return CheckReport.from_rows("validate_security",
                                 conn.execute("SELECT * FROM migration_validation.validate_security()"))


@contextmanager
def acting_as(conn, role):
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    try:
        yield
    finally:
        conn.execute("RESET ROLE")


def routine_calls(conn):
    """One call per routine of the migration schemas, every argument NULL of its type."""
    return [r["call"] for r in rows(conn, """
        SELECT format('%%s %%I.%%I(%%s)', CASE p.prokind WHEN 'p' THEN 'CALL' ELSE 'SELECT' END, n.nspname, p.proname,
                      (SELECT coalesce(string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY o), '')
                         FROM unnest(p.proargtypes) WITH ORDINALITY AS u(t, o))) AS call
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (%s) AND p.prokind IN ('f', 'p') ORDER BY 1""", (list(SCHEMAS),))]


def relations(conn):
    return [r["name"] for r in rows(conn, """
        SELECT format('%%I.%%I', n.nspname, c.relname) AS name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1""", (list(SCHEMAS),))]


def refusals(conn, role, statements):
    """Statements that were NOT refused with a permission error when run as ``role``."""
    allowed = []
    with acting_as(conn, role):
        for statement in statements:
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            except psycopg.Error as exc:  # reached the code: that is a hole, whatever happened next
                allowed.append(f"{statement}: ran and raised {type(exc).__name__}: {exc}")
            else:
                allowed.append(f"{statement}: ran")
    return allowed


def assert_everything_refused(conn, roles=API_ROLES):
    calls, rels = routine_calls(conn), relations(conn)
    assert len(calls) >= 25 and len(rels) >= 12, (calls, rels)
    statements = calls + [f"SELECT * FROM {r} LIMIT 1" for r in rels] + [
        "INSERT INTO migration_backup.backup_log (backup_id, backup_name, status, target) "
        "VALUES ('bk_x', 'x', 'completed', '{}')",
        "UPDATE migration_backup.rls_policies_backup SET using_expr = 'true'",
        "DELETE FROM migration_backup.user_sessions_backup",
        "CREATE TABLE migration_backup.planted (x int)",
    ]
    for role in roles:
        allowed = refusals(conn, role, statements)
        assert not allowed, f"{role} was not refused:\n" + "\n".join(allowed)


def expose_schemas_to(conn, roles):
    """What exposing the schemas through PostgREST would need: USAGE (EXECUTE/SELECT must still fail)."""
    for schema in SCHEMAS:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(schema), sql.SQL(", ").join(map(sql.Identifier, roles))))


# ------------------------------------------------------------- passing ----

def test_installed_demo_passes_every_security_check(rolemig_db):
    report = security(rolemig_db)
    assert [c.name for c in report.checks] == list(CHECKS)
    assert_checks_pass(report, "security checks fail on the installed demo", strict=True)
    owned = report.get("migration_objects_owned").details
    assert owned["owners"] == ["migration_owner"] and owned["objects_checked"] > 40
    assert report.get("backup_tables_protected").details["tables_checked"] == 5
    assert set(report.get("migration_objects_not_exposed").details["roles_checked"]) >= {
        "PUBLIC", "anon", "authenticated", "service_role"}


def test_dedicated_nologin_owner_owns_every_migration_object(rolemig_db):
    owner = rows(rolemig_db, "SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles "
                             "WHERE rolname = 'migration_owner'")
    assert owner == [{"rolcanlogin": False, "rolsuper": False, "rolbypassrls": False}]
    others = rows(rolemig_db, """
        SELECT kind, name, owner FROM (
            SELECT 'schema' kind, nspname::text name, nspowner::regrole::text owner FROM pg_namespace
             WHERE nspname = ANY (%(s)s)
            UNION ALL SELECT 'rel', c.oid::regclass::text, c.relowner::regrole::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY (%(s)s)
            UNION ALL SELECT 'routine', p.oid::regprocedure::text, p.proowner::regrole::text FROM pg_proc p
             JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY (%(s)s)) o
         WHERE owner <> 'migration_owner'""", {"s": list(SCHEMAS)})
    assert others == []
    # backup tables: RLS on, no policy at all (a mistaken GRANT would still return no row)
    assert rows(rolemig_db, """
        SELECT c.relname::text, c.relrowsecurity,
               (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'migration_backup' AND c.relkind = 'r' AND (NOT c.relrowsecurity OR EXISTS (
               SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid))""") == []


def test_no_security_definer_function_in_the_infrastructure(rolemig_db):
    """Procedures that COMMIT cannot carry a SET clause; test_security_hijack covers them by behaviour."""
    assert rows(rolemig_db, """
        SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (%s) AND (p.prosecdef OR (p.prokind <> 'p' AND NOT EXISTS (
               SELECT 1 FROM unnest(p.proconfig) c WHERE c = 'search_path=pg_catalog, pg_temp')))""",
                (list(SCHEMAS),)) == []


def test_security_component_is_installed_last_and_reruns_cleanly(rolemig_db):
    assert installer.master_script_order()[-1] == resources.sql_file("migration-security.sql").name
    before = security(rolemig_db)
    steps = dict(rolemig_db.execute("SELECT * FROM migration_control.secure_migration_objects()").fetchall())
    assert steps["ownership_changed"] == 0 and steps["backup_rls_enabled"] == 0  # nothing left to fix
    assert [(c.name, c.status) for c in security(rolemig_db).checks] == [(c.name, c.status) for c in before.checks]


# ------------------------------------------------------------- refused ----

def test_api_roles_are_refused_every_function_and_backup_table(rolemig_db):
    backup = api.backup(rolemig_db)
    assert backup.sessions_count > 0  # the backup tables hold session rows worth stealing
    assert_everything_refused(rolemig_db)


def test_refused_even_when_the_schemas_are_exposed_to_the_api(rolemig_db):
    """With USAGE granted (a schema listed in PostgREST's db-schemas), EXECUTE and SELECT still fail."""
    api.backup(rolemig_db)
    expose_schemas_to(rolemig_db, API_ROLES)
    for role in API_ROLES:
        with acting_as(rolemig_db, role):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for function"):
                rolemig_db.execute("SELECT * FROM migration_backup.execute_rollback(NULL, NULL)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for view"):
                rolemig_db.execute("SELECT row_data FROM migration_backup.user_sessions_backup")
    assert_everything_refused(rolemig_db)
    assert security(rolemig_db).get("migration_objects_not_exposed").status == "fail"  # USAGE is reported


def test_supabase_style_broad_default_privileges_do_not_leak(rolemig_bare_db, rolemig_mapping):
    """A project whose defaults hand every new object to the API roles, then installs the infrastructure."""
    grantees = "anon, authenticated, service_role"
    for statement in (
        f"ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES GRANT ALL ON SEQUENCES TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES GRANT ALL ON FUNCTIONS TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES GRANT ALL ON SCHEMAS TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES GRANT ALL ON TYPES TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {grantees}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO {grantees}",
        f"GRANT CREATE ON DATABASE {rolemig_bare_db.info.dbname} TO authenticated",
    ):
        rolemig_bare_db.execute(statement)
    # the defaults are live: a new object of the operator's is exposed...
    rolemig_bare_db.execute("CREATE SCHEMA probe; CREATE FUNCTION probe.f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    assert rolemig_bare_db.execute(
        "SELECT has_function_privilege('anon', 'probe.f()', 'EXECUTE') "
        "AND has_schema_privilege('anon', 'probe', 'USAGE')"
    ).fetchone()[0]
    # ...but the installed infrastructure is not
    installer.install(rolemig_bare_db, Target(), rolemig_mapping)
    assert_checks_pass(security(rolemig_bare_db), "security checks fail after install under broad defaults")
    api.backup(rolemig_bare_db)
    assert_everything_refused(rolemig_bare_db)
    expose_schemas_to(rolemig_bare_db, API_ROLES)
    assert_everything_refused(rolemig_bare_db)


def test_reinstall_secures_objects_created_since(rolemig_db):
    """A later install (or a new function) is secured again by the last component."""
    rolemig_db.execute("ALTER DEFAULT PRIVILEGES GRANT ALL ON FUNCTIONS TO anon")
    rolemig_db.execute("CREATE FUNCTION migration_control.added_later() RETURNS int LANGUAGE sql "
                       "SET search_path = pg_catalog, pg_temp AS 'SELECT 1'")
    report = security(rolemig_db)
    assert report.get("migration_objects_owned").status == "fail"
    assert report.get("migration_objects_not_exposed").status == "fail"
    assert "migration_control.added_later()" in str(report.get("migration_objects_not_exposed").details)
    installer.install(rolemig_db)  # runs every component again, migration-security.sql last
    assert_checks_pass(security(rolemig_db), "re-install did not secure the new function", strict=True)


def test_owner_that_can_log_in_is_refused(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="can log in or is a superuser") as exc:
        rolemig_db.execute("SELECT * FROM migration_control.secure_migration_objects(current_user)")
    assert exc.value.diag.message_hint
    with pytest.raises(psycopg.errors.RaiseException, match="cannot make 'anon' the owner"):
        rolemig_db.execute("SELECT * FROM migration_control.secure_migration_objects('anon')")


# ------------------------------------------- each check fails when weakened ----

WEAKENINGS = {
    "execute_granted_to_anon": (
        "GRANT EXECUTE ON FUNCTION migration_backup.execute_rollback(text, text) TO anon",
        {"migration_objects_not_exposed": "migration_backup.execute_rollback(text,text)"}),
    "execute_granted_to_public": (
        "GRANT EXECUTE ON FUNCTION "
        "migration_control.configure_target(text, text, text, text, text, text[], integer, text) TO PUBLIC",
        {"migration_objects_not_exposed": "PUBLIC"}),
    "schema_usage_to_authenticated": (
        "GRANT USAGE ON SCHEMA migration_control TO authenticated",
        {"migration_objects_not_exposed": "migration_control"}),
    "backup_table_readable_by_anon": (
        "GRANT SELECT ON migration_backup.user_sessions_backup TO anon",
        {"migration_objects_not_exposed": "migration_backup.user_sessions_backup",
         "backup_tables_protected": "anon has SELECT"}),
    "backup_column_readable_by_authenticated": (
        "GRANT SELECT (row_data) ON migration_backup.user_profiles_complete_backup TO authenticated",
        {"migration_objects_not_exposed": "migration_backup.user_profiles_complete_backup",
         "backup_tables_protected": "authenticated has SELECT"}),
    "backup_table_readable_by_service_role": (
        "GRANT SELECT ON migration_backup.backup_log TO service_role",
        {"backup_tables_protected": "service_role has SELECT",
         "migration_objects_not_exposed": "service_role"}),
    "backup_table_rls_off": (
        "ALTER TABLE migration_backup.rls_policies_backup DISABLE ROW LEVEL SECURITY",
        {"backup_tables_protected": "row level security disabled"}),
    "tracking_table_writable_through_a_member_role": (
        "CREATE ROLE rolemig_sec_helper NOLOGIN; GRANT rolemig_sec_helper TO authenticated; "
        "GRANT INSERT ON migration_tracking.migration_log TO rolemig_sec_helper",
        {"migration_objects_not_exposed": "migration_tracking.migration_log"}),
    "object_owned_by_an_api_role": (
        "ALTER TABLE migration_tracking.migration_log OWNER TO authenticated",
        {"migration_objects_owned": "authenticated",
         "migration_objects_not_exposed": "migration_tracking.migration_log"}),
    "owner_defaults_grant_execute": (
        "ALTER DEFAULT PRIVILEGES FOR ROLE migration_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC",
        {"migration_default_privileges": "routines"}),
    "schema_defaults_grant_select": (
        "ALTER DEFAULT PRIVILEGES IN SCHEMA migration_backup GRANT SELECT ON TABLES TO anon",
        {"migration_default_privileges": "migration_backup"}),
    "definer_without_search_path": (
        "CREATE FUNCTION public.leaky_definer() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT 1::text'",
        {"security_definer_search_path": "public.leaky_definer()"}),
    "definer_in_a_migration_schema_without_search_path": (
        "CREATE FUNCTION migration_control.leaky_definer() RETURNS text LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT 1::text'",
        {"security_definer_search_path": "migration_control.leaky_definer()",
         "migration_objects_owned": "migration_control.leaky_definer()",
         "migration_objects_not_exposed": "migration_control.leaky_definer()"}),
    "definer_path_writable_by_api": (
        "GRANT CREATE ON SCHEMA public TO authenticated; "
        "ALTER FUNCTION public.current_user_role() SET search_path = public, pg_temp",
        {"security_definer_search_path": "where authenticated can create objects"}),
    "definer_path_with_user": (
        "ALTER FUNCTION public.has_any_role(text[]) SET search_path = \"$user\", pg_catalog, pg_temp",
        {"security_definer_search_path": "$user"}),
    "application_table_rls_off": (
        "ALTER TABLE public.billing_accounts DISABLE ROW LEVEL SECURITY",
        {"application_tables_rls": "public.billing_accounts"}),
    "new_application_table_without_rls": (
        "CREATE TABLE auth.api_keys (k text); GRANT SELECT ON auth.api_keys TO anon",
        {"application_tables_rls": "auth.api_keys"}),
}


@pytest.mark.parametrize("weakening", sorted(WEAKENINGS))
def test_each_check_fails_on_a_weakened_setup(rolemig_db, weakening):
    statement, expected = WEAKENINGS[weakening]
    try:
        assert_checks_pass(security(rolemig_db), "clean clone", strict=True)
        rolemig_db.execute(statement)
        report = security(rolemig_db)
        for check, needle in expected.items():
            row = report.get(check)
            assert row.status == "fail", (check, row)
            assert needle in str(row.details), (needle, row.details)
        untouched = [c for c in report.checks if c.name not in expected and c.status != "pass"]
        assert not untouched, untouched  # the weakening is reported where it belongs, nowhere else
        with pytest.raises(RolemigAssertionError) as exc:
            assert_checks_pass(report, "security checks failed")
        assert all(check in str(exc.value) for check in expected)  # readable: names the check and the object
    finally:
        if "rolemig_sec_helper" in statement:
            rolemig_db.execute("DROP OWNED BY rolemig_sec_helper; DROP ROLE rolemig_sec_helper")


def test_weakened_migration_privileges_are_repaired_by_securing_again(rolemig_db):
    for weakening in ("execute_granted_to_anon", "backup_table_readable_by_anon", "backup_table_rls_off",
                      "object_owned_by_an_api_role", "owner_defaults_grant_execute", "schema_usage_to_authenticated"):
        rolemig_db.execute(WEAKENINGS[weakening][0])
    assert len(security(rolemig_db).failures) == 4
    rolemig_db.execute("SELECT * FROM migration_control.secure_migration_objects()")
    assert_checks_pass(security(rolemig_db), "secure_migration_objects() did not repair", strict=True)


def test_definer_path_without_trailing_pg_temp_warns(rolemig_db):
    rolemig_db.execute("CREATE SCHEMA admin_tools; "
                       "ALTER FUNCTION public.current_user_role() SET search_path = admin_tools")
    check = security(rolemig_db).get("security_definer_search_path")
    assert check.status == "warn" and "pg_temp" in str(check.details["sample"])


def test_operator_subject_to_row_level_security_is_refused_not_given_a_subset(rolemig_db):
    """A role the application's policies filter backed up 0 of 130 profiles, and called it completed.

    The functions that copy, migrate, restore or check the application's rows set
    row_security = off: such a role now gets an error instead of a subset. The migration
    owner owns the backup tables, but the demo's policies on user_profiles grant it nothing.
    """
    conn = rolemig_db
    good = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup('by the superuser')")
    roles_before = rows(conn, "SELECT id, role FROM public.user_profiles ORDER BY id")
    conn.execute("GRANT USAGE ON SCHEMA public, auth TO migration_owner")
    conn.execute("GRANT SELECT, INSERT, UPDATE ON public.user_profiles, auth.sessions TO migration_owner")
    with acting_as(conn, "migration_owner"):
        assert one(conn, "SELECT count(*) AS n FROM public.user_profiles")["n"] == 0  # all RLS lets it see
        taken = one(conn, "SELECT * FROM migration_backup.create_comprehensive_backup('filtered')")
        assert taken["status"] == "failed"
        log = one(conn, "SELECT error FROM migration_backup.backup_log WHERE backup_id = %s",
                  (taken["backup_id"],))
        assert "row-level security" in log["error"] and "user_profiles" in log["error"]
        for refused in ("migration_control.execute_role_migration()",
                        "migration_validation.validate_pre_migration_state()",
                        "migration_validation.validate_post_migration_state()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                conn.execute(f"SELECT * FROM {refused}")
        with pytest.raises(psycopg.errors.RaiseException, match="refusing to roll back") as refused:
            conn.execute("SELECT * FROM migration_backup.execute_rollback(%s, 'filtered')",
                         (good["backup_id"],))
        assert "row-level security" in refused.value.diag.message_detail
        rolled = one(conn, "SELECT * FROM migration_backup.emergency_rollback(%s)", (good["backup_id"],))
        assert rolled["status"] == "failed"
        failed = one(conn, "SELECT error FROM migration_backup.rollback_log WHERE rollback_id = %s",
                     (rolled["rollback_id"],))
        assert "row-level security" in failed["error"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            conn.execute("SELECT * FROM migration_backup.validate_rollback_success(%s)", (good["backup_id"],))
    assert one(conn, "SELECT count(*) AS n FROM migration_backup.user_profiles_complete_backup "
                     "WHERE backup_id = %s", (taken["backup_id"],))["n"] == 0
    assert rows(conn, "SELECT id, role FROM public.user_profiles ORDER BY id") == roles_before
