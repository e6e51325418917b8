"""Only ``pytest_rolemig.api`` queries the infrastructure: the CLI, the gate, the fixtures and the tools go through it.

A query naming one of the infrastructure's schemas (a call, a table read) anywhere else in the
package would be a second Python caller of the SQL, free to drift from the gate's; this test
finds one. It reads the string constants of the code (docstrings and hints to the user are not
queries). No database.
"""

import ast
import re
from pathlib import Path

import pytest

from pytest_rolemig import api

PACKAGE = Path(api.__file__).parent.parent
QUERY = re.compile(r"\s*(?:SELECT|CALL|WITH|INSERT|UPDATE|DELETE)\b", re.I)
STATEMENT = re.compile(r"\b(?:FROM|JOIN|CALL|SELECT|INTO|UPDATE)\s+(?:\*\s+FROM\s+)?(migration_[a-z]+)\.", re.I)
MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.parent.name != "api")


def infrastructure_queries(source: str) -> list[str]:
    """The string constants of ``source`` that are queries naming an infrastructure schema."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            match = STATEMENT.search(node.value)
            if QUERY.match(node.value) and match and match.group(1) in api.SCHEMAS:
                found.append(match.group(0))
    return found


@pytest.mark.parametrize("module", MODULES)
def test_module_outside_the_api_holds_no_infrastructure_query(module):
    found = infrastructure_queries((PACKAGE / module).read_text(encoding="utf-8"))
    assert not found, f"{module} queries the infrastructure itself ({found}); add a function to pytest_rolemig.api"


def test_the_check_finds_a_query_and_passes_over_prose():
    assert infrastructure_queries('q = "SELECT * FROM migration_backup.list_available_backups()"')
    assert infrastructure_queries('conn.execute("CALL migration_control.run_online_migration()")')
    assert not infrastructure_queries('"""Runs SELECT * FROM migration_control.x()."""')
    assert not infrastructure_queries('hint = "fix it: SELECT * FROM migration_control.secure_migration_objects()"')
    assert not infrastructure_queries('need = ("migration_control.execute_role_migration",)')
    assert "access/matrix.py" in MODULES and "api/state.py" not in MODULES
