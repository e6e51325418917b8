"""Locate the SQL and fixture files, from a checkout or from an installed wheel.

The wheel carries ``sql/`` and ``fixtures/`` as ``pytest_rolemig/_data/``; an
editable install or a plain checkout reads them from the repository root.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

INSTALL_ORDER = (
    "migration-logging-system.sql",
    "comprehensive-backup-system.sql",
    "migration-rollback-system.sql",
    "migration-validation-functions.sql",
    "migration-control-system.sql",
    "role-migration.sql",
    "online-migration.sql",
    "migration-security.sql",
)
"""Component files in dependency order; the master setup script includes them in this order."""

MASTER_SCRIPT = "setup-migration-infrastructure.sql"


@cache
def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"pytest-rolemig cannot find its {name}/ folder (looked in {_PACKAGE_DIR / '_data'} "
        f"and {_PACKAGE_DIR.parent}); the installation is incomplete, reinstall the package."
    )


def sql_dir() -> Path:
    """Folder of the infrastructure SQL files."""
    return _data_dir("sql")


def fixtures_dir() -> Path:
    """Folder of the bundled demo application (schema and role mapping)."""
    return _data_dir("fixtures")


def sql_file(name: str) -> Path:
    """One infrastructure SQL file by name."""
    return sql_dir() / name


def demo_schema() -> Path:
    """The bundled Supabase-style demo schema."""
    return fixtures_dir() / "demo-schema.sql"


def supabase_platform() -> Path:
    """What Supabase migrations take for granted (API roles, auth schema): loaded before them."""
    return fixtures_dir() / "supabase-platform.sql"


def demo_mapping() -> Path:
    """The bundled demo role mapping (13 legacy roles -> 6 new roles)."""
    return fixtures_dir() / "role-mapping.toml"
