"""Settings: every channel (command line, environment, ini) and every bad value, via pytester."""

from pathlib import Path

import pytest

PROBE = """
def test_probe(rolemig_config):
    print("USERS", rolemig_config.users, rolemig_config.sources["users"])
    print("BATCH", rolemig_config.target.batch_size, rolemig_config.sources["batch_size"])
    print("TABLE", rolemig_config.target.profiles_table)
    print("DSN", rolemig_config.dsn, rolemig_config.sources["dsn"])
    print("MAPPING", rolemig_config.mapping_file)
    print("SCHEMA", *rolemig_config.schema_files)
    print("REPORTS", rolemig_config.report_dir)
    assert rolemig_config.users >= 0
"""


@pytest.fixture
def probe(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
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
    # a CLI 0 that fell through to the ini's 26 would pass; it is seen, and refused
    probe.makeini("[pytest]\nrolemig_users = 26\n")
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-users=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rolemig-users / rolemig_users must be at least 1, got 0 (command line*"])


def test_environment_dsn_between_command_line_and_ini(probe, monkeypatch):
    probe.makeini("[pytest]\nrolemig_dsn = host=ini-host\n")
    monkeypatch.setenv("ROLEMIG_DSN", "host=env-host")
    monkeypatch.setenv("DATABASE_URL", "host=cli-tool-host")
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "DSN host=env-host environment ROLEMIG_DSN" in _out(result)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-dsn=host=cli-host")
    assert "DSN host=cli-host command line --rolemig-dsn" in _out(result)


def test_database_url_of_the_cli_is_not_used(probe, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/x")
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "DSN None default" in _out(result)
    result = probe.runpytest("-p", "no:cacheprovider", "--rolemig", "--collect-only")
    result.stdout.fnmatch_lines(["rolemig dsn: ephemeral server [default]",
                                 "rolemig: DATABASE_URL is set and ignored; pass --rolemig-dsn *"])
    assert _out(result).count("DATABASE_URL") == 1


def test_fixtures_and_gate_start_their_own_server_when_database_url_is_set(pytester, monkeypatch):
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/x")
    pytester.makepyfile(test_x="def test_x(rolemig_db):\n    assert rolemig_db.execute('SELECT 1')\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_x.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["rolemig: PostgreSQL * port *",
                                 "rolemig: DATABASE_URL is set and ignored; pass --rolemig-dsn *"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--rolemig", "-v",
                                           "-k", "test_infrastructure_installs_and_initializes")
    result.assert_outcomes(passed=1, deselected=result.parseoutcomes()["deselected"])
    result.stdout.fnmatch_lines(["rolemig: DATABASE_URL is set and ignored; *",
                                 "*test_infrastructure_installs_and_initializes PASSED*",
                                 "rolemig: PostgreSQL * port *"])
    assert result.stdout.str().count("DATABASE_URL") == 1


def test_relative_paths_on_the_command_line_are_from_the_current_folder(probe):
    from pytest_rolemig import resources
    from pytest_rolemig.db.server import find_binaries

    (probe.path / "roles.toml").write_text(resources.demo_mapping().read_text())
    (probe.path / "db.sql").write_text("SELECT 1;\n")
    bindir = str(Path(find_binaries().pg_ctl).parent)
    # an absolute path among the arguments moves pytest's rootdir (here to a common ancestor)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-pg-bin", bindir,
                             "--rolemig-mapping", "roles.toml", "--rolemig-schema", "db.sql",
                             "--rolemig-report-dir", "out")
    result.assert_outcomes(passed=1)
    assert f"MAPPING {probe.path / 'roles.toml'}" in _out(result)
    assert f"SCHEMA {probe.path / 'db.sql'}" in _out(result)
    assert f"REPORTS {probe.path / 'out'}" in _out(result)


def test_relative_paths_in_the_ini_file_are_from_its_folder(probe):
    from pytest_rolemig import resources

    project = probe.mkdir("project")
    (project / "roles.toml").write_text(resources.demo_mapping().read_text())
    (project / "db.sql").write_text("SELECT 1;\n")
    (project / "pytest.ini").write_text("[pytest]\nrolemig_mapping = roles.toml\nrolemig_schema = db.sql\n"
                                        "rolemig_report_dir = out\n")
    sub = probe.mkdir("elsewhere")
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "-c", "project/pytest.ini",
                             f"--rootdir={sub}", str(probe.path / "test_probe.py"))
    result.assert_outcomes(passed=1)
    assert f"MAPPING {project / 'roles.toml'}" in _out(result)
    assert f"SCHEMA {project / 'db.sql'}" in _out(result)
    assert f"REPORTS {project / 'out'}" in _out(result)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("App.Members", "app.members"), ('"Crm"."User Profiles"', '"Crm"."User Profiles"'),
     ("members", "public.members"), ('public."a.b"', 'public."a.b"')],
)
def test_table_names_are_read_as_the_cli_reads_them(probe, value, shown):
    result = probe.runpytest("-s", "-p", "no:cacheprovider", f"--rolemig-profiles-table={value}")
    result.assert_outcomes(passed=1)
    assert f"TABLE {shown}\n" in _out(result)


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--rolemig-users=lots"], "", "*invalid int value*"),
        (["--rolemig-users=0"], "", "*--rolemig-users / rolemig_users must be at least 1, got 0*"),
        (["--rolemig-users=-5"], "", "*--rolemig-users / rolemig_users must be at least 1, got -5*"),
        ([], "rolemig_users = 0\n", "*--rolemig-users / rolemig_users must be at least 1, got 0 (ini*"),
        (["--rolemig-profiles-table=public.user profiles"], "",
         "*--rolemig-profiles-table / rolemig_profiles_table: 'public.user profiles': unexpected 'p'*"),
        (["--rolemig-sessions-table=a.b.c"], "",
         "*--rolemig-sessions-table / rolemig_sessions_table: 'a.b.c': expected schema.table*"),
        (["--rolemig-batch-size=0"], "", "*--rolemig-batch-size / rolemig_batch_size must be at least 1*"),
        (["--rolemig-schema=nope.sql"], "", "*schema file*nope.sql does not exist*"),
        (["--rolemig-schema=db/*.sql"], "", "*'db/*.sql' matches no file*"),
        (["--rolemig-mapping=missing.toml"], "", "*role mapping file*missing.toml does not exist*"),
        ([], "rolemig_userz = 5\n", "*unknown ini key(s) rolemig_userz*"),
        ([], "rolemig_users = many\n", "*rolemig_users must be a whole number, got 'many'*"),
        (["--rolemig-login-sample=0"], "",
         "*--rolemig-login-sample / rolemig_login_sample must be at least 1*"),
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
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the run ends at the first setup, as for a bad setting
    result.stdout.fnmatch_lines(["*rolemig:*public.nope*"])


def test_unreachable_server_fails_setup_naming_it(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pytester.makepyfile("def test_x(rolemig_db):\n    assert rolemig_db\n")
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--rolemig-dsn=host=127.0.0.1 port=1 user=postgres connect_timeout=2"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the run ends at the first setup, as for a bad setting
    result.stdout.fnmatch_lines(["*cannot reach the server given by --rolemig-dsn / ROLEMIG_DSN*port=1*"])


def test_without_rolemig_flag_nothing_starts_and_no_gate_runs(pytester):
    pytester.makepyfile("def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1)
    assert "rolemig: PostgreSQL" not in result.stdout.str()
    assert "gate.py" not in result.stdout.str()


# ------------------------------------------------------------ [tool.rolemig] ---

TOOL = '[tool.rolemig]\nusers = 26\nprofiles_table = "App.Members"\nbatch_size = 7\n'


def test_tool_rolemig_table_is_read_and_named_as_the_source(probe):
    probe.makepyprojecttoml(TOOL)
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "USERS 26 tool.rolemig.users in pyproject.toml" in _out(result)
    assert "TABLE app.members\n" in _out(result)
    result = probe.runpytest("-p", "no:cacheprovider", "--rolemig", "--collect-only")
    result.stdout.fnmatch_lines(["rolemig batch_size: 7 [tool.rolemig.batch_size in pyproject.toml]"])


def test_tool_rolemig_is_found_from_the_current_folder_upwards(probe, monkeypatch):
    from pytest_rolemig import resources

    probe.makepyprojecttoml(TOOL + 'mapping = "roles.toml"\n')
    (probe.path / "roles.toml").write_text(resources.demo_mapping().read_text())
    sub = probe.mkdir("sub")
    monkeypatch.chdir(sub)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", str(probe.path / "test_probe.py"))
    assert f"USERS 26 tool.rolemig.users in {probe.path / 'pyproject.toml'}" in _out(result)
    assert f"MAPPING {probe.path / 'roles.toml'}" in _out(result)  # from the file's folder


def test_rolemig_config_option_names_the_file(probe):
    other = probe.mkdir("other")
    (other / "pyproject.toml").write_text(TOOL)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-config", "other/pyproject.toml")
    assert "USERS 26 tool.rolemig.users in other/pyproject.toml" in _out(result)


def test_command_line_wins_over_tool_rolemig(probe):
    probe.makepyprojecttoml(TOOL)
    result = probe.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-users=3")
    assert "USERS 3 command line --rolemig-users" in _out(result)
    assert "BATCH 7 tool.rolemig.batch_size in pyproject.toml" in _out(result)


def test_ini_key_and_tool_rolemig_must_agree(probe):
    probe.makepyprojecttoml(TOOL + '[tool.pytest.ini_options]\nrolemig_users = "26"\n')
    result = probe.runpytest("-s", "-p", "no:cacheprovider")
    assert "USERS 26 ini rolemig_users" in _out(result)  # the same value twice is fine
    probe.makepyprojecttoml(TOOL + '[tool.pytest.ini_options]\nrolemig_profiles_table = "public.accounts"\n')
    result = probe.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*rolemig: --rolemig-profiles-table / rolemig_profiles_table is set twice, "
                                 "to 'public.accounts' (ini rolemig_profiles_table) and to 'App.Members' "
                                 "(tool.rolemig.profiles_table in pyproject.toml): set it in one place"])


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('users = "many"', "rolemig: tool.rolemig.users in pyproject.toml must be a whole number, got 'many'"),
        ("users = 0", "rolemig: --rolemig-users / rolemig_users must be at least 1, got 0 "
                      "(tool.rolemig.users in pyproject.toml)"),
        ('profiles_table = "a b"', "rolemig: --rolemig-profiles-table / rolemig_profiles_table: 'a b': "
                                   "unexpected 'b' at position 3 *(tool.rolemig.profiles_table in pyproject.toml)"),
        ("userz = 5", "rolemig: unknown key(s) userz in [[]tool.rolemig] of pyproject.toml; known keys: schema, *"),
        ('mapping = "missing.toml"', "rolemig: --rolemig-mapping / rolemig_mapping: role mapping file "
                                     "*missing.toml does not exist (tool.rolemig.mapping in pyproject.toml)"),
    ],
)
def test_bad_value_in_tool_rolemig_names_the_key_and_the_file(probe, table, message):
    probe.makepyprojecttoml(f"[tool.rolemig]\n{table}\n")
    result = probe.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: " + message])
    assert len([line for line in result.stderr.lines if line.strip()]) == 1
