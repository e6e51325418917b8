"""find_role_mentions(): every place a legacy role hides is found and named, after a migration.

Each case of ``tests/examples/role-hiding/`` adds one realistic hiding place to the demo. The
SQL tests load it into a seeded copy, run the one-call migration and look for the object by
name; the gate runs show the same from ``pytest --rolemig``: failing on the broken cases,
naming each object, and passing on the correct one (an audit trail the mapping declares).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_helpers import rows

from pytest_rolemig import api, resources

HIDING = Path(__file__).parent / "examples" / "role-hiding"

CASES = {
    "column-default.sql": [("column default", "public.user_profiles.role")],
    "signup-function.sql": [("function", "public.handle_new_user")],
    "staff-view.sql": [("view", "public.staff_directory")],
    "rpc-function.sql": [("function", "public.can_see_billing")],
    "invitations.sql": [("check constraint", "public.invitations.invitations_role_check"),
                        ("index", "public.invitations_one_pending_owner"),
                        ("data", "public.invitations.role")],
    "app-metadata.sql": [("data", "auth.users.raw_app_meta_data")],
    "enum-elsewhere.sql": [("enum type", "public.team_role")],
}


def migrate(conn):
    conn.execute("SELECT migration_backup.create_comprehensive_backup()")
    result = rows(conn, "SELECT status, error FROM migration_control.execute_role_migration()")[0]
    assert result["status"] == "completed", result


def found(conn):
    return {(m.kind, m.name) for m in api.role_mentions(conn)}


def test_nothing_hides_in_the_demo_after_a_migration(rolemig_db):
    """The correct demo: before, the policies and the role CHECK name legacy roles; after, nothing does."""
    before = api.role_mentions(rolemig_db)
    assert {m.kind for m in before} == {"policy", "check constraint"}
    assert ("check constraint", "public.user_profiles.user_profiles_role_check") in {(m.kind, m.name) for m in before}
    migrate(rolemig_db)
    assert api.role_mentions(rolemig_db) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_hiding_place_is_named_after_the_migration(rolemig_db, case):
    rolemig_db.execute((HIDING / case).read_text())
    migrate(rolemig_db)
    mentions = api.role_mentions(rolemig_db)
    missing = set(CASES[case]) - {(m.kind, m.name) for m in mentions}
    assert not missing, mentions
    assert all(m.context.strip() and m.role for m in mentions)


def test_a_mention_says_the_text_around_it(rolemig_db):
    rolemig_db.execute((HIDING / "staff-view.sql").read_text())
    view = [m for m in api.role_mentions(rolemig_db) if m.name == "public.staff_directory"]
    assert {m.role for m in view} == {"support_agent", "super_admin"}
    assert all("'support_agent'" in m.context for m in view)


def test_comments_and_identifiers_are_not_mentions(rolemig_db):
    """A word in a comment or a column named like a role is not a role name in use."""
    rolemig_db.execute("""
        CREATE TABLE public.authors (author_id uuid PRIMARY KEY, note text);
        INSERT INTO public.authors VALUES (gen_random_uuid(), 'written by an author, not a role');
        CREATE FUNCTION public.author_count() RETURNS bigint LANGUAGE sql AS $$
            -- counts the author's rows ('author' here is prose)
            SELECT count(*) FROM public.authors
        $$;""")
    assert not {name for _, name in found(rolemig_db)} & {"public.authors.note", "public.author_count",
                                                          "public.authors.author_id"}


def test_extension_and_infrastructure_objects_are_not_scanned(rolemig_db):
    names = {name for _, name in found(rolemig_db)}
    assert not any(n.startswith(("migration_", "pg_catalog.", "information_schema.")) for n in names)


def test_role_dependent_objects_are_the_ones_that_decide_on_a_role(rolemig_db):
    """Policies, views and functions whose answer depends on a role, directly or through a helper."""
    for case in ("rpc-function.sql", "staff-view.sql"):
        rolemig_db.execute((HIDING / case).read_text())
    rolemig_db.execute((HIDING.parent / "access-helper-legacy.sql").read_text())
    objects = {(o.kind, o.name): o for o in api.role_dependent_objects(rolemig_db)}
    moderators = objects[("policy", 'public.documents."documents: moderators update"')]
    assert moderators.relation == "public.documents" and moderators.api_roles == ("authenticated",)
    assert "moderator" in moderators.roles and "user_role" in moderators.expression
    # a policy naming no role, calling a helper that does
    helper = objects[("policy", 'public.billing_accounts."billing: staff via helper"')]
    assert helper.roles == ("billing_admin", "org_owner", "super_admin")
    assert objects[("function", "public.can_see_billing")].roles == ("billing_admin", "org_owner")
    assert ("view", "public.staff_directory") in objects
    assert ("policy", 'public.user_profiles."profiles: read own"') not in objects  # owner-only


# --------------------------------------------------------------------- gate ----


def _gate(pytester, schema_files, mapping=None, tests="hides_anywhere or maps_every_user"):
    args = ["--rolemig", "-p", "no:cacheprovider", "-rf",
            f"--rolemig-schema={resources.demo_schema()}"]
    args += [f"--rolemig-schema={HIDING / f}" for f in schema_files]
    if mapping:
        args.append(f"--rolemig-mapping={mapping}")
    return pytester.runpytest_subprocess(*args, "-k", tests)


@pytest.mark.slow
def test_gate_fails_naming_every_hiding_place(pytester):
    cases = sorted(CASES)
    result = _gate(pytester, cases, tests="hides_anywhere or maps_every_user or access_after_migration")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    # the access matrix also acts through the view and the RPC function the API exposes
    result.stdout.fnmatch_lines(["*billing_admin (billing_admin -> admin) * public.can_see_billing() * EXECUTE *",
                                 "*support_agent (support_agent -> moderator) * public.staff_directory * SELECT *"],
                                consecutive=False)
    for kind, name in {pair for case in cases for pair in CASES[case]}:
        assert f"{kind} {name}:" in out, (kind, name, out[-4000:])
    assert "[acknowledged_mentions]" in out and "Traceback" not in out


@pytest.mark.slow
def test_gate_passes_on_an_audit_trail_the_mapping_declares(pytester):
    passed = _gate(pytester, ["audit-trail.sql"], HIDING / "audit-trail-roles.toml")
    passed.assert_outcomes(passed=2)
    undeclared = _gate(pytester, ["audit-trail.sql"])
    undeclared.assert_outcomes(passed=1, failed=1)
    undeclared.stdout.fnmatch_lines(["*data public.role_audit.old_role: *"])


@pytest.mark.slow
def test_gate_names_a_role_policy_that_lets_no_role_in(pytester):
    """A policy reading a token claim nothing writes is false for everyone: reported, not trusted."""
    result = _gate(pytester, ["dead-token-policy.sql"], tests="lets_some_role_in")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        '*policy public.billing_accounts."billing: staff by token" (billing_admin, org_owner): USING is false*',
        "*Claims the probe sent*", '*"app_metadata": {*'], consecutive=False)


@pytest.mark.slow
def test_gate_passes_when_the_token_copy_of_the_role_follows_it(pytester):
    """The probe's token carries the auth row's app_metadata: a policy reading it is measured, and kept."""
    result = _gate(pytester, ["app-metadata-synced.sql"], tests="lets_some_role_in or access or hides_anywhere")
    result.assert_outcomes(passed=7)
