"""The role mapping: a TOML file naming the new roles and one new role per legacy role.

The mapping is data. It is read here, checked for shape, and loaded into
``migration_control.role_mapping`` by :func:`load_into`; whether it covers every
legacy role the schema and data allow is checked against the database.

Merged duplicates: where roles live in a table with one row per user and role (UNIQUE
(user_id, role)), a user holding two legacy roles the mapping merges would end with two
equal rows. The migration keeps one and deletes the other (logged as 'merged'; every
rollback inserts it back from the backup). The gate reports each such user and the unique
index, and fails on them unless the mapping acknowledges the outcome with the top-level key
``merge_duplicates = "keep_one"`` (the only value; leaving the key out means "tell me").
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_rolemig.errors import MappingError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


@dataclass(frozen=True)
class RoleMapping:
    """New roles, legacy -> new mapping, and the file it came from."""

    new_roles: tuple[str, ...]
    mapping: dict[str, str] = field(hash=False)
    source: str = "<memory>"
    # legacy role -> {"gains": (...), "loses": (...)}: deliberate access changes, each "table:COMMAND"
    access_changes: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict, hash=False)
    # object name (as the role-mention scan names it) -> why it may keep naming legacy roles
    acknowledged_mentions: dict[str, str] = field(default_factory=dict, hash=False)
    # "keep_one": merging two roles a user holds both of may delete one of their rows (see above)
    merge_duplicates: str | None = None

    @property
    def legacy_roles(self) -> tuple[str, ...]:
        """The legacy roles, in the order the mapping file lists them."""
        return tuple(self.mapping)

    def as_json(self) -> dict[str, Any]:
        """The new roles and the mapping as a JSON-ready dict (lists, not tuples)."""
        return {"new_roles": list(self.new_roles), "mapping": dict(self.mapping)}


def parse_mapping(data: dict[str, Any], source: str = "<memory>") -> RoleMapping:
    """Check the shape of a mapping document and build a :class:`RoleMapping`."""
    unknown = sorted(set(data) - {"new_roles", "mapping", "access_changes", "acknowledged_mentions",
                                  "merge_duplicates"})
    if unknown:
        raise MappingError(
            f"role mapping {source}: unknown key(s) {', '.join(unknown)}; "
            "expected only 'new_roles' (a list), a [mapping] table and optional [access_changes] and "
            "[acknowledged_mentions] tables"
        )
    new_roles = data.get("new_roles")
    if not isinstance(new_roles, list) or not new_roles or not all(
        isinstance(r, str) and r for r in new_roles
    ):
        raise MappingError(f"role mapping {source}: 'new_roles' must be a non-empty list of role names")
    duplicates = sorted({r for r in new_roles if new_roles.count(r) > 1})
    if duplicates:
        raise MappingError(f"role mapping {source}: new role(s) listed twice: {', '.join(duplicates)}")
    mapping = data.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise MappingError(f"role mapping {source}: a [mapping] table with one line per legacy role is required")
    bad_values = sorted(k for k, v in mapping.items() if not isinstance(v, str))
    if bad_values:
        raise MappingError(
            f"role mapping {source}: legacy role(s) {', '.join(bad_values)} must map to one role name (a string)"
        )
    outside = sorted(f"{k} -> {v}" for k, v in mapping.items() if v not in new_roles)
    if outside:
        raise MappingError(
            f"role mapping {source}: maps outside the new roles ({', '.join(new_roles)}): {', '.join(outside)}"
        )
    merge = data.get("merge_duplicates")
    if merge is not None and merge != "keep_one":
        raise MappingError(f'role mapping {source}: merge_duplicates must be "keep_one" (the only outcome the '
                           f"migration offers), got {merge!r}")
    return RoleMapping(new_roles=tuple(new_roles), mapping=dict(mapping), source=source, merge_duplicates=merge,
                       access_changes=_access_changes(data.get("access_changes", {}), mapping, source),
                       acknowledged_mentions=_acknowledged(data.get("acknowledged_mentions", {}), source))


def _acknowledged(data: Any, source: str) -> dict[str, str]:
    """Check ``[acknowledged_mentions]``: ``"schema.object" = "why it keeps legacy role names"``."""
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                             for k, v in data.items()):
        raise MappingError(f'role mapping {source}: [acknowledged_mentions] must map object names to a reason, '
                           'e.g. "public.audit_log.role" = "the audit trail keeps the names it recorded"')
    return dict(data)


_COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "EXECUTE", "*")  # EXECUTE: a function the API exposes


def _access_changes(data: Any, mapping: dict[str, str], source: str) -> dict[str, dict[str, tuple[str, ...]]]:
    """Check ``[access_changes]``: ``role = { gains = ["table:COMMAND"], loses = [...] }`` per legacy role."""
    if not isinstance(data, dict):
        raise MappingError(f"role mapping {source}: [access_changes] must be a table of legacy roles")
    changes: dict[str, dict[str, tuple[str, ...]]] = {}
    for role, entry in data.items():
        where = f"role mapping {source}: [access_changes] {role}"
        if role not in mapping:
            raise MappingError(f"{where}: not a legacy role of the [mapping] table")
        if not isinstance(entry, dict) or set(entry) - {"gains", "loses"}:
            raise MappingError(f'{where}: expected {{ gains = ["table:COMMAND", ...], loses = [...] }}')
        parsed: dict[str, tuple[str, ...]] = {}
        for kind in ("gains", "loses"):
            items = entry.get(kind, [])
            bad = [i for i in items if not isinstance(i, str) or i.count(":") != 1
                   or not i.split(":")[0] or i.split(":")[1].upper() not in _COMMANDS] \
                if isinstance(items, list) else [items]
            if bad:
                raise MappingError(
                    f"{where}.{kind}: {', '.join(map(repr, bad))} must be \"table:COMMAND\" "
                    f"(table as name, schema.name or *; COMMAND one of {', '.join(_COMMANDS)})"
                )
            parsed[kind] = tuple(f"{i.split(':')[0]}:{i.split(':')[1].upper()}" for i in items)
        changes[role] = parsed
    return changes


def render_access_changes(changes: dict[str, dict[str, tuple[str, ...]]], order: tuple[str, ...] = ()) -> str:
    """``[access_changes]`` as TOML: one line per legacy role, roles in ``order`` (then by name)."""
    rank = {role: i for i, role in enumerate(order)}
    lines = ["[access_changes]"]
    for role in sorted(changes, key=lambda r: (rank.get(r, len(rank)), r)):
        kinds = [f"{kind} = [{', '.join(json.dumps(e) for e in sorted(changes[role][kind]))}]"
                 for kind in ("gains", "loses") if changes[role].get(kind)]
        if kinds:
            lines.append(f"{json.dumps(role) if not _BARE_KEY.fullmatch(role) else role} = {{ {', '.join(kinds)} }}")
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TABLE_HEADER = re.compile(r"^\s*\[")


def write_access_changes(path: str | Path, changes: dict[str, dict[str, tuple[str, ...]]]) -> RoleMapping:
    """Replace the ``[access_changes]`` table of a mapping file, keeping every other line as it is.

    The rest of the file (comments, key order, other tables) is left alone; the new file is
    read back and checked before it replaces the old one, so a bad write loses nothing.
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8")
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == "[access_changes]"), None)
    mapping = parse_mapping(tomllib.loads(old), source=str(path))
    block = render_access_changes(changes, mapping.legacy_roles)
    if start is None:
        text = old + ("" if not old or old.endswith("\n") else "\n") + "\n" + block
    else:
        end = next((i for i in range(start + 1, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
        tail = lines[end:]
        text = "".join(lines[:start]) + block + ("\n" if tail else "") + "".join(tail)
    checked = parse_mapping(tomllib.loads(text), source=str(path))
    path.write_text(text, encoding="utf-8")
    return checked


def load_mapping(path: str | Path) -> RoleMapping:
    """Read and check a TOML mapping file."""
    path = Path(path)
    if not path.is_file():
        raise MappingError(
            f"role mapping file {path} does not exist (set --rolemig-mapping or the rolemig_mapping ini key)"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"role mapping file {path} is not valid TOML: {exc}") from exc
    return parse_mapping(data, source=str(path))


def load_into(conn: Any, mapping: RoleMapping) -> None:
    """Replace the mapping stored in the database by this one (same transaction as the caller).

    Kept for callers of earlier versions: :func:`pytest_rolemig.api.load_role_mapping` does it.
    """
    from pytest_rolemig import api

    api.load_role_mapping(conn, mapping)
