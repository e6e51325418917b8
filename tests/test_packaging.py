"""The wheel carries the SQL and the demo application, and finds them once installed."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pytest_rolemig import resources

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True, timeout=600)
    (built,) = out.glob("pytest_rolemig-*.whl")
    return built


def test_wheel_ships_every_sql_file_and_the_demo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for sql in [resources.MASTER_SCRIPT, *resources.INSTALL_ORDER]:
        assert f"pytest_rolemig/sql/{sql}" in names
    assert "pytest_rolemig/demo/demo-schema.sql" in names
    assert "pytest_rolemig/demo/role-mapping.toml" in names
    assert "pytest_rolemig/demo/supabase-platform.sql" in names
    assert "pytest_rolemig/py.typed" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "rolemig = pytest_rolemig.plugin" in text
    assert "rolemig = pytest_rolemig.cli:main" in text
    assert "rolemig-load = pytest_rolemig.tools.load:main" in text


def test_installed_wheel_finds_its_data_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=600)
    probe = (
        "import pytest_rolemig.resources as r, pytest_rolemig.db.install as i;"
        "print(r.sql_dir()); print(r.demo_schema().is_file()); print(i.master_script_order())"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                            check=True, capture_output=True, text=True, timeout=120)
    sql_dir, demo_found, order = result.stdout.splitlines()
    assert Path(sql_dir) == target / "pytest_rolemig" / "sql"
    assert demo_found == "True"
    assert order == str(list(resources.INSTALL_ORDER))
