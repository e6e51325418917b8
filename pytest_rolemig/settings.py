"""The settings registry: every setting and its default once, read alike by the gate and the CLI.

A setting has one name (``profiles_table``) spelled per channel: ``--rolemig-profiles-table`` and
``rolemig_profiles_table`` for pytest, ``--profiles-table`` for ``rolemig``, ``profiles_table`` in
``[tool.rolemig]`` of ``pyproject.toml``. Both front ends resolve a value from their channels in
the same order -- command line, environment (where the setting has a variable), file, default --
where "set" means ``is not None``, and remember the source of each value, which they print.

The ``[tool.rolemig]`` file is found as pytest finds its rootdir: from the current folder upwards,
the first ``pyproject.toml`` holding the table (or the file given with ``--rolemig-config`` /
``--config``). Relative paths in it are from its folder. Target defaults come from
:class:`~pytest_rolemig.target.Target` and request defaults from
:class:`~pytest_rolemig.postgrest.AuthSettings`, so a default is written in one place.

This module does not import pytest: the CLI reads it too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.postgrest import AuthSettings, parse_claims
from pytest_rolemig.target import Target, parse_ident, qualified_name, quote_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

_TARGET = Target()
_AUTH = AuthSettings()


@dataclass(frozen=True)
class Setting:
    """One setting: its name, help, kind, default, and the ``rolemig`` option that sets it (if any)."""

    name: str
    help: str
    kind: str = "string"  # string | int | linelist | bool
    default: Any = None
    env: str | None = None
    path: bool = False  # a path: relative values resolve against the invocation or the file's folder
    cli: str | None = None  # the rolemig command's option for it (install), when it has one

    @property
    def ini(self) -> str:
        """The ini key, ``rolemig_<name>`` (also the pytest option's ``dest``)."""
        return f"rolemig_{self.name}"

    @property
    def flag(self) -> str:
        """The pytest command-line option, ``--rolemig-<name>`` with dashes."""
        return "--rolemig-" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("schema", "Schema SQL files to load, in order (globs allowed), or a migrations folder: its *.sql "
            "files in name order, each in its own transaction. Default: the bundled demo.",
            "linelist", path=True),
    Setting("mapping", "Role mapping TOML file (new_roles + [mapping]). Default: the bundled demo mapping.",
            path=True, cli="--mapping"),
    Setting("profiles_table", "Table holding one row per user with the role column.",
            default=_TARGET.profiles_table, cli="--profiles-table"),
    Setting("key_column", "User key column of the profiles table.", default=_TARGET.key_column,
            cli="--key-column"),
    Setting("role_column", "Role column of the profiles table.", default=_TARGET.role_column,
            cli="--role-column"),
    Setting("user_column", "Column of the profiles table holding the user's id, the value the JWT claims "
            "carry (a roles table with one row per user and role: user_id). Default: the key column.",
            cli="--user-column"),
    Setting("sessions_table", "Table holding user sessions; 'none' (or empty) for an application without "
            "one. Left at its default, a schema without auth.sessions has none.",
            default=_TARGET.sessions_table, cli="--sessions-table"),
    Setting("sessions_user_column", "Column of the sessions table naming the user.",
            default=_TARGET.sessions_user_column, cli="--sessions-user-column"),
    Setting("policy_schemas", "Schemas whose RLS policies are backed up and rewritten.", "linelist",
            default=_TARGET.policy_schemas, cli="--policy-schema"),
    Setting("users", "Number of users to seed, spread over every legacy role (at least 1).", "int",
            default=130),
    Setting("batch_size", "Users migrated per batch.", "int", default=_TARGET.batch_size, cli="--batch-size"),
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
            "JWT role.", default=_AUTH.auth_role, cli="--api-role"),
    Setting("anon_role", "Database role of a request without a JWT (PostgREST's db-anon-role).",
            default=_AUTH.anon_role, cli="--anon-role"),
    Setting("jwt_claims", "JWT claims of a logged-in request, a JSON object; the values \"{user}\" and "
            "\"{role}\" become the user's id and app role. Default: Supabase's "
            "{\"sub\": \"{user}\", \"role\": <api role>, \"user_role\": \"{role}\"}.", cli="--jwt-claims"),
    Setting("pre_request", "Function called after the claims are set and the role switched, as PostgREST's "
            "db-pre-request (schema.function, no arguments). Default: none.", cli="--pre-request"),
    Setting("roundtrip_examples", "Hypothesis examples of the gate's round-trip property, per rollback mode.",
            "int", default=25),
)

BY_NAME = {s.name: s for s in SETTINGS}

INT_MAX = 2_147_483_647
"""The largest value of the SQL integer columns and parameters the whole-number settings reach."""

NO_SESSIONS = ("", "none")
"""Values of the sessions table setting meaning: the application has no sessions table."""

# ------------------------------------------------------------ [tool.rolemig] ---

PYPROJECT = "pyproject.toml"
SECTION = "[tool.rolemig]"


def _shown(path: Path, cwd: Path) -> str:
    """The file as messages name it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class SettingsFile:
    """The ``[tool.rolemig]`` table of one ``pyproject.toml``: its values (checked for kind) and path."""

    path: Path
    values: dict[str, Any] = field(hash=False)
    shown: str = ""  # the path as messages name it

    def source(self, s: Setting) -> str:
        """Where a value of this file came from, as the header and error messages name it."""
        return f"tool.rolemig.{s.name} in {self.shown or self.path}"


def find_settings_file(start: Path) -> Path | None:
    """The first ``pyproject.toml`` with a ``[tool.rolemig]`` table, from ``start`` upwards."""
    for folder in (start, *start.parents):
        candidate = folder / PYPROJECT
        if not candidate.is_file():
            continue
        try:
            text = candidate.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return candidate  # reported by load_settings_file, as pytest reports a broken pyproject.toml
        if isinstance(data.get("tool"), dict) and "rolemig" in data["tool"]:
            return candidate
    return None


_KINDS = {"string": "a string", "int": "a whole number", "bool": "true or false",
          "linelist": "a string or a list of strings"}


def _kind_ok(s: Setting, value: Any) -> bool:
    if s.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if s.kind == "bool":
        return isinstance(value, bool)
    if s.kind == "linelist":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return isinstance(value, str)


def load_settings_file(path: Path, cwd: Path) -> SettingsFile:
    """Read and check ``[tool.rolemig]`` of ``path``; a :class:`ConfigError` names the key and the file."""
    shown = _shown(path, cwd)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {shown}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"settings file {shown} is not valid TOML: {exc}") from None
    tool = data.get("tool")
    if not isinstance(tool, dict) or "rolemig" not in tool:
        raise ConfigError(f"settings file {shown} has no {SECTION} table")
    table = tool["rolemig"]
    if not isinstance(table, dict):
        raise ConfigError(f"{SECTION} in {shown} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(BY_NAME))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {SECTION} of {shown}; "
                          f"known keys: {', '.join(BY_NAME)}")
    for key, value in table.items():
        s = BY_NAME[key]
        if not _kind_ok(s, value):
            raise ConfigError(f"tool.rolemig.{key} in {shown} must be {_KINDS[s.kind]}, got {value!r}")
    return SettingsFile(path=path, values=dict(table), shown=shown)


def settings_file(explicit: str | None, cwd: Path, option: str) -> SettingsFile | None:
    """The settings file given with ``option`` (it must exist), else the one found from ``cwd`` up."""
    if explicit is not None:
        path = Path(explicit)
        path = path if path.is_absolute() else cwd / path
        if not path.is_file():
            raise ConfigError(f"{option}: settings file {path} does not exist")
        return load_settings_file(path, cwd)
    found = find_settings_file(cwd)
    return load_settings_file(found, cwd) if found is not None else None


# ----------------------------------------------------------------- resolving ---

@dataclass(frozen=True)
class Channel:
    """One place a value can come from: how to read it, how to name it, what relative paths are from."""

    get: Callable[[Setting], Any]  # None: not set here
    source: Callable[[Setting], str]
    root: Path


def file_channel(found: SettingsFile | None) -> list[Channel]:
    """The ``[tool.rolemig]`` channel (none without a file)."""
    if found is None:
        return []
    return [Channel(lambda s: found.values.get(s.name), found.source, found.path.parent)]


def env_channel(cwd: Path) -> Channel:
    """Environment variables, for the settings that have one (``ROLEMIG_DSN``)."""
    return Channel(lambda s: (os.environ.get(s.env) or None) if s.env else None,
                   lambda s: f"environment {s.env}", cwd)


def _same(a: Any, b: Any) -> bool:
    """Whether two channels give the same value (an ini "7" and a TOML 7 do)."""
    def norm(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return tuple(p.strip() for x in v for p in str(x).split(",") if p.strip())
        return v if isinstance(v, bool) else str(v).strip()
    return bool(norm(a) == norm(b))


@dataclass(frozen=True)
class Resolved:
    """Every setting's raw value, its source and its folder, with the checks that turn them into values.

    ``label`` names a setting in messages as the front end spells it (``--rolemig-users /
    rolemig_users`` in pytest, ``--batch-size / batch_size`` in the CLI); the source in brackets
    names the channel (the file and key for ``[tool.rolemig]``).
    """

    values: dict[str, Any]
    sources: dict[str, str]
    roots: dict[str, Path]
    label: Callable[[Setting], str]

    def error(self, name: str, text: str) -> ConfigError:
        """A one-line error: which setting, what is wrong, where the value came from."""
        return ConfigError(f"{self.label(BY_NAME[name])}{text} ({self.sources[name]})")

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> int:
        """A whole number of at least ``minimum`` (and at most ``maximum``)."""
        value = self.values[name]
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise self.error(name, f" must be a whole number, got {value!r}") from None
        if number < minimum:
            raise self.error(name, f" must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise self.error(name, f" must be at most {maximum}, got {number}")
        return number

    def path(self, name: str) -> Path | None:
        """A path, relative ones from the folder of the channel that gave it; None when unset."""
        value = self.values[name]
        if value in (None, ""):
            return None
        path = Path(str(value))
        return path if path.is_absolute() else self.roots[name] / path

    def identifier(self, name: str, what: str = "a column") -> str:
        """A column or role name, as it is: ``configure_target`` takes plain names, never quoted ones."""
        value = self.values[name]
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f" must name {what}")
        return value.strip()

    def qualified(self, name: str) -> str:
        """A table name read as ``configure_target`` reads it, in its canonical spelling."""
        text = self.identifier(name)
        try:
            return qualified_name(text)
        except ValueError as exc:
            raise self.error(name, f": {exc}") from None

    def sessions(self) -> str | None:
        """The sessions table, or None for 'none' / an empty value (no sessions table)."""
        value = self.values["sessions_table"]
        if value is None or str(value).strip().lower() in NO_SESSIONS:
            return None
        return self.qualified("sessions_table")

    def listed(self, name: str) -> tuple[str, ...]:
        """A list setting: repeated values, one per line, or comma-separated."""
        value = self.values[name]
        entries = [value] if isinstance(value, str) else list(value or ())
        return tuple(p.strip() for entry in entries for p in str(entry).split(",") if p.strip())

    def claims(self) -> str | None:
        """The claims template as canonical JSON text, or None for the Supabase default."""
        value = self.values["jwt_claims"]
        if value is None or not str(value).strip():
            return None
        try:
            return parse_claims(str(value))
        except ValueError as exc:
            raise self.error("jwt_claims", f": {exc}") from None

    def function(self, name: str) -> str | None:
        """A function name (``schema.fn``) in its canonical spelling, or None when unset."""
        value = self.values[name]
        if value is None or not str(value).strip():
            return None
        try:
            return ".".join(quote_name(part) for part in parse_ident(str(value)))
        except ValueError as exc:
            raise self.error(name, f": {exc}") from None

    def target(self) -> Target:
        """The application's tables and columns."""
        return Target(
            profiles_table=self.qualified("profiles_table"),
            key_column=self.identifier("key_column"),
            role_column=self.identifier("role_column"),
            user_column=self.identifier("user_column") if self.values["user_column"] is not None else None,
            sessions_table=self.sessions(),
            sessions_user_column=self.identifier("sessions_user_column"),
            policy_schemas=self.listed("policy_schemas") or ("public",),
            batch_size=self.integer("batch_size", 1, INT_MAX),
        )

    def auth(self) -> AuthSettings:
        """How requests authenticate (PostgREST's roles, claims and pre-request function)."""
        return AuthSettings(
            auth_role=self.identifier("api_role", "a role"),
            anon_role=self.identifier("anon_role", "a role"),
            jwt_claims=self.claims(),
            pre_request=self.function("pre_request"),
        )


def resolve(tiers: Sequence[Sequence[Channel]], default_root: Path,
            label: Callable[[Setting], str], names: Sequence[str] | None = None) -> Resolved:
    """Each setting from the first tier that sets it (``is not None``), else its default.

    Channels of one tier are equals (pytest's ini keys and ``[tool.rolemig]``): when two of them
    set a setting to different values, that is an error naming both, never a silent choice.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    roots: dict[str, Path] = {}
    for s in SETTINGS if names is None else [BY_NAME[n] for n in names]:
        values[s.name], sources[s.name], roots[s.name] = s.default, "default", default_root
        for tier in tiers:
            found = [(c, c.get(s)) for c in tier]
            found = [(c, v) for c, v in found if v is not None]
            if not found:
                continue
            channel, value = found[0]
            for other, other_value in found[1:]:
                if not _same(value, other_value):
                    raise ConfigError(
                        f"{label(s)} is set twice, to {value!r} ({channel.source(s)}) and to {other_value!r} "
                        f"({other.source(s)}): set it in one place")
            values[s.name], sources[s.name], roots[s.name] = value, channel.source(s), channel.root
            break
    return Resolved(values, sources, roots, label)
