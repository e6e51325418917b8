"""The ``rolemig`` CLI reaches the infrastructure only through ``pytest_rolemig.api``: no SQL of its own.

A statement that names one of the infrastructure's schemas (a call, a table read) in ``cli/`` would be
a second Python caller of the SQL, free to drift from the gate's; this test finds one. No database.
"""

import re
from pathlib import Path

import pytest

from pytest_rolemig import api

CLI = Path(api.__file__).parent / "cli"
STATEMENT = re.compile(r"\b(?:FROM|JOIN|CALL|SELECT|INTO|UPDATE)\s+(?:\*\s+FROM\s+)?(migration_[a-z]+)\.", re.I)


@pytest.mark.parametrize("module", sorted(p.name for p in CLI.glob("*.py")))
def test_cli_module_holds_no_infrastructure_sql(module):
    text = (CLI / module).read_text(encoding="utf-8")
    found = [m.group(0) for m in STATEMENT.finditer(text) if m.group(1) in api.SCHEMAS]
    assert not found, f"cli/{module} queries the infrastructure itself ({found}); add a function to api.py"


def test_the_pattern_finds_a_query():
    assert STATEMENT.search("SELECT * FROM migration_backup.list_available_backups()")
    assert STATEMENT.search("CALL migration_control.run_online_migration()")
    assert not STATEMENT.search('require_infrastructure(ctx, ("migration_control.execute_role_migration",))')
