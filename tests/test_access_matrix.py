"""The access matrix: acting as real users through RLS, comparing states, and the gate failing on hidden roles."""

from pathlib import Path

import psycopg
import pytest

from pytest_rolemig import api, resources
from pytest_rolemig.access import catalog
from pytest_rolemig.access import store as access_store
from pytest_rolemig.access.data import seed_access_rows
from pytest_rolemig.access.matrix import (
    AuthSettings,
    choose_actors,
    compute_matrix,
    row_lookup,
)
from pytest_rolemig.access.report import compare, write_reports
from pytest_rolemig.access.store import EMPTY, ReachStore
from pytest_rolemig.db.install import install
from pytest_rolemig.db.templates import clone, load_schema_file
from pytest_rolemig.errors import MappingError
from pytest_rolemig.mapping import parse_mapping
from pytest_rolemig.seeding import seed_users
from pytest_rolemig.target import Target

EXAMPLES = Path(__file__).parent / "examples"
DEMO = Target()


def _prepared(conn, target=DEMO):
    actors = choose_actors(conn, target, per_role=2)
    seed_access_rows(conn, target, [a.key for a in actors if a.key])
    return actors


def _by_role(matrix, role, table, command):
    return {cell[1]: matrix.rows(cell) for cell in matrix.cells
            if (cell[0], cell[2], cell[3]) == (role, table, command)}


@pytest.fixture
def store(rolemig_db):
    with ReachStore.beside(rolemig_db) as reach:
        yield reach


def test_matrix_acts_through_rls_as_each_role(rolemig_db, store):
    actors = _prepared(rolemig_db)
    matrix = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    total = rolemig_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0]
    viewers = _by_role(matrix, "viewer", "public.user_profiles", "SELECT")
    assert viewers and all(rows == {user} for user, rows in viewers.items()), "a viewer sees only their own profile"
    super_admins = _by_role(matrix, "super_admin", "public.user_profiles", "SELECT")
    assert all(len(rows) == total for rows in super_admins.values())
    billing = _by_role(matrix, "billing_admin", "public.billing_accounts", "UPDATE")
    assert billing and all(billing.values()), "billing admins update billing rows"
    assert not any(_by_role(matrix, "viewer", "public.billing_accounts", "SELECT").values())
    # the JWT claim decides: moderators update published documents they do not own
    published = {r[0] for r in rolemig_db.execute("SELECT id::text FROM public.documents WHERE status = 'published'")}
    moderators = _by_role(matrix, "moderator", "public.documents", "UPDATE")
    assert published and all(published <= rows for rows in moderators.values())
    assert not any(published & rows for rows in _by_role(matrix, "viewer", "public.documents", "UPDATE").values())
    assert set(_by_role(matrix, "(anon)", "public.user_profiles", "SELECT").values()) == {frozenset()}
    # nothing the matrix did was kept
    assert rolemig_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0] == total


def test_matrix_refuses_to_act_as_a_role_that_bypasses_rls(rolemig_db, store):
    actors = _prepared(rolemig_db)
    superuser = rolemig_db.execute("SELECT current_user").fetchone()[0]
    with pytest.raises(RuntimeError, match="would bypass RLS"):
        compute_matrix(rolemig_db, DEMO, actors, "x", store, AuthSettings(auth_role=superuser))


def test_reached_rows_live_in_the_store_once_per_distinct_set(rolemig_db, store):
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    stored = store.stored_rows()
    again = compute_matrix(rolemig_db, DEMO, actors, "again", store)
    assert again.cells == before.cells, "the same rows give the same set ids"
    assert store.stored_rows() == stored, "a state that repeats the sets writes no rows"
    assert all(isinstance(set_id, int) for set_id in before.cells.values()), "Python keeps ids, not keys"
    reached = [set_id for set_id in before.cells.values() if set_id != EMPTY]
    assert store.sets < len(reached), "staff cells reaching every row share one set"
    assert stored == sum(store.size(i) for i in set(reached)) == sum(len(store.keys(i)) for i in set(reached))
    profiles = rolemig_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0]
    staff = next(c for c in before.cells
                 if c[0] == "super_admin" and c[2:] == ("public.user_profiles", "SELECT"))
    assert before.reached(staff) == profiles
    # a state in which one row moved out of reach stores the new set and tells the difference
    gone = min(before.rows(staff) - {a.key for a in actors})
    rolemig_db.execute("DELETE FROM public.user_profiles WHERE id = %s::uuid", (gone,))
    after = compute_matrix(rolemig_db, DEMO, actors, "after", store)
    assert after.reached(staff) == profiles - 1 and store.stored_rows() > stored
    assert store.diff(before.cells[staff], after.cells[staff]) == (0, 1, (), (gone,))


def test_store_pages_diffs_and_unions_sets(rolemig_db, store, monkeypatch):
    monkeypatch.setattr(access_store, "PAGE", 2)
    a = store.add(["k1", "k2", "k3", "k3"])
    assert store.add(["k3", "k2", "k1"]) == a, "the same keys in another order are the same set"
    assert store.add([]) == EMPTY and store.size(a) == 3
    assert list(store.pages(a)) == [["k1", "k2"], ["k3"]]
    store.stage(["k2"])
    store.stage(["k4", "k2"])
    b = store.commit_stage()
    assert store.keys(b) == {"k2", "k4"} and store.commit_stage() == EMPTY, "the stage is emptied"
    assert store.diff(a, b) == (1, 2, ("k4",), ("k1", "k3"))
    assert store.diff(a, EMPTY) == (0, 3, (), ("k1", "k2", "k3"))
    c = store.add(["k1", "k2", "k3", "k5"])
    # over two users: k4 and k5 gained (once each), k1 and k3 lost by one of them only, once
    assert store.union_diff([(a, b), (a, c)]) == (2, 2)
    assert store.sets == 3 and store.stored_rows() == 3 + 2 + 4


def test_store_says_why_it_cannot_keep_its_rows(rolemig_db):
    db = rolemig_db.info.dbname
    rolemig_db.execute(f'REVOKE TEMPORARY ON DATABASE "{db}" FROM PUBLIC')
    rolemig_db.execute("CREATE ROLE rolemig_no_temp LOGIN")
    try:
        with psycopg.connect(rolemig_db.info.dsn, user="rolemig_no_temp", autocommit=True) as limited:
            with pytest.raises(RuntimeError, match="may not create one in database"):
                with ReachStore.beside(limited):
                    pass
    finally:
        rolemig_db.execute("DROP OWNED BY rolemig_no_temp; DROP ROLE rolemig_no_temp")


def test_comparing_matrices_of_different_stores_is_refused(rolemig_db, store):
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    with ReachStore.beside(rolemig_db) as other:
        with pytest.raises(ValueError, match="different stores"):
            compare(before, compute_matrix(rolemig_db, DEMO, actors, "other", other), "mixed")


def test_comparison_names_role_table_command_and_rows(rolemig_db, store, tmp_path):
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    assert compare(before, compute_matrix(rolemig_db, DEMO, actors, "again", store), "unchanged").ok
    rolemig_db.execute("""ALTER POLICY "billing: billing staff" ON public.billing_accounts
                          USING (public.current_user_role() = ANY (ARRAY['org_owner', 'super_admin']))""")
    after = compute_matrix(rolemig_db, DEMO, actors, "after", store)
    result = compare(before, after, "policy narrowed", examples=row_lookup(rolemig_db))
    assert not result.ok
    assert {(d.role, d.table) for d in result.unexpected} == {("billing_admin", "public.billing_accounts")}
    assert {d.command for d in result.unexpected} == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert all(d.lost and not d.gained for d in result.unexpected)
    text = result.text()
    assert "billing_admin (billing_admin -> billing_admin)" in text and "public.billing_accounts" in text
    assert '"card_last4"' in text, "the example row is shown"
    md, js = write_reports(tmp_path, [result], [before, after])
    assert "FAIL" in md.read_text() and '"lost"' in js.read_text()
    declared = compare(before, after, "declared", {"billing_admin": {"loses": ("billing_accounts:*",)}})
    assert declared.ok and declared.differences


def test_access_changes_in_the_mapping_file():
    base = {"new_roles": ["admin", "viewer"], "mapping": {"billing_admin": "admin", "viewer": "viewer"}}
    parsed = parse_mapping({**base, "access_changes": {"billing_admin": {"gains": ["projects:delete"]}}})
    assert parsed.access_changes == {"billing_admin": {"gains": ("projects:DELETE",), "loses": ()}}
    assert parse_mapping(base).access_changes == {}
    with pytest.raises(MappingError, match="not a legacy role"):
        parse_mapping({**base, "access_changes": {"nobody": {"gains": []}}})
    with pytest.raises(MappingError, match="table:COMMAND"):
        parse_mapping({**base, "access_changes": {"viewer": {"gains": ["projects"]}}})
    with pytest.raises(MappingError, match="table:COMMAND"):
        parse_mapping({**base, "access_changes": {"viewer": {"loses": ["projects:TRUNCATE"]}}})


def test_helper_with_a_legacy_role_breaks_access_while_policy_text_is_clean(rolemig_db, store, rolemig_mapping):
    load_schema_file(rolemig_db, EXAMPLES / "access-helper-legacy.sql")
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    backup = api.backup(rolemig_db)
    api.migrate(rolemig_db, backup_id=backup.backup_id)
    text_check = {c.name: c.status for c in api.post_migration_checks(rolemig_db, backup.backup_id).checks}
    assert text_check["no_legacy_roles_in_policies"] == "pass", "the policy text is clean"
    after = compute_matrix(rolemig_db, DEMO, actors, "after", store)
    result = compare(before, after, "after the migration", rolemig_mapping.access_changes)
    lost = {(d.role, d.table, d.command) for d in result.unexpected if d.lost}
    for role in ("billing_admin", "org_owner", "super_admin"):
        assert (role, "public.billing_accounts", "SELECT") in lost
    assert all(d.claim_after == rolemig_mapping.mapping[d.role] for d in result.unexpected)


@pytest.mark.slow
def test_gate_fails_on_a_helper_that_checks_a_legacy_role(pytester):
    extra = pytester.path / "helper.sql"
    extra.write_text((EXAMPLES / "access-helper-legacy.sql").read_text())
    result = pytester.runpytest_subprocess("--rolemig", "--rolemig-schema", str(resources.demo_schema()),
                                           "--rolemig-schema", str(extra), "-p", "no:cacheprovider", "-v",
                                           f"--rolemig-report-dir={pytester.path / 'reports'}")
    result.stdout.fnmatch_lines(["*test_no_policy_names_a_legacy_role PASSED*"])
    result.stdout.fnmatch_lines(["*test_access_after_migration_is_as_declared FAILED*"])
    result.stdout.fnmatch_lines([
        "*after the migration: * undeclared access change(s) (* with rows lost)*billing_admin*",
        "*billing_admin (billing_admin -> admin) * public.billing_accounts * SELECT * 0 * 26 * NO *",
    ])
    report = pytester.path / "reports" / "access-matrix.md"
    assert "public.billing_accounts" in report.read_text()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


USER_ROLES = Target(profiles_table="public.user_roles", key_column="user_id", role_column="role",
                    sessions_table="auth.sessions", sessions_user_column="user_id", policy_schemas=("public", "auth"))


def test_own_schema_with_user_roles_enum_order_and_jwt_claims(rolemig_server, rolemig_mapping):
    # 'owner' is a label of the enum, so the infrastructure counts it as a legacy role: map it to itself
    mapping = parse_mapping({"new_roles": list(rolemig_mapping.new_roles),
                             "mapping": {**rolemig_mapping.mapping, "owner": "owner"}})
    with clone(rolemig_server, None, "rolemig_acl_own") as conn, ReachStore.beside(conn) as store:
        load_schema_file(conn, EXAMPLES / "access-user-roles.sql")
        install(conn, USER_ROLES, mapping)
        with conn.transaction():
            seed_users(conn, USER_ROLES, sorted(mapping.mapping), 56)
        actors = _prepared(conn, USER_ROLES)
        assert conn.execute("SELECT count(*) FROM public.reports").fetchone()[0] > 0
        before = compute_matrix(conn, USER_ROLES, actors, "before", store)
        backup = api.backup(conn)
        api.migrate(conn, backup_id=backup.backup_id)
        after = compute_matrix(conn, USER_ROLES, actors, "after", store)
        result = compare(before, after, "after the migration", mapping.access_changes)
        changed = {(d.role, d.table, d.command): d for d in result.differences}
        # enum order: team_lead < manager before; as 'manager' it now reads every report
        assert ("team_lead", "public.reports", "SELECT") in changed
        assert changed["team_lead", "public.reports", "SELECT"].gained and not result.ok
        # the JWT claim carries the new role (as a fresh token would): support agents keep their reach
        assert after.claims[next(a.key for a in actors if a.role == "support_agent")] == "moderator"
        assert not any(r == "support_agent" for r, _, _ in changed)
        rb = api.rollback(conn, backup.backup_id, "test")
        assert rb.status == "completed"
        restored = compute_matrix(conn, USER_ROLES, actors, "rollback", store)
        assert compare(before, restored, "rollback").differences == []


def test_superuser_connection_sees_everything_which_is_why_the_matrix_switches_role(rolemig_db):
    # the trap the matrix avoids: as the connecting superuser, RLS is bypassed
    _prepared(rolemig_db)
    rows = rolemig_db.execute("SELECT count(*) FROM public.billing_accounts").fetchone()[0]
    with rolemig_db.transaction(force_rollback=True):
        rolemig_db.execute("SELECT set_config('role', 'authenticated', true)")
        assert rolemig_db.execute("SELECT count(*) FROM public.billing_accounts").fetchone()[0] == 0 < rows


def test_update_probe_by_row_lock_reaches_what_a_no_op_update_reaches(rolemig_db, store, monkeypatch):
    """FOR NO KEY UPDATE stands in for the no-op UPDATE only where that is equivalent."""
    # a policy whose WITH CHECK differs from its USING keeps the real UPDATE on that table
    rolemig_db.execute(
        "CREATE POLICY \"docs: publish only\" ON public.documents AS RESTRICTIVE FOR UPDATE TO authenticated "
        "USING (true) WITH CHECK (status = 'published')")
    actors = _prepared(rolemig_db)
    owners = catalog.owner_references(rolemig_db, DEMO)
    infos = {i.qualified: i for i in (catalog.table_info(rolemig_db, s, t, owners, AuthSettings())
                                      for s, t in catalog.rls_tables(rolemig_db, DEMO.policy_schemas))}
    assert not infos["public.user_profiles"].update_with_check  # its WITH CHECKs repeat the USING
    assert infos["public.documents"].update_with_check
    probed = compute_matrix(rolemig_db, DEMO, actors, "row locks", store)
    monkeypatch.setattr(catalog, "LOCK_PROBE", False)
    updated = compute_matrix(rolemig_db, DEMO, actors, "no-op updates", store)
    assert probed.cells == updated.cells
    assert any(probed.reached(cell) for cell in probed.cells
               if cell[2:] == ("public.user_profiles", "UPDATE"))


def test_empty_table_with_json_columns_and_no_default_is_filled(rolemig_db):
    load_schema_file(rolemig_db, EXAMPLES / "access-json-empty.sql")
    actors = choose_actors(rolemig_db, DEMO, per_role=2)
    seeded = seed_access_rows(rolemig_db, DEMO, [a.key for a in actors if a.key])
    assert seeded.rows.get("public.user_settings", 0) >= 12, seeded.skipped
    values = rolemig_db.execute("SELECT DISTINCT settings::text, legacy::text FROM public.user_settings")
    assert values.fetchall() == [("{}", "{}")]


HIDING = EXAMPLES / "role-hiding"


def test_views_and_rpc_functions_the_api_exposes_are_probed(rolemig_db, store, rolemig_mapping):
    """A view and an RPC function that filter by legacy role names lose access after the migration."""
    load_schema_file(rolemig_db, HIDING / "staff-view.sql")
    load_schema_file(rolemig_db, HIDING / "rpc-function.sql")
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before", store)
    assert {"public.staff_directory", "public.can_see_billing()"} <= set(before.tables)
    assert "public.current_user_role()" in before.tables  # granted to the API role, no arguments
    assert all(cmd == "SELECT" for (_, _, table, cmd) in before.cells if table == "public.staff_directory")
    agents = _by_role(before, "support_agent", "public.staff_directory", "SELECT")
    assert agents and all(agents.values()), "support agents read the staff directory"
    backup = api.backup(rolemig_db)
    api.migrate(rolemig_db, backup_id=backup.backup_id)
    after = compute_matrix(rolemig_db, DEMO, actors, "after", store)
    result = compare(before, after, "after the migration", rolemig_mapping.access_changes)
    changed = {(d.role, d.table, d.command) for d in result.unexpected}
    assert ("support_agent", "public.staff_directory", "SELECT") in changed
    assert ("billing_admin", "public.can_see_billing()", "EXECUTE") in changed
    # a function returning the caller's role name returns the new name: read through the mapping, no change
    assert not {c for c in changed if c[1] == "public.current_user_role()"}


def test_functions_with_arguments_or_side_effects_are_not_called(rolemig_db):
    rolemig_db.execute("""
        CREATE FUNCTION public.bump() RETURNS integer LANGUAGE sql VOLATILE AS 'SELECT 1';
        CREATE FUNCTION public.stable_with_arg(p integer) RETURNS integer LANGUAGE sql STABLE AS 'SELECT p';
        GRANT EXECUTE ON FUNCTION public.bump(), public.stable_with_arg(integer) TO authenticated""")
    exposed = catalog.exposed_functions(rolemig_db, ["public"], "authenticated")
    assert "public.bump" not in exposed and "public.stable_with_arg" not in exposed
    assert "public.current_user_role" in exposed
