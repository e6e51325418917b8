"""What ``rolemig`` does with bad input: integer options.

Usage errors are caught by the argument parser, before any connection, in one line naming the
option. Database tests run on the test's own clone (``rolemig_db``: demo schema, infrastructure,
demo mapping, 130 users, no backup).
"""

from __future__ import annotations

import io
import json

import pytest

from pytest_rolemig.cli import build_parser, errors, main

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
