"""Which tables and columns of the application the migration works on.

Table names are written as SQL spells them (``schema.table``, ``"My Schema"."User Profiles"``),
because that is what ``migration_control.configure_target`` takes (it reads them with
``parse_ident``). :func:`split_qualified` reads them the same way in Python, so the gate,
the CLI and the SQL agree on which table a name means. Column names are plain names, never
quoted: they are compared with the catalog as they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")
"""A name that needs no quotes and that parse_ident keeps as it is."""


def parse_ident(text: str) -> tuple[str, ...]:
    """The parts of a dotted SQL name, as PostgreSQL's ``parse_ident()`` returns them.

    Quoted parts keep their case, spaces and dots (``""`` is a quote); unquoted parts are
    folded to lower case and may hold letters, digits, ``_`` and ``$``. Anything else is a
    :class:`ValueError` saying where the name stops making sense.
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i < n and text[i] == '"':
            end = i + 1
            part = []
            while True:
                close = text.find('"', end)
                if close < 0:
                    raise ValueError(f"{text!r}: unclosed double quote")
                part.append(text[end:close])
                if text.startswith('"', close + 1):  # "" is a quote inside the name
                    part.append('"')
                    end = close + 2
                    continue
                i = close + 1
                break
            name = "".join(part)
            if not name:
                raise ValueError(f"{text!r}: empty quoted name")
        else:
            start = i
            while i < n and (text[i].isalnum() or text[i] in "_$" or ord(text[i]) > 127):
                i += 1
            name = text[start:i]
            if not name or name[0] in "0123456789$":
                raise ValueError(f"{text!r}: expected a name at position {start + 1}")
            name = "".join(c.lower() if c.isascii() else c for c in name)
        parts.append(name)
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return tuple(parts)
        if text[i] != ".":
            raise ValueError(f"{text!r}: unexpected {text[i]!r} at position {i + 1} "
                             '(quote names with spaces or capitals: "My Schema"."User Profiles")')
        i += 1


def split_qualified(text: str, default_schema: str = "public") -> tuple[str, str]:
    """``schema.table`` (SQL spelling) -> (schema, table); a bare table is in ``default_schema``."""
    parts = parse_ident(text)
    if len(parts) == 1:
        return default_schema, parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"{text!r}: expected schema.table, got {len(parts)} dotted parts")


def quote_name(name: str) -> str:
    """``name`` as SQL spells it: as it is when that reads back the same, else in double quotes."""
    return name if _PLAIN.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def qualified_name(text: str, default_schema: str = "public") -> str:
    """The canonical spelling of a table name: ``app.members``, ``"Crm"."User Profiles"``."""
    return ".".join(quote_name(part) for part in split_qualified(text, default_schema))


@dataclass(frozen=True)
class Target:
    """Where the application keeps user roles and sessions.

    Defaults describe a Supabase-style application (and the bundled demo); they are the
    settings' defaults too (:mod:`pytest_rolemig.settings`), written nowhere else in Python.
    Tables are SQL-spelled names (see :func:`split_qualified`); columns are plain names.
    :func:`pytest_rolemig.api.configure_target` stores a target.
    """

    profiles_table: str = "public.user_profiles"
    key_column: str = "id"
    role_column: str = "role"
    sessions_table: str | None = "auth.sessions"  # None: the application has no sessions table
    sessions_user_column: str = "user_id"
    policy_schemas: tuple[str, ...] = ("public", "auth")
    batch_size: int = 1000
    # the column holding the user's id (what the JWT claims carry); None: the key column. A roles
    # table with one row per user and role keys rows by their own id and names the user here.
    user_column: str | None = None

    @property
    def user(self) -> str:
        """The column naming the user: ``user_column``, else the key column."""
        return self.user_column or self.key_column

    @property
    def profiles_name(self) -> tuple[str, str]:
        """(schema, table) of the profiles table, as the catalog names them."""
        return split_qualified(self.profiles_table)

    @property
    def sessions_name(self) -> tuple[str, str]:
        """(schema, table) of the sessions table, as the catalog names them (there must be one)."""
        if self.sessions_table is None:
            raise ValueError("the target has no sessions table")
        return split_qualified(self.sessions_table)
