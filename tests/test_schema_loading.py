"""Schema loading as projects keep their schema: a migrations folder, file by file, in name order.

Each file runs in its own transaction, as ``psql -1 -f`` and ``supabase db reset`` apply
migrations, so a value added to an enum in one file can be used in the next. A file that
fails to load is named with the line the server's error position points at.
"""

import shutil
from pathlib import Path

import pytest

from pytest_rolemig import resources
from pytest_rolemig.db.statements import split_statements

PROJECT = Path(__file__).parent / "examples" / "supabase-project"
MIGRATIONS = sorted((PROJECT / "supabase" / "migrations").glob("*.sql"))

PROBE = """
def test_probe(rolemig_config, rolemig_db):
    print("SCHEMA", *[p.name for p in rolemig_config.schema_files])
    labels = rolemig_db.execute(
        "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum "
        "WHERE enumtypid = 'public.app_role'::regtype").fetchone()[0]
    print("LABELS", *labels)
    print("DEFAULT", rolemig_db.execute(
        "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef "
        "WHERE adrelid = 'public.profiles'::regclass").fetchone()[0])
    print("USERS", rolemig_db.execute("SELECT count(*) FROM public.profiles").fetchone()[0])
"""

INI = """
[pytest]
rolemig_schema = supabase/migrations
rolemig_mapping = roles.toml
rolemig_profiles_table = public.profiles
rolemig_users = 30
"""


@pytest.fixture
def project(pytester, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    (pytester.path / "pytest.ini").write_text(INI)  # the project's own, with fewer users
    pytester.makepyfile(test_probe=PROBE)
    return pytester


def test_a_supabase_migrations_folder_loads_file_by_file_in_name_order(project):
    result = project.runpytest_subprocess("-s", "-p", "no:cacheprovider", "test_probe.py")
    result.assert_outcomes(passed=1)
    # the platform stand-in first (auth.users, auth.uid(), the API roles), then the files by name
    result.stdout.fnmatch_lines([
        "*SCHEMA supabase-platform.sql " + " ".join(p.name for p in MIGRATIONS),
        "LABELS admin moderator viewer staff member",
        "DEFAULT 'member'::app_role",
        "USERS 30",
    ])


def test_the_same_statements_in_one_file_do_not_load_and_the_line_is_named(project):
    """The control: in one transaction the enum's new value cannot be used yet.

    The type comes from the first file, loaded on its own: PostgreSQL 18 lets a transaction
    use a value it added to a type it also created, 15 does not; neither lets it use a value
    it added to an existing type.
    """
    single = project.path / "all-in-one.sql"
    single.write_text("".join(p.read_text() for p in MIGRATIONS[1:]))
    line = next(n for n, text in enumerate(single.read_text().splitlines(), 1) if "default 'member'" in text)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_probe.py",
                                          f"--rolemig-schema={resources.supabase_platform()}",
                                          f"--rolemig-schema={MIGRATIONS[0]}",
                                          f"--rolemig-schema={single}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = [s for s in result.stdout.lines if "rolemig: loading schema file" in s]
    assert len(said) == 1, result.stdout.str()[-3000:]
    assert f"rolemig: loading schema file {single} line {line} failed: unsafe use of new value " \
           '"member" of enum type app_role' in said[0]
    assert "Traceback" not in result.stdout.str()


def test_an_error_in_a_migration_names_its_file_and_line(project):
    broken = project.path / "supabase" / "migrations" / "20240104000000_broken.sql"
    broken.write_text("-- a later migration\nalter table public.profiles\n  add column avatar text,\n"
                      "  add column bio txet;\n")
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_probe.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = [s for s in result.stdout.lines if "rolemig: loading schema file" in s]
    assert len(said) == 1, result.stdout.str()[-3000:]
    assert f"loading schema file {broken} line 4 failed: type \"txet\" does not exist" in said[0]


@pytest.mark.parametrize(("sql", "line", "message"), [
    ("insert into public.profiles (id) values\n  ('00000000-0000-0000-0000-000000000001');\n",
     5, 'insert or update on table "profiles" violates foreign key constraint "profiles_id_fkey" DETAIL: '
        "Key (id)=(00000000-0000-0000-0000-000000000001) is not present in table \"users\"."),
    ("do $$\nbegin\n  raise exception 'backfill found % orphans', 3;\nend $$;\n",
     5, "backfill found 3 orphans (CONTEXT: PL/pgSQL function inline_code_block line 3 at RAISE)"),
])
def test_an_error_without_a_position_names_the_statement_that_failed(project, sql, line, message):
    """Without an error position the statements are run one by one (rolled back) to find it."""
    broken = project.path / "supabase" / "migrations" / "20240104000000_backfill.sql"
    broken.write_text("-- backfill\ncreate table public.audit (id int primary key, note text);\n"
                      "insert into public.audit values (1, 'a; b');\n\n" + sql)
    result = project.runpytest_subprocess("-p", "no:cacheprovider", "test_probe.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    said = [s for s in result.stdout.lines if "rolemig: loading schema file" in s]
    assert len(said) == 1, result.stdout.str()[-3000:]
    assert f"loading schema file {broken} statement at line {line} failed: {message}" in said[0]


def test_statements_split_as_psql_splits_them():
    text = ("-- a; comment\nSELECT 'a;b', E'x\\';y', \"q;\"\"\";\n"
            "/* one; /* nested; */ two; */ CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql\n"
            "  AS $f$ BEGIN RETURN 1; END $f$;\n"
            "CREATE FUNCTION g() RETURNS int LANGUAGE sql\n"
            "  BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;\n"
            "DO $$ BEGIN PERFORM 1; END $$; SELECT a$b, $1 FROM x\n-- trailing; comment\n")
    found = [(text.count("\n", 0, offset) + 1, statement.split()[0])
             for offset, statement in split_statements(text)]
    assert found == [(2, "SELECT"), (3, "CREATE"), (5, "CREATE"), (7, "DO"), (7, "SELECT")]


def test_a_folder_other_than_supabase_migrations_gets_no_platform_stand_in(pytester, monkeypatch):
    monkeypatch.delenv("ROLEMIG_DSN", raising=False)
    folder = pytester.mkdir("db")
    for name in ("002_b.sql", "010_c.sql", "001_a.sql"):
        (folder / name).write_text("SELECT 1;\n")
    (folder / "notes.txt").write_text("not SQL\n")
    pytester.makepyfile(test_cfg="def test_cfg(rolemig_config):\n"
                                 "    print('SCHEMA', *[p.name for p in rolemig_config.schema_files])\n")
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "--rolemig-schema=db")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SCHEMA 001_a.sql 002_b.sql 010_c.sql"])


def test_a_folder_without_sql_files_is_refused(pytester):
    pytester.mkdir("empty")
    result = pytester.runpytest("-p", "no:cacheprovider", "--rolemig-schema=empty")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--rolemig-schema / rolemig_schema: folder *empty holds no *.sql file "
                                 "(command line --rolemig-schema)*"])
