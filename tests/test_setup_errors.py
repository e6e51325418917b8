"""Setup errors of the gate: the run ends with one line naming the cause, printed once.

The server and the template database are session fixtures: without care their error would
be raised again in the setup of each of the gate's tests, with a report each. Each case runs
``pytest --rolemig`` in a pytester folder and wants exit code 4 (as for a bad setting), the
message once, and no Python traceback.
"""

import fnmatch
import os
import pwd
import stat

import pytest

from pytest_rolemig import resources
from pytest_rolemig.db.server import SERVER_USER

NO_PK = """
ALTER TABLE public.user_profiles DROP CONSTRAINT user_profiles_pkey CASCADE;
ALTER TABLE public.user_profiles ADD CONSTRAINT user_profiles_id_key UNIQUE (id);
"""


def _run(pytester, *args):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", *args)


def _assert_said_once(result, pattern):
    output = result.stdout.lines + result.stderr.lines
    said = [line for line in output if fnmatch.fnmatch(line, pattern)]
    assert len(said) == 1, "\n".join(output[-40:])
    assert said[0].count("rolemig:") == 1, said[0]
    text = "\n".join(output)
    assert "Traceback" not in text and "ERROR at setup" not in text and " error" not in text, text[-3000:]
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
    return pytester


def test_unreachable_server(project):
    result = _run(project, "--rolemig-dsn=host=127.0.0.1 port=1 user=postgres connect_timeout=2")
    _assert_said_once(result, "*rolemig: cannot reach the server given by --rolemig-dsn*port=1*")


def test_server_binaries_not_where_the_setting_says(project):
    result = _run(project, f"--rolemig-pg-bin={project.path}")
    _assert_said_once(result, f"*rolemig: no PostgreSQL server binaries found. Tried: {project.path}/pg_ctl "
                              "(rolemig_pg_bin setting): not there*--rolemig-pg-bin / rolemig_pg_bin*")


@pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as another user only when tests run as root")
def test_server_dir_the_server_user_cannot_reach(project):
    closed = project.mkdir("closed")
    os.chmod(closed, stat.S_IRWXU)  # root only: the server's user cannot enter it
    result = _run(project, f"--rolemig-server-dir={closed}")
    _assert_said_once(result, f"*rolemig: the server runs as the unprivileged system user '{SERVER_USER}'*"
                              f"cannot write to {closed}/*--rolemig-server-dir / rolemig_server_dir*")
    assert pwd.getpwnam(SERVER_USER) and not os.listdir(closed)  # nothing left behind


@pytest.mark.parametrize(("args", "pattern"), [
    (["--rolemig-profiles-table=public.members"],
     "*rolemig: --rolemig-profiles-table / rolemig_profiles_table names table public.members, which the "
     "schema does not create*"),
    (["--rolemig-role-column=access_level"],
     "*rolemig: --rolemig-role-column / rolemig_role_column names column 'access_level', which table "
     "public.user_profiles lacks (columns: id, email, *, role, *)*"),
    (["--rolemig-sessions-user-column=member"],
     "*rolemig: --rolemig-sessions-user-column / rolemig_sessions_user_column names column 'member', "
     "which table auth.sessions lacks*"),
])
def test_target_the_schema_lacks_names_the_option(project, args, pattern):
    _assert_said_once(_run(project, *args), pattern)


def test_schema_error_names_the_file_and_line(project):
    extra = project.path / "extra.sql"
    extra.write_text("-- a comment\nCREATE TABLE public.notes (id int);\n\nSELECT body\n"
                     "  FROM public.notes;\n")
    result = _run(project, f"--rolemig-schema={resources.demo_schema()}", f"--rolemig-schema={extra}")
    _assert_said_once(result, f"*rolemig: loading schema file {extra} line 4 failed: "
                              "column \"body\" does not exist*")


@pytest.mark.parametrize(("sql", "constraint"), [
    ("ALTER TABLE public.user_profiles ADD CONSTRAINT corporate_email\n"
     "    CHECK (email NOT LIKE '%@example.com');", "corporate_email"),
    ("CREATE UNIQUE INDEX one_super_admin ON public.user_profiles (role) WHERE role = 'super_admin';",
     "one_super_admin"),
])
def test_seeding_refused_names_the_constraint_and_table(project, sql, constraint):
    extra = project.path / "refuse.sql"
    extra.write_text(sql + "\n")
    result = _run(project, f"--rolemig-schema={resources.demo_schema()}", f"--rolemig-schema={extra}")
    _assert_said_once(result, f"*rolemig: *seed*constraint {constraint} on table public.user_profiles*")


def test_profiles_table_without_primary_key_is_named(project):
    extra = project.path / "no-pk.sql"
    extra.write_text(NO_PK)
    result = _run(project, f"--rolemig-schema={resources.demo_schema()}", f"--rolemig-schema={extra}")
    _assert_said_once(result, "*rolemig: profiles table public.user_profiles has no primary key*"
                              "ALTER TABLE public.user_profiles ADD PRIMARY KEY (id)*")


def test_a_fixture_user_sees_the_setup_error_once_too(project):
    project.makepyfile(test_app="""
        def test_one(rolemig_db):
            pass

        def test_two(rolemig_db):
            pass
    """)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "--rolemig-profiles-table=public.nope",
                                          "test_app.py")
    _assert_said_once(result, "*rolemig: --rolemig-profiles-table / rolemig_profiles_table names table "
                              "public.nope*")
