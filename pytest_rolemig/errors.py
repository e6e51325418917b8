"""Exceptions with messages that name what failed and how to fix it."""

from __future__ import annotations

from typing import Any


class RolemigError(Exception):
    """Base class for every error the plugin raises on purpose."""


class ServerError(RolemigError):
    """No server binaries, or the server did not start or cannot be reached."""


class ConfigError(RolemigError):
    """A setting is wrong: the message names the option and the ini key."""


class MappingError(ConfigError):
    """The role mapping file is missing, malformed, not total, or maps outside the new roles."""


class InstallError(RolemigError):
    """The SQL infrastructure could not be installed on the target database."""


class MappingRefused(InstallError):
    """The database refused the role mapping (e.g. another mapping while a migration is in effect)."""


def describe_pg_error(exc: Any, sep: str = " ") -> str:
    """A server error's message with its DETAIL and HINT, which carry the offending input."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc).strip()]
    if diag.message_detail:
        parts.append(f"DETAIL: {diag.message_detail}")
    if diag.message_hint:
        parts.append(f"HINT: {diag.message_hint}")
    return sep.join(parts)
