"""The gate on an application PostgREST serves, not Supabase: tests/examples/postgrest-app/.

Its own API roles (webuser, guest), claims {"id", "app_role"} that a db-pre-request function
copies into settings the policies read, and no sessions table. The folder's pytest.ini holds
every setting, so the gate runs there with ``pytest --rolemig`` alone.
"""

import json
from pathlib import Path

import pytest

APP = Path(__file__).parent / "examples" / "postgrest-app"
GATE_TESTS = 20  # at least: every gate test of tests/test_gate_real_apps.py

pytestmark = pytest.mark.slow


def _app(pytester, extra_sql=""):
    for name in ("schema.sql", "roles.toml", "pytest.ini"):
        (pytester.path / name).write_text((APP / name).read_text())
    if extra_sql:
        with (pytester.path / "schema.sql").open("a") as schema:
            schema.write("\n" + extra_sql)


def _run(pytester, *args):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-v", "-rfE", *args)


def test_gate_passes_on_a_postgrest_app_from_its_ini_alone(pytester):
    _app(pytester)
    result = _run(pytester)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= GATE_TESTS and set(outcomes) <= {"passed", "warnings"}, \
        result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines([
        "rolemig sessions_table: auth.sessions (user user_id), none if the schema lacks it [default]",
        "rolemig api_role: webuser (anon guest, pre-request api.authenticate) [ini rolemig_api_role]",
        '*test_sessions_survive PASSED*',
        '*test_access_after_migration_is_as_declared PASSED*',
    ], consecutive=False)
    # the matrix measured through the pre-request: the staff read every member, readers their own
    report = json.loads((pytester.path / "reports" / "access-matrix.json").read_text())
    before = report["matrices"]["before"]
    assert before["claims"], report
    text = (pytester.path / "reports" / "access-matrix.md").read_text()
    assert "| staff | api.members | 80/" in text and "| reader | api.members | 2/" in text, text


def test_gate_fails_when_a_helper_keeps_legacy_roles_and_staff_lose_the_directory(pytester):
    _app(pytester, """
CREATE FUNCTION api.staff_roles() RETURNS text[] LANGUAGE sql IMMUTABLE AS $$ SELECT ARRAY['admin', 'staff'] $$;
DROP POLICY member_directory ON api.members;
CREATE POLICY member_directory ON api.members FOR SELECT TO webuser
    USING (api.current_app_role() = ANY (api.staff_roles()));
""")
    result = _run(pytester)
    result.stdout.fnmatch_lines([
        "*undeclared access change(s) (* with rows lost) for role(s) admin, staff*",
        '*staff = { loses = ?"api.members:SELECT"? }*',  # fnmatch: ? for the brackets
        "FAILED *test_access_after_migration_is_as_declared*",
    ], consecutive=False)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_gate_fails_when_the_claims_lack_the_key_the_pre_request_reads(pytester):
    _app(pytester)
    result = _run(pytester, '--rolemig-jwt-claims={"role": "webuser", "user_id": "{user}", "app_role": "{role}"}')
    result.stdout.fnmatch_lines([
        "*own_profile_readable*",
        "FAILED *test_every_user_still_authenticates_and_reaches_own_data*",
    ], consecutive=False)
    assert result.ret == 1


def test_a_claims_template_that_is_not_json_is_a_one_line_usage_error(pytester):
    _app(pytester)
    result = _run(pytester, "--rolemig-jwt-claims={id: {user}}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--rolemig-jwt-claims / rolemig_jwt_claims: not valid JSON*"])


def test_a_missing_pre_request_function_is_a_setup_error_naming_the_option(pytester):
    _app(pytester)
    result = _run(pytester, "--rolemig-pre-request=api.no_such_function")
    assert result.ret == 4
    out = result.stdout.str() + result.stderr.str()
    assert "pre-request function api.no_such_function() does not exist" in out, out[-3000:]
    assert "--rolemig-pre-request / rolemig_pre_request" in out, out[-3000:]


def test_an_explicit_sessions_table_the_schema_lacks_stays_an_error(pytester):
    _app(pytester)
    result = _run(pytester, "--rolemig-sessions-table=auth.sessions")
    assert result.ret == 4
    out = result.stdout.str() + result.stderr.str()
    assert "--rolemig-sessions-table / rolemig_sessions_table names table auth.sessions" in out, out[-3000:]


def test_sessions_table_none_on_the_demo_runs_the_gate_without_sessions(pytester):
    result = _run(pytester, "--rolemig-sessions-table=none", "--rolemig-users=26",
                  "--rolemig-roundtrip-examples=5")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= GATE_TESTS and set(outcomes) <= {"passed", "warnings"}, \
        result.stdout.str()[-4000:]
    result.stdout.fnmatch_lines(["rolemig sessions_table: none (no sessions table) [command line*"])
