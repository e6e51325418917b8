"""The boundary with pytest-postgresql: its janitor makes our databases, its server fixtures can host the gate.

Real PostgreSQL: the session's server (``rolemig_server``), and a pytester run whose
conftest.py hands the gate pytest-postgresql's ``postgresql_noproc`` pointing at that server.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

from pytest_rolemig import resources
from pytest_rolemig.db.templates import (
    CopyJanitor,
    create_database,
    drop_database,
    janitor,
    server_from_fixture,
    server_major,
    unique_name,
)


def _exists(server, name):
    with psycopg.connect(server.dsn()) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_databases_are_made_by_upstreams_janitor_copying_files_from_15(rolemig_server, rolemig_template):
    keeper = janitor(rolemig_server, "x_copy", rolemig_template.name)
    assert isinstance(keeper, DatabaseJanitor) and isinstance(keeper, CopyJanitor)
    statement = keeper._build_create_database_sql().as_string()
    assert statement.startswith('CREATE DATABASE "x_copy" TEMPLATE ')
    assert ("STRATEGY FILE_COPY" in statement) == (server_major(rolemig_server) >= 15)
    assert "STRATEGY" not in janitor(rolemig_server, "x_empty")._build_create_database_sql().as_string()


def test_a_copy_is_dropped_even_with_a_session_still_connected(rolemig_server, rolemig_template):
    name = unique_name("rolemig_janitor")
    create_database(rolemig_server, name, template=rolemig_template.name)
    left_open = psycopg.connect(rolemig_server.dsn(name))
    try:
        assert left_open.execute("SELECT count(*) FROM public.user_profiles").fetchone()[0] > 0
        drop_database(rolemig_server, name)
        assert not _exists(rolemig_server, name)
    finally:
        left_open.close()
    drop_database(rolemig_server, name)  # dropping what is gone is no error


@pytest.mark.slow
def test_the_gate_runs_on_a_teams_postgresql_noproc_fixture(rolemig_server, pytester, monkeypatch, request):
    """A team already on pytest-postgresql overrides rolemig_server: one server, the gate on it."""
    params = conninfo_to_dict(rolemig_server.dsn())
    pytester.makeconftest(textwrap.dedent(f"""
        import pytest
        from pytest_postgresql import factories

        from pytest_rolemig.db.templates import server_from_fixture

        teams_server = factories.postgresql_noproc(host={params["host"]!r}, port={int(params["port"])},
                                                   user={params["user"]!r})

        @pytest.fixture(scope="session")
        def rolemig_server(teams_server):
            return server_from_fixture(teams_server)
    """))
    # the gate starts its own server while collecting; unused here, it must be stopped and removed
    # (its folders go to TMPDIR: one the server's system user can reach when tests run as root)
    scratch = Path(tempfile.mkdtemp(prefix="rolemig-early-"))
    scratch.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(scratch))
    result = pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-rf",
                                           f"--rolemig-schema={resources.demo_schema()}",
                                           "-k", "installs_and_initializes or maps_every_user")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*pytest-postgresql NoopExecutor of PostgreSQL * port={params['port']}*"])
    assert not list(scratch.glob("rolemig-pg-*")), "the early-started server was left behind"


def test_server_from_fixture_reads_host_port_and_user_of_an_executor(rolemig_server):
    class Executor:  # what postgresql_proc and postgresql_noproc give: host, port, user, password
        params = conninfo_to_dict(rolemig_server.dsn())
        host, port, user, password = params["host"], params["port"], params["user"], None

    server = server_from_fixture(Executor())
    theirs, ours = conninfo_to_dict(server.dsn("x")), conninfo_to_dict(rolemig_server.dsn("x"))
    keys = ("host", "port", "user", "dbname")
    assert {k: theirs[k] for k in keys} == {k: ours[k] for k in keys}
    assert "Executor of PostgreSQL" in server.describe()
