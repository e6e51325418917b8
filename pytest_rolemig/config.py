"""Settings of the plugin: declared once, resolved once into a frozen dataclass.

Each setting of the registry (:mod:`pytest_rolemig.settings`) exists as a command-line option
``--rolemig-x`` and an ini key ``rolemig_x`` sharing one help text, and as the key ``x`` of
``[tool.rolemig]`` in ``pyproject.toml``, which the ``rolemig`` CLI reads too. Precedence: command
line, then environment (only ``ROLEMIG_DSN`` for the server), then ini / ``[tool.pytest.ini_options]``
and ``[tool.rolemig]`` (equals: set in both to different values is an error), then the default.
"Set" means ``is not None``, so a command-line ``0`` wins.

``DATABASE_URL`` is the CLI's variable and is never read here: the gate creates and
drops databases, so it must not land on a server just because a shell exported one.
Relative paths resolve as pytest's own path ini keys do: command-line and environment
values against the folder pytest was invoked from, ini values (and defaults) against
the ini file's folder, ``[tool.rolemig]`` values against its file's folder; never against
the rootdir, which moves with other arguments.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_rolemig import resources
from pytest_rolemig import settings as registry
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping, load_mapping
from pytest_rolemig.postgrest import AuthSettings
from pytest_rolemig.settings import NO_SESSIONS, SETTINGS, Setting
from pytest_rolemig.target import Target

__all__ = ["NO_SESSIONS", "SETTINGS", "RolemigConfig", "Setting", "add_options", "header_lines", "resolve"]

CONFIG_OPTION = "--rolemig-config"
"""The pytest option naming the ``[tool.rolemig]`` file (default: found from the current folder up)."""


@dataclass(frozen=True)
class RolemigConfig:
    """Every resolved setting, and where each value came from."""

    gate: bool
    schema_files: tuple[Path, ...]
    mapping_file: Path
    mapping: RoleMapping
    target: Target
    users: int
    login_sample: int
    dsn: str | None
    pg_bin: str | None
    server_dir: str | None
    report_dir: Path
    roundtrip_examples: int
    update_access: bool = False
    ignored_env: str | None = None  # DATABASE_URL when set and ignored (an ephemeral server runs instead)
    auth: AuthSettings = field(default_factory=AuthSettings)
    sources: dict[str, str] = field(default_factory=dict, hash=False)
    settings_file: str | None = None  # the [tool.rolemig] file read (as messages name it), if any

    @property
    def ignored_env_note(self) -> str | None:
        """The one line saying an exported server variable was not used, or None."""
        if self.ignored_env is None:
            return None
        return (f"{self.ignored_env} is set and ignored; pass --rolemig-dsn (or set ROLEMIG_DSN) "
                "to use that server")

    @property
    def sessions_default(self) -> bool:
        """Whether the sessions table is the default one, which the schema may lack (then: none)."""
        return self.sources.get("sessions_table") == "default" and self.target.sessions_table is not None

    @property
    def is_demo(self) -> bool:
        """Whether the schema is the bundled demo alone."""
        return self.schema_files == resources.demo_schema_files()


_RELATIVE = " A relative path is from the current folder (in the ini file: from the ini file's folder)."


def add_options(parser: pytest.Parser) -> None:
    """Declare ``--rolemig`` and every setting, as option and ini key."""
    group = parser.getgroup("rolemig", "role migration gate (pytest-rolemig)")
    group.addoption("--rolemig", action="store_true", dest="rolemig", default=False,
                    help="Run the built-in migration gate tests.")
    group.addoption(CONFIG_OPTION, action="store", dest="rolemig_config", default=None, metavar="FILE",
                    help="pyproject.toml whose [tool.rolemig] table holds the settings, as the rolemig "
                         "command reads them (default: the first pyproject.toml with the table, from the "
                         "current folder up). Its values rank with the ini keys.")
    for s in SETTINGS:
        help_text = f"{s.help}{_RELATIVE if s.path else ''} [ini: {s.ini}]"
        if s.kind == "linelist":
            group.addoption(s.flag, action="append", dest=s.ini, default=None, help=help_text)
            parser.addini(s.ini, s.help, type="linelist", default=[])
        elif s.kind == "bool":
            group.addoption(s.flag, action="store_true", dest=s.ini, default=None, help=help_text)
            parser.addini(s.ini, s.help, type="bool", default=False)
        else:
            group.addoption(s.flag, action="store", dest=s.ini, default=None,
                            type=int if s.kind == "int" else str, help=help_text)
            parser.addini(s.ini, s.help, type="string", default="")


IGNORED_ENV = "DATABASE_URL"
"""The CLI's server variable: the plugin never reads it, and says so when it is set."""


def _ini(config: pytest.Config) -> Callable[[Setting], Any]:
    def get(s: Setting) -> Any:
        value = config.getini(s.ini)
        return None if value in (None, "", [], False) else value  # False: a bool ini key left unset
    return get


def _resolved(config: pytest.Config) -> tuple[registry.Resolved, registry.SettingsFile | None]:
    """Every setting's raw value, its source and folder (command line, environment, ini and file,
    default), and the ``[tool.rolemig]`` file read."""
    invoked = Path(config.invocation_params.dir)
    ini_dir = config.inipath.parent if config.inipath is not None else invoked
    found = registry.settings_file(config.getoption("rolemig_config", None), invoked, CONFIG_OPTION)
    command_line = registry.Channel(lambda s: config.getoption(s.ini), lambda s: f"command line {s.flag}", invoked)
    ini = registry.Channel(_ini(config), lambda s: f"ini {s.ini}", ini_dir)
    return registry.resolve(
        [[command_line], [registry.env_channel(invoked)], [ini, *registry.file_channel(found)]],
        ini_dir, lambda s: f"{s.flag} / {s.ini}",
    ), found


def _path(value: str, root: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _schema_files(value: list[str], root: Path, source: str) -> tuple[Path, ...]:
    files: list[Path] = []
    for entry in value:
        for part in str(entry).split(","):
            part = part.strip()
            if not part:
                continue
            pattern = str(_path(part, root))
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            if not matches:
                raise ConfigError(f"--rolemig-schema / rolemig_schema: {part!r} matches no file ({source})")
            for match in matches:
                if Path(match).is_dir():
                    files.extend(_migrations(Path(match), source))
                    continue
                if not Path(match).is_file():
                    raise ConfigError(
                        f"--rolemig-schema / rolemig_schema: schema file {match} does not exist ({source})"
                    )
                files.append(Path(match))
    return resources.with_platform(tuple(files))


def _migrations(folder: Path, source: str) -> list[Path]:
    """A migrations folder: its ``*.sql`` files in name order, as ``supabase db reset`` applies them.

    A ``supabase/migrations`` folder is preceded by the bundled Supabase platform stand-in
    (API roles, the auth schema and its functions), which the migrations take for granted.
    """
    found = sorted((p for p in folder.glob("*.sql") if p.is_file()), key=lambda p: p.name)
    if not found:
        raise ConfigError(f"--rolemig-schema / rolemig_schema: folder {folder} holds no *.sql file "
                          f"({source})")
    if folder.resolve().parts[-2:] == ("supabase", "migrations"):
        found.insert(0, resources.supabase_platform())
    return found


def resolve(config: pytest.Config) -> RolemigConfig:
    """Resolve every setting once; raise :class:`ConfigError` naming the first bad one."""
    r, found = _resolved(config)
    values, sources = r.values, r.sources

    schema = values["schema"]
    if schema in (None, []):
        schema_files: tuple[Path, ...] = resources.demo_schema_files()
        sources["schema"] = "default (bundled demo)"
    else:
        entries = [schema] if isinstance(schema, str) else list(schema)
        schema_files = _schema_files(entries, r.roots["schema"], sources["schema"])

    mapping_file = r.path("mapping") or resources.demo_mapping()
    if not values["mapping"]:
        sources["mapping"] = "default (bundled demo)"
    if not mapping_file.is_file():
        raise ConfigError(
            f"--rolemig-mapping / rolemig_mapping: role mapping file {mapping_file} does not exist "
            f"({sources['mapping']})"
        )
    pg_bin = r.path("pg_bin")
    return RolemigConfig(
        gate=bool(config.getoption("rolemig")),
        schema_files=schema_files,
        mapping_file=mapping_file,
        mapping=load_mapping(mapping_file),
        target=r.target(),
        users=r.integer("users", 1),
        login_sample=r.integer("login_sample", 1),
        dsn=values["dsn"] or None,
        pg_bin=str(pg_bin) if pg_bin else None,
        server_dir=_folder(r, "server_dir"),
        report_dir=_path(values["report_dir"], r.roots["report_dir"]),
        ignored_env=IGNORED_ENV if values["dsn"] is None and os.environ.get(IGNORED_ENV) else None,
        roundtrip_examples=r.integer("roundtrip_examples", 1),
        update_access=_update_access(values["update_access"], mapping_file),
        auth=r.auth(),
        sources=sources,
        settings_file=found.shown if found else None,
    )


def _update_access(value: Any, mapping_file: Path) -> bool:
    """``--rolemig-update-access`` writes into the team's mapping, never into the bundled demo's."""
    if not value:
        return False
    if mapping_file == resources.demo_mapping():
        raise ConfigError("--rolemig-update-access / rolemig_update_access writes into your mapping file: "
                          "set --rolemig-mapping (the bundled demo mapping is not yours to change)")
    return True


def _folder(r: registry.Resolved, name: str) -> str | None:
    path = r.path(name)
    if path is None:
        return None
    if not path.is_dir():
        raise r.error(name, f": folder {path} does not exist")
    return str(path)


def header_lines(cfg: RolemigConfig) -> list[str]:
    """Chosen values and their source, for ``pytest_report_header``."""
    show: dict[str, Callable[[RolemigConfig], Any]] = {
        "schema": lambda c: ", ".join(str(p) for p in c.schema_files),
        "mapping": lambda c: c.mapping_file,
        "profiles_table": lambda c: f"{c.target.profiles_table} (key {c.target.key_column}, "
        f"role {c.target.role_column}"
        + (f", user {c.target.user_column})" if c.target.user_column else ")"),
        "sessions_table": lambda c: (f"{c.target.sessions_table} (user {c.target.sessions_user_column})"
                                     + (", none if the schema lacks it" if c.sessions_default else "")
                                     if c.target.sessions_table else "none (no sessions table)"),
        "users": lambda c: c.users if c.users <= c.login_sample
        else f"{c.users} (log-in check on a sample of {c.login_sample})",
        "batch_size": lambda c: c.target.batch_size,
        "api_role": lambda c: f"{c.auth.auth_role} (anon {c.auth.anon_role}"
        + (f", pre-request {c.auth.pre_request})" if c.auth.pre_request else ")"),
        "jwt_claims": lambda c: c.auth.jwt_claims or "Supabase (sub, role, user_role)",
        "roundtrip_examples": lambda c: c.roundtrip_examples,
        "dsn": lambda c: "ephemeral server" if c.dsn is None else "existing server (DSN set)",
    }
    lines = [f"rolemig {key}: {fn(cfg)} [{cfg.sources.get(key, 'default')}]" for key, fn in show.items()]
    if cfg.settings_file:
        lines.insert(0, f"rolemig settings: [tool.rolemig] in {cfg.settings_file} (the rolemig command reads "
                        "it too)")
    if cfg.ignored_env_note:
        lines.append(f"rolemig: {cfg.ignored_env_note}")
    return lines
