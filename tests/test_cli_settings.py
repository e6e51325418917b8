"""``rolemig`` and ``pytest --rolemig`` read one settings source: ``[tool.rolemig]`` in pyproject.toml.

A team's project sets a target unlike the demo's in its pyproject.toml; the gate's report header
and the CLI (install, config, status, plan) against a real database show the same values, with
the same sources, and an option given to the CLI still wins over the file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pytest_rolemig.cli import errors, main
from pytest_rolemig.db.templates import load_schema_file

EXAMPLES = Path(__file__).parent / "examples"
LEGACY = ("super_admin", "org_owner", "admin", "org_admin", "billing_admin", "manager", "team_lead",
          "editor", "author", "contributor", "moderator", "support_agent", "viewer")

PYPROJECT = """\
[project]
name = "members-app"

[tool.rolemig]
schema = ["schema.sql"]
mapping = "roles.toml"
profiles_table = "App.Members"
key_column = "member_id"
role_column = "access_level"
sessions_table = "app.logins"
sessions_user_column = "member_id"
policy_schemas = ["app"]
batch_size = 7
"""

SOURCE = "tool.rolemig.{} in pyproject.toml"


class Run:
    """Exit code and both outputs of one in-process ``rolemig`` call."""

    def __init__(self, *argv: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        self.code = main(list(argv), out=out, err=err)
        self.out, self.err = out.getvalue(), err.getvalue()

    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def project(pytester, monkeypatch):
    """A team's project folder (the current folder) whose pyproject.toml holds the settings."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
    (pytester.path / "schema.sql").write_text((EXAMPLES / "custom-app.sql").read_text())
    (pytester.path / "roles.toml").write_text((EXAMPLES / "custom-app-roles.toml").read_text())
    pytester.makepyprojecttoml(PYPROJECT)
    return pytester


@pytest.fixture
def app_dsn(project, rolemig_server, rolemig_empty_db):
    """A database holding the team's application and 26 members on the 13 legacy roles."""
    with rolemig_empty_db.transaction():
        load_schema_file(rolemig_empty_db, project.path / "schema.sql")
        rolemig_empty_db.execute(
            "INSERT INTO app.members (member_id, handle, access_level) "
            "SELECT i, 'm' || i, (%s::text[])[1 + i %% 13] FROM generate_series(1, 26) AS i", (list(LEGACY),))
    return rolemig_server.dsn(rolemig_empty_db.info.dbname)


def test_cli_and_gate_read_the_same_tool_rolemig_target(project, app_dsn, rolemig_empty_db):
    # the gate: its report header shows the file's values and names the file as their source
    gate = project.runpytest_subprocess("--rolemig", "--collect-only", "-p", "no:cacheprovider")
    gate.stdout.fnmatch_lines([
        "rolemig settings: [[]tool.rolemig] in pyproject.toml (the rolemig command reads it too)",
        f"rolemig profiles_table: app.members (key member_id, role access_level) [{SOURCE.format('profiles_table')}]",
        f"rolemig sessions_table: app.logins (user member_id) [{SOURCE.format('sessions_table')}]",
        f"rolemig batch_size: 7 [{SOURCE.format('batch_size')}]",
    ])

    # the CLI: the same values, from the same file, with the same sources
    config = Run("config")
    assert config.code == errors.OK, config
    assert config.out.startswith("Settings file: pyproject.toml\n"), config
    for line in (f"profiles_table: app.members [{SOURCE.format('profiles_table')}]",
                 f"role_column: access_level [{SOURCE.format('role_column')}]",
                 f"batch_size: 7 [{SOURCE.format('batch_size')}]",
                 f"policy_schemas: app [{SOURCE.format('policy_schemas')}]"):
        assert line in config.out.splitlines(), config

    install = Run("install", "--dsn", app_dsn, "--json")  # no target option: the file says it all
    assert install.code == errors.OK, install
    stored = install.json()["target"]
    assert (stored["profiles_schema"], stored["profiles_table"], stored["key_column"], stored["role_column"],
            stored["sessions_schema"], stored["sessions_table"], stored["policy_schemas"], stored["batch_size"]) \
        == ("app", "members", "member_id", "access_level", "app", "logins", ["app"], 7)
    assert install.json()["sources"]["profiles_table"] == SOURCE.format("profiles_table")
    mapped = dict(rolemig_empty_db.execute("SELECT legacy_role, new_role FROM migration_control.role_mapping"))
    assert mapped["support_agent"] == "moderator"  # the file's mapping (relative to its folder)

    status = Run("status", "--dsn", app_dsn, "--json")
    assert status.code == errors.OK, status
    assert status.json()["settings_differences"] == []
    assert status.json()["users_to_migrate"] == 16  # 2 members on each of the 8 roles that change name
    assert "Settings file: pyproject.toml" in Run("status", "--dsn", app_dsn).out

    plan = Run("plan", "--dsn", app_dsn, "--json", "--no-access")
    assert plan.code == errors.OK, plan
    assert plan.json()["batch_size"] == 7
    assert sum(r["users"] for r in plan.json()["users_per_role"]) == 26


def test_an_option_wins_over_the_file_and_status_says_they_differ(project, app_dsn):
    install = Run("install", "--dsn", app_dsn, "--json", "--batch-size", "9")
    assert install.code == errors.OK, install
    assert install.json()["target"]["batch_size"] == 9
    assert install.json()["sources"]["batch_size"] == "command line --batch-size"
    assert install.json()["sources"]["role_column"] == SOURCE.format("role_column")
    status = Run("status", "--dsn", app_dsn)
    assert status.code == errors.OK, status
    assert "The stored target differs from the settings file" in status.out
    assert f"batch_size: stored 9, {SOURCE.format('batch_size')} says 7" in status.out


def test_a_bad_value_in_the_file_is_one_line_naming_key_and_file(project):
    project.makepyprojecttoml('[tool.rolemig]\nrole_column = ""\nbatch_size = 3000000000\n')
    run = Run("install", "--dsn", "host=/nowhere")  # checked before connecting
    assert run.code == errors.USAGE, run
    assert run.err == ("rolemig: error: --role-column / role_column must name a column "
                       f"({SOURCE.format('role_column')})\n"), run
    project.makepyprojecttoml('[tool.rolemig]\nbatch_size = 3000000000\n')
    run = Run("install", "--dsn", "host=/nowhere")
    assert run.err == ("rolemig: error: --batch-size / batch_size must be at most 2147483647, got 3000000000 "
                       f"({SOURCE.format('batch_size')})\n"), run
    project.makepyprojecttoml('[tool.rolemig]\nbatch_size = "7"\n')
    run = Run("config")
    assert run.code == errors.USAGE
    assert run.err == "rolemig: error: tool.rolemig.batch_size in pyproject.toml must be a whole number, got '7'\n"
    project.makepyprojecttoml('[tool.rolemig]\nrole_colum = "kind"\n')
    run = Run("config")
    assert run.code == errors.USAGE and "unknown key(s) role_colum in [tool.rolemig] of pyproject.toml" in run.err


def test_config_option_names_the_file(project):
    other = project.mkdir("elsewhere")
    (other / "pyproject.toml").write_text('[tool.rolemig]\nprofiles_table = "crm.people"\n')
    run = Run("config", "--config", "elsewhere/pyproject.toml", "--json")
    assert run.code == errors.OK, run
    data = run.json()
    assert data["settings"]["profiles_table"] == {"value": "crm.people",
                                                  "source": "tool.rolemig.profiles_table in elsewhere/pyproject.toml"}
    assert data["settings"]["batch_size"] == {"value": 1000, "source": "default"}
    missing = Run("config", "--config", "nope.toml")
    assert missing.code == errors.USAGE and "--config: settings file" in missing.err
    (other / "setup.toml").write_text('[tool.other]\nx = 1\n')
    empty = Run("config", "--config", "elsewhere/setup.toml")
    assert empty.code == errors.USAGE, empty
    assert empty.err == "rolemig: error: settings file elsewhere/setup.toml has no [tool.rolemig] table\n"
