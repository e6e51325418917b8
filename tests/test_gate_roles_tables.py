"""The gate on two applications that keep roles unlike the demo (issue #18).

``tests/examples/supabase-roles-table``: one row per user and role in ``user_roles``
(UNIQUE (user_id, role)), profiles created by a sign-up trigger, an ``updated_at`` trigger,
policies asking a SECURITY DEFINER ``has_role()``. ``tests/examples/enum-ranked``: an enum
role column whose policies compare ranks. Each folder runs with only its own pytest.ini;
the gate passes on it and fails, naming the cause, on a broken mapping.
"""

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent / "examples"

pytestmark = pytest.mark.slow


def _app(pytester, name):
    for path in (EXAMPLES / name).iterdir():
        shutil.copy(path, pytester.path / path.name)


def _run(pytester, *args):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-v", "-rfE", *args)


def _assert_every_gate_test_passed(result):
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) > 0 and set(outcomes) <= {"passed", "warnings"}, \
        result.stdout.str()[-4000:]


def test_gate_passes_on_a_roles_table_with_several_roles_per_user(pytester):
    _app(pytester, "supabase-roles-table")
    result = _run(pytester)
    result.stdout.fnmatch_lines(
        ["rolemig profiles_table: public.user_roles (key id, role role, user user_id) [ini*"])
    _assert_every_gate_test_passed(result)


def test_gate_fails_on_merged_duplicate_roles_the_mapping_does_not_acknowledge(pytester):
    _app(pytester, "supabase-roles-table")
    mapping = pytester.path / "roles.toml"
    mapping.write_text(mapping.read_text().replace('merge_duplicates = "keep_one"\n', ""))
    result = _run(pytester, "-k", "test_migration")
    result.stdout.fnmatch_lines(["*FAILED*test_migration_maps_every_user_as_the_mapping_says*"])
    result.stdout.fnmatch_lines([
        "*the mapping merges roles that * user(s) hold both of: the migration deleted * role row(s) that "
        "would have broken unique index user_roles_user_id_role_key (user_id, role)*"])
    # the users are named by their user id, with the roles merged
    result.stdout.fnmatch_lines(["*-*-*-*-*: org_admin -> admin, row *"])
    result.stdout.fnmatch_lines(['*merge_duplicates = "keep_one"*'])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_gate_passes_on_enum_ranks_the_mapping_keeps_in_order(pytester):
    _app(pytester, "enum-ranked")
    result = _run(pytester)
    _assert_every_gate_test_passed(result)
    result.stdout.fnmatch_lines(["*test_role_ranks_keep_their_order PASSED*"])


def test_gate_fails_on_a_mapping_that_merges_two_ranks(pytester):
    _app(pytester, "enum-ranked")
    result = _run(pytester, "--rolemig-mapping=roles-merging-ranks.toml")
    result.stdout.fnmatch_lines(["*FAILED*test_role_ranks_keep_their_order*"])
    result.stdout.fnmatch_lines(["*viewer < editor -> reader = reader*"])
    result.stdout.fnmatch_lines(['*policy public.profiles."profiles: editors and above": orders roles: '
                                 "(public.my_role() >= 'editor'::public.app_role)*"])
    # the access matrix measures it: between batches the threshold cannot hold for both names
    result.stdout.fnmatch_lines(["*FAILED*test_access_unchanged_mid_migration*"])
    result.stdout.fnmatch_lines(['*refusing a batched migration: policy "profiles: editors and above" on '
                                 "public.profiles: cannot expand role literal 'editor'*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
