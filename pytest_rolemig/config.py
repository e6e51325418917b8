"""Settings of the plugin: declared once, resolved once into a frozen dataclass.

Each setting exists as a command-line option ``--rolemig-x`` and an ini key
``rolemig_x`` sharing one help text. Precedence: command line, then environment
(only ``ROLEMIG_DSN`` for the server), then ini / ``[tool.pytest.ini_options]``,
then the default. "Set" means ``is not None``, so a command-line ``0`` wins.

``DATABASE_URL`` is the CLI's variable and is never read here: the gate creates and
drops databases, so it must not land on a server just because a shell exported one.
Relative paths resolve as pytest's own path ini keys do: command-line and environment
values against the folder pytest was invoked from, ini values (and defaults) against
the ini file's folder; never against the rootdir, which moves with other arguments.
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
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping, load_mapping
from pytest_rolemig.postgrest import AuthSettings, parse_claims
from pytest_rolemig.target import Target, parse_ident, qualified_name, quote_name


@dataclass(frozen=True)
class Setting:
    """One setting: its name (``rolemig_<name>`` / ``--rolemig-<name>``), help, kind, default."""

    name: str
    help: str
    kind: str = "string"  # string | int | linelist | bool
    default: Any = None
    env: str | None = None
    path: bool = False  # a path: relative values resolve against the invocation or the ini file's folder

    @property
    def ini(self) -> str:
        """The ini key, ``rolemig_<name>`` (also the option's ``dest``)."""
        return f"rolemig_{self.name}"

    @property
    def flag(self) -> str:
        """The command-line option, ``--rolemig-<name>`` with dashes."""
        return "--rolemig-" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("schema", "Schema SQL files to load, in order (globs allowed), or a migrations folder: its *.sql "
            "files in name order, each in its own transaction. Default: the bundled demo.",
            "linelist", path=True),
    Setting("mapping", "Role mapping TOML file (new_roles + [mapping]). Default: the bundled demo mapping.",
            path=True),
    Setting("profiles_table", "Table holding one row per user with the role column.",
            default="public.user_profiles"),
    Setting("key_column", "User key column of the profiles table.", default="id"),
    Setting("role_column", "Role column of the profiles table.", default="role"),
    Setting("user_column", "Column of the profiles table holding the user's id, the value the JWT claims "
            "carry (a roles table with one row per user and role: user_id). Default: the key column."),
    Setting("sessions_table", "Table holding user sessions; 'none' (or empty) for an application without "
            "one. Left at its default, a schema without auth.sessions has none.", default="auth.sessions"),
    Setting("sessions_user_column", "Column of the sessions table naming the user.", default="user_id"),
    Setting("policy_schemas", "Schemas whose RLS policies are backed up and rewritten.", "linelist",
            default=("public", "auth")),
    Setting("users", "Number of users to seed, spread over every legacy role (at least 1).", "int",
            default=130),
    Setting("batch_size", "Users migrated per batch.", "int", default=1000),
    Setting("login_sample", "Users the gate logs in as after the migration: all of them up to this many, "
            "beyond it a random sample that covers every role.", "int", default=2000),
    Setting("dsn", "Use this existing server (libpq DSN) instead of an ephemeral one; databases are "
            "created and dropped on it. Environment: ROLEMIG_DSN (DATABASE_URL is ignored).",
            env="ROLEMIG_DSN"),
    Setting("pg_bin", "Folder of the PostgreSQL server binaries (or pg_ctl itself). Default: searched.",
            path=True),
    Setting("server_dir", "Folder for the ephemeral server's data. Default: /dev/shm (memory) when it has "
            "2 GiB free, else the system temp folder.", path=True),
    Setting("report_dir", "Folder for the gate's reports (JSON and Markdown).", default="reports", path=True),
    Setting("update_access", "Write the access changes the migration measurably makes into the mapping "
            "file's [access_changes] (the rest of the file is kept), so that the next run passes: review "
            "the diff as you review a snapshot update.", "bool", default=False),
    Setting("api_role", "Database role a logged-in request switches to (SET LOCAL ROLE), as PostgREST's "
            "JWT role.", default="authenticated"),
    Setting("anon_role", "Database role of a request without a JWT (PostgREST's db-anon-role).",
            default="anon"),
    Setting("jwt_claims", "JWT claims of a logged-in request, a JSON object; the values \"{user}\" and "
            "\"{role}\" become the user's id and app role. Default: Supabase's "
            "{\"sub\": \"{user}\", \"role\": <api role>, \"user_role\": \"{role}\"}."),
    Setting("pre_request", "Function called after the claims are set and the role switched, as PostgREST's "
            "db-pre-request (schema.function, no arguments). Default: none."),
    Setting("roundtrip_examples", "Hypothesis examples of the gate's round-trip property, per rollback mode.",
            "int", default=25),
)

_BY_NAME = {s.name: s for s in SETTINGS}


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
        return self.schema_files == (resources.demo_schema(),)


_RELATIVE = " A relative path is from the current folder (in the ini file: from the ini file's folder)."


def add_options(parser: pytest.Parser) -> None:
    """Declare ``--rolemig`` and every setting, as option and ini key."""
    group = parser.getgroup("rolemig", "role migration gate (pytest-rolemig)")
    group.addoption("--rolemig", action="store_true", dest="rolemig", default=False,
                    help="Run the built-in migration gate tests.")
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


def _raw(config: pytest.Config, s: Setting) -> tuple[Any, str, Path]:
    """The value, where it came from, and the folder a relative path in it is relative to."""
    invoked = Path(config.invocation_params.dir)
    ini_dir = config.inipath.parent if config.inipath is not None else invoked
    cli = config.getoption(s.ini)
    if cli is not None:
        return cli, f"command line {s.flag}", invoked
    if s.env and os.environ.get(s.env):
        return os.environ[s.env], f"environment {s.env}", invoked
    ini = config.getini(s.ini)
    if ini not in (None, "", [], False):  # False: a bool ini key left unset
        return ini, f"ini {s.ini}", ini_dir
    return s.default, "default", ini_dir


def _path(value: str, root: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path


def _as_int(s: Setting, value: Any, source: str, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{s.flag} / {s.ini} must be a whole number, got {value!r} ({source})") from None
    if number < minimum:
        raise ConfigError(f"{s.flag} / {s.ini} must be at least {minimum}, got {number} ({source})")
    return number


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
    return tuple(files)


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
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    roots: dict[str, Path] = {}
    for s in SETTINGS:
        values[s.name], sources[s.name], roots[s.name] = _raw(config, s)

    schema = values["schema"]
    if schema in (None, []):
        schema_files: tuple[Path, ...] = (resources.demo_schema(),)
        sources["schema"] = "default (bundled demo)"
    else:
        schema_files = _schema_files(list(schema), roots["schema"], sources["schema"])

    mapping_file = (
        _path(values["mapping"], roots["mapping"]) if values["mapping"] else resources.demo_mapping()
    )
    if not values["mapping"]:
        sources["mapping"] = "default (bundled demo)"
    if not mapping_file.is_file():
        raise ConfigError(
            f"--rolemig-mapping / rolemig_mapping: role mapping file {mapping_file} does not exist "
            f"({sources['mapping']})"
        )

    policy_schemas = tuple(
        p.strip() for entry in values["policy_schemas"] for p in str(entry).split(",") if p.strip()
    )
    target = Target(
        profiles_table=_qualified("profiles_table", values["profiles_table"], sources),
        key_column=_identifier("key_column", values["key_column"], sources),
        role_column=_identifier("role_column", values["role_column"], sources),
        user_column=(_identifier("user_column", values["user_column"], sources)
                     if values["user_column"] is not None else None),
        sessions_table=_sessions(values["sessions_table"], sources),
        sessions_user_column=_identifier("sessions_user_column", values["sessions_user_column"], sources),
        policy_schemas=policy_schemas or ("public",),
        batch_size=_as_int(_BY_NAME["batch_size"], values["batch_size"], sources["batch_size"], 1),
    )
    return RolemigConfig(
        gate=bool(config.getoption("rolemig")),
        schema_files=schema_files,
        mapping_file=mapping_file,
        mapping=load_mapping(mapping_file),
        target=target,
        users=_as_int(_BY_NAME["users"], values["users"], sources["users"], 1),
        login_sample=_as_int(_BY_NAME["login_sample"], values["login_sample"], sources["login_sample"], 1),
        dsn=values["dsn"] or None,
        pg_bin=str(_path(values["pg_bin"], roots["pg_bin"])) if values["pg_bin"] else None,
        server_dir=_folder("server_dir", values["server_dir"], roots["server_dir"], sources),
        report_dir=_path(values["report_dir"], roots["report_dir"]),
        ignored_env=IGNORED_ENV if values["dsn"] is None and os.environ.get(IGNORED_ENV) else None,
        roundtrip_examples=_as_int(_BY_NAME["roundtrip_examples"], values["roundtrip_examples"],
                                   sources["roundtrip_examples"], 1),
        update_access=_update_access(values["update_access"], mapping_file),
        auth=AuthSettings(
            auth_role=_identifier("api_role", values["api_role"], sources, "a role"),
            anon_role=_identifier("anon_role", values["anon_role"], sources, "a role"),
            jwt_claims=_claims(values["jwt_claims"], sources),
            pre_request=_function("pre_request", values["pre_request"], sources),
        ),
        sources=sources,
    )


def _update_access(value: Any, mapping_file: Path) -> bool:
    """``--rolemig-update-access`` writes into the team's mapping, never into the bundled demo's."""
    if not value:
        return False
    if mapping_file == resources.demo_mapping():
        raise ConfigError("--rolemig-update-access / rolemig_update_access writes into your mapping file: "
                          "set --rolemig-mapping (the bundled demo mapping is not yours to change)")
    return True


def _folder(name: str, value: Any, root: Path, sources: dict[str, str]) -> str | None:
    if not value:
        return None
    path = _path(str(value), root)
    if not path.is_dir():
        s = _BY_NAME[name]
        raise ConfigError(f"{s.flag} / {s.ini}: folder {path} does not exist ({sources[name]})")
    return str(path)


def _identifier(name: str, value: Any, sources: dict[str, str], what: str = "a column") -> str:
    """A column name, as it is: the CLI and ``configure_target`` take plain names, never quoted ones."""
    s = _BY_NAME[name]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{s.flag} / {s.ini} must name {what} ({sources[name]})")
    return value.strip()


NO_SESSIONS = ("", "none")
"""Values of the sessions table setting meaning: the application has no sessions table."""


def _sessions(value: Any, sources: dict[str, str]) -> str | None:
    """The sessions table, or None for 'none' / an empty value (no sessions table)."""
    if value is None or str(value).strip().lower() in NO_SESSIONS:
        return None
    return _qualified("sessions_table", value, sources)


def _claims(value: Any, sources: dict[str, str]) -> str | None:
    """The claims template as canonical JSON text, or None for the Supabase default."""
    if value is None or not str(value).strip():
        return None
    s = _BY_NAME["jwt_claims"]
    try:
        return parse_claims(str(value))
    except ValueError as exc:
        raise ConfigError(f"{s.flag} / {s.ini}: {exc} ({sources['jwt_claims']})") from None


def _function(name: str, value: Any, sources: dict[str, str]) -> str | None:
    """A function name (``schema.fn``) in its canonical spelling, or None when unset."""
    if value is None or not str(value).strip():
        return None
    s = _BY_NAME[name]
    try:
        return ".".join(quote_name(part) for part in parse_ident(str(value)))
    except ValueError as exc:
        raise ConfigError(f"{s.flag} / {s.ini}: {exc} ({sources[name]})") from None


def _qualified(name: str, value: Any, sources: dict[str, str]) -> str:
    """A table name read as the CLI and ``configure_target`` read it, in its canonical spelling."""
    s = _BY_NAME[name]
    text = _identifier(name, value, sources)
    try:
        return qualified_name(text)
    except ValueError as exc:
        raise ConfigError(f"{s.flag} / {s.ini}: {exc} ({sources[name]})") from None


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
    if cfg.ignored_env_note:
        lines.append(f"rolemig: {cfg.ignored_env_note}")
    return lines
