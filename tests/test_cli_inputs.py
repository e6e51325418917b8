"""What ``rolemig`` does with bad input: integer options, hints, mappings that do not fit.

Usage errors are caught by the argument parser, before any connection, in one line naming the
option; hints the server raises name the ``rolemig`` command to run, not the SQL routine; a
mapping that leaves a role unmapped, or that would change targets mid-migration, is not installed
quietly. Database tests run on the test's own clone (``rolemig_db``: demo schema, infrastructure,
demo mapping, 130 users, no backup).
"""

from __future__ import annotations

import io
import json
import re

import pytest

from pytest_rolemig import resources
from pytest_rolemig.cli import build_parser, errors, main
from pytest_rolemig.cli.errors import SQL_TO_CLI, cli_hint
from pytest_rolemig.mapping import load_mapping

DEMO = load_mapping(resources.demo_mapping())
INT_MAX = 2_147_483_647


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
def dsn(rolemig_server, rolemig_db):
    return rolemig_server.dsn(rolemig_db.info.dbname)


def cli(dsn: str, *argv: str) -> Run:
    return Run(*argv, "--dsn", dsn)


def write_mapping(path, mapping: dict[str, str], new_roles=DEMO.new_roles):
    lines = [f"new_roles = {json.dumps(list(new_roles))}", "", "[mapping]"]
    lines += [f'{legacy} = "{new}"' for legacy, new in mapping.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def stored_mapping(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT legacy_role, new_role FROM migration_control.role_mapping").fetchall())


def roles(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT id::text, role FROM public.user_profiles").fetchall())


# --------------------------------------------------------- integer options ---

@pytest.mark.parametrize(("argv", "message"), [
    (["install", "--batch-size", "99999999999"],
     f"argument --batch-size: must be a positive integer at most {INT_MAX}, got 99999999999"),
    (["install", "--batch-size", str(INT_MAX + 1)],
     f"argument --batch-size: must be a positive integer at most {INT_MAX}, got {INT_MAX + 1}"),
    (["plan", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
    (["migrate", "--batch-size", "-3"], "argument --batch-size: must be a positive integer"),
    (["migrate", "--max-batches", "99999999999"], "argument --max-batches: must be a positive integer"),
    (["migrate", "--max-batches", "ten"], "argument --max-batches: must be a positive integer"),
    (["install", "--demo", "--demo-users", "-5"],
     f"argument --demo-users: must be a non-negative integer at most {INT_MAX}, got -5"),
    (["install", "--demo", "--demo-users", "99999999999"], "argument --demo-users: must be a non-negative"),
])
def test_integer_options_are_checked_before_connecting(argv, message, capsys):
    run = Run(*argv)  # no --dsn: a check that waited for the server would say "no database given"
    assert run.code == errors.USAGE, run
    first = run.err.splitlines()[0]
    assert first.startswith(f"rolemig {argv[0]}: error: ") and message in first, run
    assert "usage:" not in run.err and run.out == ""
    assert capsys.readouterr().err == ""  # on the caller's stream, not argparse's sys.stderr


def test_integer_options_accept_their_bounds():
    parser = build_parser()
    assert parser.parse_args(["migrate", "--max-batches", str(INT_MAX)]).max_batches == INT_MAX
    assert parser.parse_args(["install", "--batch-size", "1"]).batch_size == 1
    assert parser.parse_args(["install", "--demo", "--demo-users", "0"]).demo_users == 0


def test_demo_users_zero_is_documented():
    run = Run("install", "--help")
    assert run.code == 0
    assert "0 seeds nobody" in " ".join(run.out.split())


def test_huge_batch_size_is_a_usage_error_and_changes_nothing(dsn, rolemig_db):
    before = rolemig_db.execute("SELECT batch_size FROM migration_control.target_config").fetchone()[0]
    run = cli(dsn, "install", "--batch-size", "99999999999")
    assert run.code == errors.USAGE, run
    assert "--batch-size" in run.err and "infrastructure" not in run.err
    after = rolemig_db.execute("SELECT batch_size FROM migration_control.target_config").fetchone()[0]
    assert after == before


# ------------------------------------------------------------------- hints ---

_HINT = re.compile(r"HINT\s*=\s*(?:format\(\s*)?((?:'(?:[^']|'')*'\s*)+)")
_SQL_LEFT = re.compile(r"\bmigration_[a-z]+\.|SELECT \*|\bCALL ")


def sql_hints() -> list[tuple[str, str]]:
    """(file, hint) for every ``HINT = '...'`` in sql/*.sql; adjacent literals joined as SQL joins them."""
    found = []
    for path in sorted(resources.sql_dir().glob("*.sql")):
        for m in _HINT.finditer(path.read_text(encoding="utf-8")):
            parts = re.findall(r"'((?:[^']|'')*)'", m[1])
            found.append((path.name, "".join(p.replace("''", "'") for p in parts)))
    return found


def test_every_sql_hint_reads_as_cli_commands():
    hints = sql_hints()
    assert len(hints) > 50, "the regex found the HINTs"
    left = [(name, hint, cli_hint(hint)) for name, hint in hints if _SQL_LEFT.search(cli_hint(hint))]
    assert left == []
    # every routine or table a hint names is in the table (so the docs can list it)
    named = {n for _, h in hints for n in re.findall(r"\bmigration_[a-z]+\.([a-z_]+)", h)}
    named |= {n for _, h in hints for n in re.findall(r"\b([a-z_]+)\(", h)}
    assert named - set(SQL_TO_CLI) == set()


@pytest.mark.parametrize(("hint", "expected"), [
    ("take one first: SELECT * FROM migration_control.prepare_for_migration()",
     "take one first: run `rolemig backup`"),
    ("see migration_backup.list_available_backups(), or pass NULL for the newest valid backup",
     "see `rolemig backups`, or leave out --backup-id for the newest restorable backup"),
    ("call migration_control.load_role_mapping(mapping, new_roles)", "run `rolemig install --mapping FILE`"),
    ("Call emergency_rollback() without argument to use the newest intact backup.",
     "Run `rolemig emergency-rollback` without argument to use the newest intact backup."),
    ("point p_role_column at the column holding the role name",
     "point --role-column at the column holding the role name"),
    ("CALL migration_control.run_online_migration(p_phase => 'expand')",
     "Run `run_online_migration(p_phase => 'expand')` (SQL only)"),
    ("and CALL migration_x.not_in_the_table() again", "and run not_in_the_table() again"),
])
def test_cli_hint_examples(hint, expected):
    assert cli_hint(hint) == expected
    assert cli_hint(expected) == expected  # idempotent: a translated hint is left alone


def test_a_server_hint_names_the_cli_command(dsn, rolemig_db):
    backup_id = cli(dsn, "backup", "--json").json()["backup_id"]
    rolemig_db.execute("UPDATE migration_backup.backup_log SET status = 'failed' WHERE backup_id = %s",
                       (backup_id,))
    before = roles(rolemig_db)
    run = cli(dsn, "migrate", "--backup-id", backup_id, "-q")
    assert run.code == errors.CHECKS_FAILED, run
    assert f"backup {backup_id} does not exist or is not completed" in run.err
    hint = [line for line in run.err.splitlines() if line.startswith("HINT: ")]
    assert hint == ["HINT: see `rolemig backups`, or leave out --backup-id for the newest restorable backup"]
    assert "list_available_backups" not in run.err
    assert roles(rolemig_db) == before


# ---------------------------------------------------------------- mappings ---

def test_install_with_a_mapping_that_leaves_a_role_unmapped_fails(dsn, rolemig_db, tmp_path):
    # needs cmd_install to count the "mapping" component in its exit code
    partial = write_mapping(tmp_path / "partial.toml",
                            {k: v for k, v in DEMO.mapping.items() if k != "support_agent"})
    run = cli(dsn, "install", "--mapping", partial)
    assert run.code == errors.CHECKS_FAILED, run
    assert "[FAIL] mapping" in run.out and "support_agent" in run.out, run
    run = cli(dsn, "install", "--mapping", partial, "--json")
    assert run.code == errors.CHECKS_FAILED, run
    mapping = {r["component"]: r for r in run.json()["status"]}["mapping"]
    assert mapping["status"] == "fail" and mapping["details"]["unmapped_roles"] == ["support_agent"]


def test_install_refuses_another_mapping_mid_migration(dsn, rolemig_db, tmp_path):
    assert cli(dsn, "backup").code == 0
    assert cli(dsn, "migrate", "--batch-size", "10", "--max-batches", "1", "-q").code == 0
    mapping, users = stored_mapping(rolemig_db), roles(rolemig_db)
    other = write_mapping(tmp_path / "other.toml",
                          {**DEMO.mapping, "support_agent": "editor", "author": "viewer"})
    run = cli(dsn, "install", "--mapping", other)
    assert run.code != errors.OK, run
    assert "author: editor -> viewer, support_agent: moderator -> editor" in run.err, run
    assert "`rolemig rollback`" in run.err and "execute_rollback" not in run.err, run
    assert stored_mapping(rolemig_db) == mapping and roles(rolemig_db) == users
    # the mapping the migration started with installs again (install is idempotent)
    again = cli(dsn, "install")
    assert again.code == errors.OK, again
    assert stored_mapping(rolemig_db) == mapping
