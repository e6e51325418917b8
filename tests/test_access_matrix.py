"""The access matrix: acting as real users through RLS, comparing states, and the gate failing on hidden roles."""

from pathlib import Path

import pytest

from pytest_rolemig import access_matrix, api, resources
from pytest_rolemig.access_data import seed_access_rows
from pytest_rolemig.access_matrix import (
    AuthSettings,
    Interner,
    Matrix,
    choose_actors,
    compute_matrix,
    row_lookup,
)
from pytest_rolemig.access_report import compare, write_reports
from pytest_rolemig.databases import clone, load_schema_file
from pytest_rolemig.errors import MappingError
from pytest_rolemig.installer import install
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
    return {u: rows for (r, u, t, c), rows in matrix.cells.items() if (r, t, c) == (role, table, command)}


def test_matrix_acts_through_rls_as_each_role(rolemig_db):
    actors = _prepared(rolemig_db)
    matrix = compute_matrix(rolemig_db, DEMO, actors, "before")
    total = rolemig_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0]
    viewers = _by_role(matrix, "viewer", "public.user_profiles", "SELECT")
    assert viewers and all(rows == {user} for user, rows in viewers.items()), "a viewer sees only their own profile"
    assert all(len(rows) == total for rows in _by_role(matrix, "super_admin", "public.user_profiles", "SELECT").values())
    billing = _by_role(matrix, "billing_admin", "public.billing_accounts", "UPDATE")
    assert billing and all(billing.values()), "billing admins update billing rows"
    assert not any(_by_role(matrix, "viewer", "public.billing_accounts", "SELECT").values())
    # the JWT claim decides: moderators update published documents they do not own
    published = {r[0] for r in rolemig_db.execute("SELECT id::text FROM public.documents WHERE status = 'published'")}
    assert published and all(published <= rows for rows in _by_role(matrix, "moderator", "public.documents", "UPDATE").values())
    assert not any(published & rows for rows in _by_role(matrix, "viewer", "public.documents", "UPDATE").values())
    assert set(_by_role(matrix, "(anon)", "public.user_profiles", "SELECT").values()) == {frozenset()}
    # nothing the matrix did was kept
    assert rolemig_db.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0] == total


def test_matrix_refuses_to_act_as_a_role_that_bypasses_rls(rolemig_db):
    actors = _prepared(rolemig_db)
    superuser = rolemig_db.execute("SELECT current_user").fetchone()[0]
    with pytest.raises(RuntimeError, match="would bypass RLS"):
        compute_matrix(rolemig_db, DEMO, actors, "x", AuthSettings(auth_role=superuser))


def test_matrix_json_round_trip(rolemig_db):
    matrix = compute_matrix(rolemig_db, DEMO, _prepared(rolemig_db), "before")
    again = Matrix.from_json(__import__("json").loads(matrix.dumps()))
    assert again.cells == matrix.cells and again.claims == matrix.claims
    assert compare(matrix, again, "same").differences == []


def test_matrices_of_one_rehearsal_share_equal_key_sets(rolemig_db):
    actors = _prepared(rolemig_db)
    interner = Interner()
    before = compute_matrix(rolemig_db, DEMO, actors, "before", interner=interner)
    again = compute_matrix(rolemig_db, DEMO, actors, "again", interner=interner)
    alone = compute_matrix(rolemig_db, DEMO, actors, "alone")
    assert before.cells == again.cells == alone.cells
    # equal sets are one object across cells and matrices; without the interner they are copies
    assert all(again.cells[c] is before.cells[c] for c in before.cells)
    assert not all(alone.cells[c] is before.cells[c] for c in before.cells if before.cells[c])
    reached = [rows for rows in before.cells.values() if rows]
    assert len({id(rows) for rows in reached}) < len(reached), "staff cells reaching every row share one set"
    keys = {id(k) for rows in reached for k in rows}
    assert len(keys) == len(set().union(*reached)), "each row key is one string whatever the cell"


def test_comparison_names_role_table_command_and_rows(rolemig_db, tmp_path):
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before")
    assert compare(before, compute_matrix(rolemig_db, DEMO, actors, "again"), "unchanged").ok
    rolemig_db.execute("""ALTER POLICY "billing: billing staff" ON public.billing_accounts
                          USING (public.current_user_role() = ANY (ARRAY['org_owner', 'super_admin']))""")
    after = compute_matrix(rolemig_db, DEMO, actors, "after")
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


def test_helper_with_a_legacy_role_breaks_access_while_policy_text_is_clean(rolemig_db, rolemig_mapping):
    load_schema_file(rolemig_db, EXAMPLES / "access-helper-legacy.sql")
    actors = _prepared(rolemig_db)
    before = compute_matrix(rolemig_db, DEMO, actors, "before")
    backup = api.backup(rolemig_db)
    api.migrate(rolemig_db, backup_id=backup.backup_id)
    text_check = {c.name: c.status for c in api.post_migration_checks(rolemig_db, backup.backup_id).checks}
    assert text_check["no_legacy_roles_in_policies"] == "pass", "the policy text is clean"
    after = compute_matrix(rolemig_db, DEMO, actors, "after")
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
    with clone(rolemig_server, None, "rolemig_acl_own") as conn:
        load_schema_file(conn, EXAMPLES / "access-user-roles.sql")
        install(conn, USER_ROLES, mapping)
        with conn.transaction():
            seed_users(conn, USER_ROLES, sorted(mapping.mapping), 56)
        actors = _prepared(conn, USER_ROLES)
        assert conn.execute("SELECT count(*) FROM public.reports").fetchone()[0] > 0
        before = compute_matrix(conn, USER_ROLES, actors, "before")
        backup = api.backup(conn)
        api.migrate(conn, backup_id=backup.backup_id)
        after = compute_matrix(conn, USER_ROLES, actors, "after")
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
        assert compare(before, compute_matrix(conn, USER_ROLES, actors, "rollback"), "rollback").differences == []


def test_superuser_connection_sees_everything_which_is_why_the_matrix_switches_role(rolemig_db):
    # the trap the matrix avoids: as the connecting superuser, RLS is bypassed
    _prepared(rolemig_db)
    rows = rolemig_db.execute("SELECT count(*) FROM public.billing_accounts").fetchone()[0]
    with rolemig_db.transaction(force_rollback=True):
        rolemig_db.execute("SELECT set_config('role', 'authenticated', true)")
        assert rolemig_db.execute("SELECT count(*) FROM public.billing_accounts").fetchone()[0] == 0 < rows


def test_update_probe_by_row_lock_reaches_what_a_no_op_update_reaches(rolemig_db, monkeypatch):
    """FOR NO KEY UPDATE stands in for the no-op UPDATE only where that is equivalent."""
    # a policy whose WITH CHECK differs from its USING keeps the real UPDATE on that table
    rolemig_db.execute(
        "CREATE POLICY \"docs: publish only\" ON public.documents AS RESTRICTIVE FOR UPDATE TO authenticated "
        "USING (true) WITH CHECK (status = 'published')")
    actors = _prepared(rolemig_db)
    owners = access_matrix.owner_references(rolemig_db, DEMO)
    infos = {i.qualified: i for i in (access_matrix.table_info(rolemig_db, s, t, owners, AuthSettings())
                                      for s, t in access_matrix.rls_tables(rolemig_db, DEMO.policy_schemas))}
    assert not infos["public.user_profiles"].update_with_check  # its WITH CHECKs repeat the USING
    assert infos["public.documents"].update_with_check
    probed = compute_matrix(rolemig_db, DEMO, actors, "row locks")
    monkeypatch.setattr(access_matrix, "LOCK_PROBE", False)
    updated = compute_matrix(rolemig_db, DEMO, actors, "no-op updates")
    assert probed.cells == updated.cells
    assert any(rows for (_, _, table, command), rows in probed.cells.items()
               if table == "public.user_profiles" and command == "UPDATE")
