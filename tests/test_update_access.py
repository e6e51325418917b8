"""``--rolemig-update-access``: approve the access changes a migration makes, in one step.

Merging 13 roles into 6 changes access by design. A run with the option measures the changes,
writes them into the mapping file's ``[access_changes]`` (keeping the rest of the file) and
prints them; the next plain run passes. A plain run that fails prints the block to paste.
"""

import re

import pytest

from pytest_rolemig import resources
from pytest_rolemig.mapping import load_mapping

pytestmark = pytest.mark.slow

ACCESS_TESTS = "access_after_migration or access_unchanged_mid"


def _undeclared_mapping(pytester):
    """The demo mapping with its [access_changes] table removed, and a comment to keep."""
    text = resources.demo_mapping().read_text()
    head = text.split("[access_changes]")[0]
    path = pytester.path / "roles.toml"
    path.write_text("# reviewed by the platform team\n" + head)
    return path


def _gate(pytester, *args):
    return pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "-rf",
                                         "--rolemig-mapping=roles.toml", "-k", ACCESS_TESTS, *args)


def test_update_access_writes_the_measured_changes_and_the_next_run_passes(pytester):
    path = _undeclared_mapping(pytester)
    failing = _gate(pytester)
    failing.assert_outcomes(failed=3)
    failing.stdout.fnmatch_lines(["*--rolemig-update-access*", "*[[]access_changes[]] as measured*"])
    pasted = re.findall(r"^E?\s+(\w+ = \{ (?:gains|loses) = .*\})$", failing.stdout.str(), re.M)
    assert pasted, failing.stdout.str()[-3000:]

    updated = _gate(pytester, "--rolemig-update-access")
    updated.assert_outcomes(passed=3)
    updated.stdout.fnmatch_lines(["*rolemig: wrote the measured access changes into *roles.toml*",
                                  "[[]access_changes[]]"])
    text = path.read_text()
    assert text.startswith("# reviewed by the platform team\n")
    written = load_mapping(path)
    assert written.mapping == load_mapping(resources.demo_mapping()).mapping
    assert written.access_changes and "admin" in written.access_changes
    assert set(pasted) <= set(text.splitlines())  # the block a failing run prints is the one written

    plain = _gate(pytester)
    plain.assert_outcomes(passed=3)


def test_update_access_refuses_the_bundled_demo_mapping(pytester):
    result = pytester.runpytest_subprocess("--rolemig", "-p", "no:cacheprovider", "--rolemig-update-access")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*--rolemig-update-access / rolemig_update_access writes into your mapping file*"])
