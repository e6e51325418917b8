"""The settings ``rolemig`` reads: its options, then ``[tool.rolemig]``, then the registry's defaults.

The same registry and the same ``[tool.rolemig]`` file as the gate (:mod:`pytest_rolemig.settings`),
so the target ``pytest --rolemig`` rehearses is the target ``rolemig install`` stores, unless an
option says otherwise, and ``rolemig config`` prints each value with where it came from.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_rolemig import settings
from pytest_rolemig.settings import BY_NAME, Setting

CONFIG_OPTION = "--config"

USED = tuple(s.name for s in settings.SETTINGS if s.cli is not None) + ("users",)
"""The settings the CLI reads: those it has an option for, and ``users`` (``install --demo``
seeds that many unless ``--demo-users`` says otherwise)."""

TARGET_KEYS = tuple(name for name in USED if name not in ("mapping", "users"))
"""The settings ``rolemig install`` stores in ``migration_control.target_config``."""


def default_help(name: str) -> str:
    """``default: [tool.rolemig] name in pyproject.toml, else X``: how an option's help names its fallbacks."""
    s = BY_NAME[name]
    default = s.default
    if isinstance(default, (tuple, list)):
        default = " and ".join(default)
    return f"default: {settings.SECTION} {name} in pyproject.toml, else {default}"


def _label(s: Setting) -> str:
    return f"{s.cli} / {s.name}" if s.cli else s.name


@dataclass(frozen=True)
class CliSettings:
    """The resolved settings and the ``[tool.rolemig]`` file they read (None: there is none)."""

    resolved: settings.Resolved
    file: settings.SettingsFile | None

    @property
    def file_shown(self) -> str:
        """The settings file as messages name it."""
        return self.file.shown if self.file else f"none (no pyproject.toml with {settings.SECTION} here or above)"

    def values(self) -> dict[str, Any]:
        """Every setting the CLI reads, checked and spelled as it is stored (``App.Members`` reads
        ``app.members``), the mapping as a full path; a bad value raises :class:`ConfigError`."""
        from pytest_rolemig import resources

        r = self.resolved
        target, auth = r.target(), r.auth()
        checked = {name: getattr(target, name) for name in TARGET_KEYS if hasattr(target, name)}
        checked.update(api_role=auth.auth_role, anon_role=auth.anon_role, jwt_claims=auth.jwt_claims,
                       pre_request=auth.pre_request, mapping=str(r.path("mapping") or resources.demo_mapping()),
                       users=r.integer("users", 1))
        return {name: checked[name] for name in r.values}

    def lines(self) -> list[str]:
        """``name: value [source]``, one line per setting the CLI reads, checked (as the gate prints them)."""
        def shown(value: Any) -> str:
            if isinstance(value, (list, tuple)):
                return ", ".join(str(v) for v in value)
            return "none" if value is None else str(value)
        return [f"{name}: {shown(value)} [{self.resolved.sources[name]}]" for name, value in self.values().items()]


def resolve(args: argparse.Namespace, cwd: Path | None = None) -> CliSettings:
    """Every setting the CLI reads: an option given (``is not None``), else the file, else the default."""
    cwd = cwd or Path.cwd()
    found = settings.settings_file(getattr(args, "config", None), cwd, CONFIG_OPTION)
    option = settings.Channel(lambda s: getattr(args, s.name, None) if s.cli else None,
                              lambda s: f"command line {s.cli}", cwd)
    resolved = settings.resolve([[option], settings.file_channel(found)], cwd, _label, USED)
    if resolved.values["mapping"] is None:  # as the gate names it
        resolved.sources["mapping"] = "default (bundled demo)"
    return CliSettings(resolved, found)
