"""Settings: every channel (command line, environment, ini) and every bad value, via pytester."""

import pytest

PROBE = """
def test_probe(rolemig_config):
    print("USERS", rolemig_config.users, rolemig_config.sources["users"])
    print("BATCH", rolemig_config.target.batch_size, rolemig_config.sources["batch_size"])
    print("TABLE", rolemig_config.target.profiles_table)
    print("DSN", rolemig_config.dsn, rolemig_config.sources["dsn"])
    assert rolemig_config.users >= 0
"""


@pytest.fixture
def probe(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.makepyfile(test_probe=PROBE)
    return pytester


def _out(result):
    return result.stdout.str()


def test_defaults_without_any_setting(probe):
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "USERS 130 default" in _out(result)
    assert "TABLE public.user_profiles" in _out(result)


def test_ini_value_is_used(probe):
    probe.makeini("[pytest]\nrolemig_users = 26\nrolemig_profiles_table = app.members\n")
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "USERS 26 ini rolemig_users" in _out(result)
    assert "TABLE app.members" in _out(result)


def test_pyproject_tool_section_is_read(probe):
    probe.makepyprojecttoml('[tool.pytest.ini_options]\nrolemig_batch_size = "7"\n')
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "BATCH 7 ini rolemig_batch_size" in _out(result)


def test_command_line_wins_over_ini_even_when_zero(probe):
    probe.makeini("[pytest]\nrolemig_users = 26\n")
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-users=0")
    assert "USERS 0 command line --rolemig-users" in _out(result)


def test_environment_dsn_between_command_line_and_ini(probe, monkeypatch):
    probe.makeini("[pytest]\nrolemig_dsn = host=ini-host\n")
    monkeypatch.setenv("DATABASE_URL", "host=env-host")
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "DSN host=env-host environment DATABASE_URL" in _out(result)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-dsn=host=cli-host")
    assert "DSN host=cli-host command line --rolemig-dsn" in _out(result)


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--rolemig-users=lots"], "", "*invalid int value*"),
        (["--rolemig-batch-size=0"], "", "*--rolemig-batch-size / rolemig_batch_size must be at least 1*"),
        (["--rolemig-schema=nope.sql"], "", "*schema file*nope.sql does not exist*"),
        (["--rolemig-schema=db/*.sql"], "", "*'db/*.sql' matches no file*"),
        (["--rolemig-mapping=missing.toml"], "", "*role mapping file*missing.toml does not exist*"),
        ([], "rolemig_userz = 5\n", "*unknown ini key(s) rolemig_userz*"),
        ([], "rolemig_users = many\n", "*rolemig_users must be a whole number, got 'many'*"),
        (["--rolemig-login-sample=0"], "", "*--rolemig-login-sample / rolemig_login_sample must be at least 1*"),
        (["--rolemig-server-dir=no/such/folder"], "",
         "*--rolemig-server-dir / rolemig_server_dir: folder *no/such/folder does not exist*"),
        ([], "rolemig_roundtrip_examples = 0\n",
         "*--rolemig-roundtrip-examples / rolemig_roundtrip_examples must be at least 1, got 0*"),
    ],
)
def test_bad_settings_end_the_run_with_one_clear_line(probe, args, ini, message):
    if ini:
        probe.makeini("[pytest]\n" + ini)
    result = probe.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_unknown_target_table_fails_setup_naming_it(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.makepyfile("def test_x(rolemig_db):\n    assert rolemig_db\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--rolemig-profiles-table=public.nope")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*rolemig:*public.nope*"])


def test_unreachable_server_fails_setup_naming_it(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.makepyfile("def test_x(rolemig_db):\n    assert rolemig_db\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rolemig-dsn=host=127.0.0.1 port=1 user=postgres connect_timeout=2"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot reach the server given by --rolemig-dsn / DATABASE_URL*port=1*"])


def test_without_rolemig_flag_nothing_starts_and_no_gate_runs(pytester):
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    assert "rolemig: PostgreSQL" not in result.stdout.str()
    assert "gate.py" not in result.stdout.str()
