"""The reference pages in docs/reference/ are what the code gives: a changed setting, CLI option or gate
check without a regenerated page fails here, naming the command that regenerates it. No database."""

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rolemig import config, docs_reference
from pytest_rolemig.cli import build_parser
from pytest_rolemig.plugin import gate_modules

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"


@pytest.mark.parametrize("name", sorted(docs_reference.PAGES))
def test_generated_reference_page_is_current(name):
    page = REFERENCE / name
    assert page.is_file(), f"docs/reference/{name} is missing; run: {docs_reference.REGENERATE}"
    have = page.read_text(encoding="utf-8")
    want = docs_reference.PAGES[name]()
    if have != want:
        diff = list(difflib.unified_diff(have.splitlines(), want.splitlines(), f"docs/reference/{name}",
                                         "generated from the code", lineterm="", n=1))
        shown = "\n".join(diff[:40]) + ("\n..." if len(diff) > 40 else "")
        pytest.fail(f"docs/reference/{name} is stale; run from the repository's root: "
                    f"{docs_reference.REGENERATE}\n{shown}", pytrace=False)


def test_settings_page_names_every_setting():
    text = docs_reference.settings_page()
    for s in config.SETTINGS:
        assert f"`{s.flag}` / `{s.ini}`" in text
    assert "`--rolemig`" in text


def test_cli_page_names_every_command_and_option():
    text = docs_reference.cli_page()
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in commands.choices.items():
        assert f"### rolemig {name}" in text
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert flag in text, f"{flag} of rolemig {name}"


def test_gate_checks_page_names_every_gate_test_in_run_order():
    text = docs_reference.gate_checks_page()
    positions = [text.index(f"## `{module.name}`") for module in gate_modules()]
    assert positions == sorted(positions)
    for module in gate_modules():
        for line in module.read_text(encoding="utf-8").splitlines():
            if line.startswith("def test_"):
                assert f"`{line[4:line.index('(')]}" in text


def test_check_mode_reports_a_stale_page_and_passes_once_written(tmp_path, capsys):
    assert docs_reference.main(["--check", "--out", str(tmp_path)]) == 1
    assert docs_reference.REGENERATE in capsys.readouterr().err
    assert docs_reference.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(docs_reference.PAGES)
    assert docs_reference.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "cli.md").write_text("edited by hand\n", encoding="utf-8")
    assert docs_reference.main(["--check", "--out", str(tmp_path)]) == 1
    assert "cli.md is stale" in capsys.readouterr().err


def test_generator_imports_nothing_heavy_and_needs_no_server(tmp_path):
    probe = ("import sys, pytest_rolemig.docs_reference as d; "
             "heavy = [m for m in ('psycopg', 'hypothesis', 'factory', 'pytest_postgresql') "
             "if m in sys.modules]; "
             "d.render(); print(heavy)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={"PATH": "", "PGHOST": "/nonexistent", "PGPORT": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


ROOT = REFERENCE.parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return found


def test_relative_links_in_readme_changelog_and_docs_resolve():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
