"""Hypothesis strategies for user sets: users of the legacy roles, with their sessions.

The data a role migration must not lose is whatever the application holds, so
the strategies generate values at the edges PostgreSQL accepts: unicode and
mixed-case names, e-mails with quotes and plus signs, empty and deeply nested
jsonb, NULL in every nullable column, timestamps at the ends of the range and
``infinity``, duplicate display names, users without sessions and with many.

Rows are built from a :class:`TableShape` (the table's columns as the catalog
describes them; :func:`pytest_rolemig.roundtrip.shapes.read_shape` reads it), so the
same strategies fill the bundled demo or a team's own tables. Values are the
text PostgreSQL reads in ``COPY``, so a failing example prints as it is stored.
Every strategy shrinks towards small sets, NULLs and short plain values.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.roundtrip.shapes import (
    ColumnShape,
    Edges,
    GeneratedUser,
    Row,
    TableShape,
    UserSet,
    UsersShape,
)

ALL_EDGES = Edges()
"""The default: every edge value is generated."""

# ------------------------------------------------------------ primitives ---

# PostgreSQL text cannot hold NUL; the utf-8 codec already excludes surrogates.
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")

_NAME_EDGES = (
    "a", "Zoë", "ZOË", "zoë", "José Ñúñez", "e\u0301", "Ærøskøbing", "Ωμέγα", "Иван", "李小龍",
    "محمد", "שלום", "🙂 smiley", "O'Brien", 'Quote "Q"', "  padded  ", "", "null", "NULL", "\\N",
    "back\\slash", "tab\there", "new\nline", "ǅemal", "İstanbul", "straße", "ﬁnance", "\u200bzero-width",
)


_CASES: tuple[Callable[[str], str], ...] = (str, str.upper, str.lower, str.swapcase, str.title)


def _cased(texts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Each text as drawn, or upper, lower, swapped or title case (shrinks to as drawn)."""
    return st.tuples(texts, st.integers(min_value=0, max_value=len(_CASES) - 1)).map(
        lambda t: _CASES[t[1]](t[0]))


def names() -> st.SearchStrategy[str]:
    """Display-name-like text: unicode, mixed case, quotes, whitespace, backslashes."""
    return st.one_of(
        st.sampled_from(_NAME_EDGES),
        _cased(st.text(_CHARS, max_size=20)),
    )


_LOCAL_EDGES = (
    "a", "first+tag", "user+a+b", "o'brien", "MiXeD.Case", '"john..doe"', '"a b"', '"quoted+plus"',
    '"esc\\"aped"', "x_y-z", "'single'", "+", "élodie", "用户",
)
_DOMAINS = ("example.com", "EXAMPLE.org", "sub.domain.co.uk", "bücher.example", "xn--bcher-kva.example",
            "[127.0.0.1]", "localhost")


def emails() -> st.SearchStrategy[str]:
    """E-mail addresses with plus tags, quoted local parts, quotes, mixed case and unicode."""
    plain = st.text(st.sampled_from("abcXYZ019._-+'"), min_size=1, max_size=12)
    quoted = st.text(st.sampled_from('ab +."@\\'), max_size=8).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
    local = st.one_of(st.sampled_from(_LOCAL_EDGES), plain, quoted)
    return _cased(st.builds(lambda lo, do: f"{lo}@{do}", local, st.sampled_from(_DOMAINS)))


def _nest(depth: int, leaf: Any, as_list: bool) -> Any:
    for level in range(depth):
        leaf = [leaf] if as_list else {f"l{level}": leaf}
    return leaf


def json_values(max_leaves: int = 8, top_level_null: bool = True) -> st.SearchStrategy[Any]:
    """JSON documents jsonb accepts: empty, scalars, unicode keys, and nesting up to 64 levels."""
    json_text = st.text(_CHARS, max_size=12)
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
        st.floats(allow_nan=False, allow_infinity=False), json_text,
    )
    trees = st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(json_text, inner, max_size=4)),
        max_leaves=max_leaves,
    )
    deep = st.builds(_nest, st.integers(min_value=1, max_value=64), scalars, st.booleans())
    documents = st.one_of(st.just({}), st.just([]), trees, deep)
    return documents if top_level_null else documents.filter(lambda v: v is not None)


_TZ_EDGES = (
    "-infinity", "infinity", "4713-11-24 00:00:00+00 BC", "0001-01-01 00:00:00+00", "1969-12-31 23:59:59.999999+00",
    "1970-01-01 00:00:00+00", "2000-01-01 00:00:00+00", "2024-02-29 12:00:00+00", "2024-03-31 02:30:00+02",
    "2038-01-19 03:14:07+00", "2038-01-19 03:14:08+00", "2025-01-01 00:00:00.000001+00", "1900-01-01 00:00:00+14",
    "1900-01-01 00:00:00-12", "9999-12-31 23:59:59.999999+00", "294276-12-31 23:59:59.999999+00",
)


def timestamps(with_zone: bool = True) -> st.SearchStrategy[str]:
    """Timestamps at the edges (±infinity, 4713 BC, 294276 AD, 2038, leap days) and ordinary ones."""
    offsets = st.integers(min_value=-15 * 60, max_value=15 * 60).map(
        lambda m: dt.timezone(dt.timedelta(minutes=m)))
    ordinary = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31),
                            timezones=offsets if with_zone else st.none())
    edges = _TZ_EDGES if with_zone else tuple(re.sub(r"[+-]\d\d( BC)?$", r"\1", e) for e in _TZ_EDGES)
    return st.one_of(st.sampled_from(edges), ordinary.map(lambda d: d.isoformat(sep=" ")))


def dates() -> st.SearchStrategy[str]:
    """Dates at the edges and ordinary ones."""
    edges = ("-infinity", "infinity", "4713-11-24 BC", "0001-01-01", "2024-02-29", "5874897-12-31")
    return st.one_of(st.sampled_from(edges), st.dates().map(lambda d: d.isoformat()))


def _int_range(base: str) -> tuple[int, int]:
    bits = {"smallint": 16, "integer": 32, "bigint": 64}[base]
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


_NAME_COLUMNS = re.compile(r"(^|_)(name|handle|username|nickname|title|label)$")


@dataclass(frozen=True)
class SharedName:
    """Placeholder for the n-th name of a user set's shared pool (so display names repeat)."""

    index: int
    max_length: int | None = None

    def resolve(self, pool: Sequence[str]) -> str:
        """The pooled name, cut to the column's length."""
        name = pool[self.index % len(pool)]
        return name[: self.max_length] if self.max_length is not None else name


def column_values(col: ColumnShape, *, shared_names: bool = False,
                  edges: Edges = ALL_EDGES) -> st.SearchStrategy[Any] | None:
    """Text values (COPY input) for ``col``, by type and name; None when no value can be invented."""
    base = col.base
    values: st.SearchStrategy[str | SharedName]
    if col.references:
        return None
    if base in ("text", "character varying", "character", "citext", "name"):
        if "mail" in col.name:
            values = emails()
        elif _NAME_COLUMNS.search(col.name):
            values = names()
            if shared_names and not col.unique:  # mostly a name shared with other users of the set (see user_sets)
                pooled = st.builds(SharedName, st.integers(min_value=0, max_value=2), st.just(col.max_length))
                values = st.one_of(pooled, values)
        else:
            values = names()
        if col.max_length is not None:
            limit = col.max_length
            values = values.map(lambda s: s if isinstance(s, SharedName) else s[:limit])
    elif base == "uuid":
        # from their own 128-bit integer, not st.uuids(): that one reads a Random shared by every
        # draw, so deleting a user would shift the keys of the users after it and the shrinker
        # could not remove anyone but the last (it stopped at 2-5 users); these shrink to 0, 1, ...
        values = st.integers(min_value=0, max_value=2**128 - 1).map(lambda i: str(uuid.UUID(int=i)))
    elif base in ("smallint", "integer", "bigint"):
        lo, hi = _int_range(base)
        values = st.one_of(st.integers(min_value=lo, max_value=hi), st.sampled_from((lo, hi))).map(str)
    elif base == "numeric":
        values = st.decimals(allow_nan=False, allow_infinity=False, places=None).map(
            lambda d: format(d, "f"))
    elif base in ("real", "double precision"):
        values = st.one_of(st.floats(allow_nan=False, width=32 if base == "real" else 64).map(repr),
                           st.sampled_from(("NaN", "Infinity", "-Infinity", "-0")))
    elif base == "boolean":
        values = st.sampled_from(("f", "t"))
    elif base == "jsonb":
        values = json_values(top_level_null=edges.json_null).map(lambda v: json.dumps(v, ensure_ascii=False))
    elif base == "json":
        if edges.json_text:  # json keeps its text: spacing, key order and duplicate keys must survive
            values = st.one_of(
                json_values(top_level_null=edges.json_null).map(lambda v: json.dumps(v, ensure_ascii=False)),
                st.sampled_from(('{ "a" : 1 , "a": 2 }', "[1,  2]", ' {"x":"y"} ', '{"bb": 1, "a": 2}')))
        else:  # only text that reads back the same through jsonb
            values = st.sampled_from(("{}", "[]", "1", '"Zoë"', "true", '{"a": [1, {"b": null}]}')
                                     + (("null",) if edges.json_null else ()))
    elif base == "timestamp with time zone":
        values = timestamps(True)
    elif base == "timestamp without time zone":
        values = timestamps(False)
    elif base == "date":
        values = dates()
    elif base in ("inet", "cidr"):
        values = st.ip_addresses().map(str)
    elif base == "enum" and col.labels:
        values = st.sampled_from(col.labels)
    else:
        return None
    return values


def _required_gap(table: TableShape, col: ColumnShape) -> ConfigError:
    return ConfigError(
        f"cannot generate users for {table}: column {col.name} ({col.type_name}) is NOT NULL without a "
        "default and no value can be invented for it (a foreign key or an unsupported type); give it a "
        "default, or pass your own strategy to the round trip"
    )


def _fields(table: TableShape, exclude: Sequence[str], shared_names: bool,
            required_only: bool, edges: Edges) -> dict[str, st.SearchStrategy[str | None]]:
    fields: dict[str, st.SearchStrategy[str | None]] = {}
    for col in table.columns:
        if col.skip or col.name in exclude:
            continue
        if required_only and (col.nullable or col.has_default):
            continue
        values = column_values(col, shared_names=shared_names, edges=edges)
        if values is None:
            if col.nullable or col.has_default:
                continue  # left to NULL / the default
            raise _required_gap(table, col)
        fields[col.name] = st.one_of(st.none(), values) if col.nullable else values
    return fields


def rows(table: TableShape, *, exclude: Sequence[str] = (), shared_names: bool = False,
         required_only: bool = False, edges: Edges = ALL_EDGES) -> st.SearchStrategy[Row]:
    """Rows of ``table`` (without ``exclude``): NULL in nullable columns first, so examples shrink to NULLs."""
    return st.fixed_dictionaries(_fields(table, exclude, shared_names, required_only, edges))


def changes(table: TableShape, *, exclude: Sequence[str] = (),
            edges: Edges = ALL_EDGES) -> st.SearchStrategy[Row | None]:
    """A later value for one column of a row (what the application changes), or None: no change."""
    fields = _fields(table, exclude, False, False, edges)
    if not fields:
        return st.none()
    return st.one_of(st.none(), *(_change_of(c, f) for c, f in fields.items()))


def _change_of(column: str, values: st.SearchStrategy[str | None]) -> st.SearchStrategy[Row]:
    return values.map(lambda v: {column: v})


def keys(col: ColumnShape) -> st.SearchStrategy[str]:
    """Key values for ``col``: uuid, integers over the whole range, or unicode text (keyset order!)."""
    if col.base in ("smallint", "integer", "bigint"):
        lo, hi = _int_range(col.base)
        return st.one_of(st.integers(min_value=1, max_value=10_000), st.integers(min_value=lo, max_value=hi),
                         st.sampled_from((lo, hi, 0, -1))).map(str)
    if col.base in ("text", "character varying", "citext"):
        text = st.text(_CHARS, min_size=1, max_size=min(col.max_length or 20, 20))
        return st.one_of(st.sampled_from(("a", "A", "b", "ä", "Z", "10", "9", "-", " x")), text)
    values = column_values(ColumnShape(col.name, col.type_name, col.base, False, False))
    if values is None:
        raise ConfigError(f"cannot generate keys for column {col.name} ({col.type_name})")
    return values


def _user(shape: UsersShape, roles: Sequence[str],
          max_sessions: int, edits: bool, unique_cols: Sequence[str],
          edges: Edges, plain: bool) -> st.SearchStrategy[dict[str, Any]]:
    prof, sess = shape.profiles, shape.sessions
    fixed = (prof.key, shape.role_column) + ((shape.user_column,) if shape.user_column else ())
    profile = rows(prof, exclude=fixed, shared_names=True, edges=edges, required_only=plain)
    none: st.SearchStrategy[Any] = st.none()
    sessions: st.SearchStrategy[list[Any]] = st.just([])
    session_edit = none
    if sess is not None:
        session_rows = rows(sess, exclude=(sess.key, shape.session_user_column), edges=edges,
                            required_only=plain)
        # many sessions repeat a few drawn rows (each gets its own key): cheap to draw, still many rows
        many = st.tuples(st.lists(session_rows, min_size=1, max_size=2),
                         st.integers(min_value=min(4, max_sessions), max_value=max_sessions)).map(
            lambda t: [t[0][i % len(t[0])] for i in range(t[1])])
        sessions = st.one_of(st.lists(session_rows, max_size=min(3, max_sessions)), many)
        if edits:
            session_edit = changes(sess, exclude=(sess.key, shape.session_user_column), edges=edges)
    profile_edit = changes(prof, exclude=(*fixed, *unique_cols), edges=edges) if edits else none
    parent = (rows(shape.parent, exclude=(shape.parent.key,), required_only=True, edges=edges)
              if shape.parent is not None else st.just({}))
    key = keys(prof.column(prof.key))
    # a roles table's user ids: keys of the parent the user column references, else of that column
    uid = (keys(shape.parent.column(shape.parent.key) if shape.parent is not None
                else prof.column(shape.user_column)) if shape.user_column else st.none())
    role = st.sampled_from(list(roles))
    session_key = sess.column(sess.key) if sess is not None else None
    session_keys_for: dict[int, st.SearchStrategy[list[str]]] = {}

    @st.composite
    def user(draw: Callable[[st.SearchStrategy[Any]], Any]) -> dict[str, Any]:
        drawn = {"key": draw(key), "role": draw(role), "profile": draw(profile), "sessions": draw(sessions),
                 "profile_edit": draw(profile_edit), "parent": draw(parent)}
        drawn["uid"] = draw(uid) if shape.user_column else drawn["key"]
        # exactly one (usually None) edit per session: no choices the shrinker would chase in vain
        n = len(drawn["sessions"])
        drawn["session_edits"] = draw(st.lists(session_edit, min_size=n, max_size=n))
        # the user's own session keys, drawn with the user: deleting a user then deletes only its
        # own choices (keys drawn for the whole set afterwards shifted every later draw)
        if n and session_key is not None and not session_key.skip:
            if n not in session_keys_for:
                session_keys_for[n] = st.lists(keys(session_key), min_size=n, max_size=n, unique=True)
            drawn["session_keys"] = draw(session_keys_for[n])
        else:
            drawn["session_keys"] = [None] * n
        return drawn

    return user()


def user_sets(shape: UsersShape, roles: Sequence[str], *, min_users: int = 0, max_users: int = 12,
              max_sessions: int = 8, edits: bool = True,
              edges: Edges = ALL_EDGES, plain: bool = False) -> st.SearchStrategy[UserSet]:
    """Sets of users over ``roles`` for the tables in ``shape``.

    Keys are unique (and so are the values of single-column unique indexes);
    display-name-like columns draw from a small shared pool, so duplicates are
    common; each user has no session, a few, or many (up to ``max_sessions``).
    With ``edits`` some users and sessions also carry post-backup changes. ``plain``
    fills only the columns that need a value (NOT NULL without default): fewer choices,
    so a long stateful test shrinks fast; the edge values are the property test's job.
    """
    if not roles:
        raise ConfigError("no legacy roles to generate users for")
    prof = shape.profiles
    unique_cols = [c.name for c in prof.columns
                   if c.unique and not c.skip and c.name not in (prof.key, shape.role_column)]
    # strategies are built once here: building them inside the composite would rebuild them for
    # every example and every shrink step, which makes shrinking crawl
    pools = st.lists(names(), min_size=1, max_size=3)
    user_lists = st.lists(
        _user(shape, roles, max_sessions, edits, unique_cols, edges, plain),
        min_size=min_users, max_size=max_users,
        unique_by=(lambda u: u["key"], lambda u: u["uid"], *[
            (lambda u, c=c: u["profile"].get(c) if isinstance(u["profile"].get(c), str) else object())
            for c in unique_cols
        ]),
    )
    def resolve(row: Row | None, pool: Sequence[str]) -> Any:
        if row is None:
            return None
        return {c: (v.resolve(pool) if isinstance(v, SharedName) else v) for c, v in row.items()}

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[Any]], Any]) -> UserSet:
        pool = draw(pools)
        drawn = draw(user_lists)
        session_keys = [k for u in drawn for k in u["session_keys"] if k is not None]
        if len(set(session_keys)) < len(session_keys):
            reject()  # two users drew the same session key (rare)
        users = []
        for u in drawn:
            key = u["key"]
            built_sessions = []
            for row, session_key in zip(u["sessions"], u["session_keys"], strict=True):
                full = dict(row)
                full[shape.session_user_column] = u["uid"]
                if session_key is not None and shape.sessions is not None:
                    full[shape.sessions.key] = session_key
                built_sessions.append(full)
            users.append(GeneratedUser(
                profile={prof.key: key, shape.role_column: u["role"], **resolve(u["profile"], pool),
                         **({shape.user_column: u["uid"]} if shape.user_column else {})},
                sessions=tuple(built_sessions),
                profile_edit=u["profile_edit"],
                session_edits=tuple(u["session_edits"]),
                parent=u["parent"],
            ))
        return UserSet(tuple(users), shape)

    return build()
