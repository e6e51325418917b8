"""Locate the SQL and the demo application that ship inside the package.

``pytest_rolemig/sql/`` holds the infrastructure: the component files, numbered in install order
(``10-migration-logging-system.sql`` first), and ``setup-migration-infrastructure.sql``, the
master script for ``psql`` that includes them; ``pytest_rolemig/demo/`` holds the bundled demo
application. The numbers are the one definition of the order: the master script's ``\\ir`` lines
must follow them, and the installer refuses to run when they do not. Read through
:mod:`importlib.resources`, so a checkout, an editable install and a wheel find the same files.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

MASTER_SCRIPT = "setup-migration-infrastructure.sql"


@cache
def _folder(name: str) -> Path:
    path = Path(str(files("pytest_rolemig") / name))
    if not path.is_dir():
        raise FileNotFoundError(f"pytest-rolemig cannot find its {name}/ folder at {path}: the installation "
                                "is incomplete, reinstall the package")
    return path


def sql_dir() -> Path:
    """Folder of the infrastructure SQL files."""
    return _folder("sql")


def fixtures_dir() -> Path:
    """Folder of the bundled demo application (schema, role mapping, Supabase stand-in)."""
    return _folder("demo")


def install_order() -> tuple[str, ...]:
    """The component files in install order: their numbers sorted."""
    return tuple(sorted(p.name for p in sql_dir().glob("[0-9][0-9]-*.sql")))


INSTALL_ORDER = install_order()
"""Component files in dependency order; the master setup script includes them in this order."""


def sql_file(name: str) -> Path:
    """One infrastructure SQL file, by its file name or by its component name without the number.

    ``sql_file("role-migration.sql")`` is ``60-role-migration.sql``: callers name the component,
    the number only says where it goes.
    """
    path = sql_dir() / name
    if path.is_file():
        return path
    numbered = [p for p in sql_dir().glob(f"[0-9][0-9]-{name}")]
    if len(numbered) != 1:
        raise FileNotFoundError(f"no infrastructure SQL file {name} in {sql_dir()}")
    return numbered[0]


def demo_schema() -> Path:
    """The bundled Supabase-style demo application; it builds on :func:`supabase_platform`."""
    return fixtures_dir() / "demo-schema.sql"


def with_platform(files: tuple[Path, ...]) -> tuple[Path, ...]:
    """``files`` with the Supabase platform stand-in first when one of them builds on it (the demo)."""
    platform = supabase_platform()
    if demo_schema() in files and platform not in files[: files.index(demo_schema())]:
        return (platform, *files)
    return files


def demo_schema_files() -> tuple[Path, ...]:
    """The demo as it is loaded: the platform stand-in, then the application."""
    return with_platform((demo_schema(),))


def supabase_platform() -> Path:
    """What Supabase migrations take for granted (API roles, auth schema): loaded before them."""
    return fixtures_dir() / "supabase-platform.sql"


def demo_mapping() -> Path:
    """The bundled demo role mapping (13 legacy roles -> 6 new roles)."""
    return fixtures_dir() / "role-mapping.toml"


if __name__ == "__main__":  # where the master script is, for psql -f
    print(sql_file(MASTER_SCRIPT))
