"""The access matrix: which rows each kind of user can really reach, measured through RLS.

Policy text can look clean while a helper function, a view, an enum comparison or
a JWT claim still decides on a legacy role name, and a superuser connection
bypasses every policy. So the matrix does what PostgREST does for a request:
inside a transaction it sets ``request.jwt.claims`` (``sub``, ``role``, the app
role claim) and switches to the API role (``authenticated``, or ``anon``), then
for every RLS-protected table of the policy schemas records, per command, the
keys of the rows the user reaches:

- SELECT: the keys the user sees;
- UPDATE / DELETE: the keys a no-op ``UPDATE t SET c = c RETURNING key`` /
  ``DELETE ... RETURNING key`` affects, in a savepoint that is rolled back (with
  ``RETURNING``, as with PostgREST's ``return=representation``, a row must also
  be visible to be reached). When every UPDATE policy of the table checks new rows
  with its USING expression (no WITH CHECK, or the same one), ``SELECT key ...
  FOR NO KEY UPDATE`` reaches the same rows (it applies the SELECT and UPDATE
  policies' USING, and the unchanged row would pass the same expression as WITH
  CHECK) without writing them: 8x cheaper per row;
- INSERT: the template rows whose copy, owned by the acting user, passes the
  WITH CHECK (an integrity error after the check still means RLS let it pass).

Triggers (and so foreign-key actions) are off during the writes
(``session_replication_role = replica``): the matrix measures RLS, not side effects.
Everything runs in one transaction per user that is rolled back: nothing changes.
Inside it one savepoint, taken once the user's claims and role are set, undoes each
write and recovers from each failed probe (:class:`ActorScope`).
The reached keys are kept in the database (:mod:`pytest_rolemig.access.store`), once
per distinct set; a cell holds the id of its set, so Python stays flat as users grow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.access.catalog import (
    TableInfo,
    exposed_functions,
    exposed_views,
    owner_references,
    rls_tables,
    table_columns,
    table_info,
)
from pytest_rolemig.access.store import EMPTY, ReachStore
from pytest_rolemig.db.query import scalar
from pytest_rolemig.postgrest import AuthSettings, act_as, auth_settings
from pytest_rolemig.seeding import split_name
from pytest_rolemig.target import Target

COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")
ANON = "(anon)"
Cell = tuple[str, str, str, str]  # (legacy role, user key, table, command)


@dataclass(frozen=True)
class Actor:
    """An application user the matrix acts as: the legacy role it stands for and its key."""

    role: str
    key: str | None  # None = anonymous (no JWT subject)


@dataclass
class Matrix:
    """Rows reached per (legacy role, user, table, command), as set ids of ``store``, and each user's claims."""

    label: str
    store: ReachStore
    cells: dict[Cell, int] = field(default_factory=dict)
    claims: dict[str, str | None] = field(default_factory=dict)  # user key -> app role in the JWT
    errors: dict[Cell, str] = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    seconds: float = 0.0
    # role-dependent policy name -> the first legacy role whose acting user its USING lets in (empty: none)
    policy_reach: dict[str, set[str]] = field(default_factory=dict)

    def reached(self, cell: Cell) -> int:
        """How many rows the cell reaches (0 for a cell the matrix has not)."""
        return self.store.size(self.cells.get(cell, EMPTY))

    def rows(self, cell: Cell) -> frozenset[str]:
        """The keys the cell reaches, read from the store (for tests and small matrices)."""
        return self.store.keys(self.cells.get(cell, EMPTY))

    def counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """role -> table -> command -> rows reached (summed over the role's acting users)."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for (role, _user, table, command), set_id in sorted(self.cells.items()):
            slot = out.setdefault(role, {}).setdefault(table, {})
            slot[command] = slot.get(command, 0) + self.store.size(set_id)
        return out


class ActorScope:
    """The acting user's transaction, with one savepoint taken once claims and role are set.

    A probe that wrote, or failed, returns to that savepoint: one round trip, where a
    savepoint of its own per probe costs three (taken, rolled back, released). Reads that
    succeed cost nothing extra. The claims, the role and the pre-request's settings were set
    before the savepoint, so returning to it keeps them.
    """

    SAVEPOINT = "rolemig_actor"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        conn.execute(f"SAVEPOINT {self.SAVEPOINT}")

    def back(self) -> None:
        """Undo everything since the user was set up (the savepoint stays)."""
        self.conn.execute(f"ROLLBACK TO SAVEPOINT {self.SAVEPOINT}")

    @contextmanager
    def read(self) -> Iterator[None]:
        """A probe that changes nothing: returned from only if it fails."""
        try:
            yield
        except psycopg.Error:
            self.back()
            raise

    @contextmanager
    def write(self) -> Iterator[None]:
        """A probe that may change rows: always undone."""
        try:
            yield
        finally:
            self.back()


def _call(scope: ActorScope, store: ReachStore, function: str,
          mapping: dict[str, str]) -> tuple[int, str | None]:
    """What a read-only function returns to the acting user, as one key per result row.

    Role names in the result are read through the mapping (a function returning the caller's
    role returns 'owner' where it returned 'org_owner': that is the migration, not a change).
    """
    query = sql.SQL("SELECT coalesce(to_jsonb(r), 'null')::text FROM {}() AS r").format(sql.SQL(function))
    try:
        with scope.write():  # a volatile function may write
            rows = [r[0] for r in scope.conn.execute(query)]
    except psycopg.Error as exc:
        if exc.sqlstate == "42501":
            return EMPTY, None
        return EMPTY, str(exc).strip().splitlines()[0]
    return store.add([json.dumps(_mapped(json.loads(r), mapping), sort_keys=True) for r in rows]), None


def _mapped(value: Any, mapping: dict[str, str]) -> Any:
    """``value`` with every string that is a legacy role replaced by its new role."""
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, list):
        return [_mapped(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _mapped(v, mapping) for k, v in value.items()}
    return value


def choose_actors(conn: psycopg.Connection[Any], target: Target, per_role: int = 2,
                  anonymous: bool = True, auth: AuthSettings | None = None) -> list[Actor]:
    """The first ``per_role`` users (by key) of every role in the profiles table, and an anonymous caller."""
    schema, table = split_name(target.profiles_table)
    rows = conn.execute(sql.SQL(
        """
        SELECT r, k FROM (
            SELECT t.{r}::text AS r, t.{k}::text AS k,
                   row_number() OVER (PARTITION BY t.{r}::text ORDER BY t.{k}::text) AS n
            FROM {t} AS t WHERE t.{r} IS NOT NULL) x
        WHERE n <= %s ORDER BY r, k
        """).format(r=sql.Identifier(target.role_column), k=sql.Identifier(target.user),
                    t=sql.Identifier(schema, table)), (per_role,)).fetchall()
    actors = [Actor(role, key) for role, key in rows]
    anon_exists = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                               ((auth or auth_settings(conn)).anon_role,)).fetchone()
    return actors + [Actor(ANON, None)] if anonymous and anon_exists else actors


def current_roles(conn: psycopg.Connection[Any], target: Target, keys: list[str]) -> dict[str, str]:
    """The role each of ``keys`` holds now: what a freshly issued token would carry."""
    schema, table = split_name(target.profiles_table)
    query = sql.SQL("SELECT t.{k}::text, t.{r}::text FROM {t} AS t WHERE t.{k}::text = ANY(%s)").format(
        k=sql.Identifier(target.user), r=sql.Identifier(target.role_column), t=sql.Identifier(schema, table))
    return dict(conn.execute(query, (keys,)).fetchall())


# ---------------------------------------------------------------- computing ---

def _attempt(scope: ActorScope, store: ReachStore, info: TableInfo, query: sql.Composable,
             writes: bool = False) -> tuple[int, psycopg.Error | None]:
    """The set of keys a probe of ``info``'s table returns (undone if it ``writes``), or its error."""
    try:
        return store.probe(scope.conn, query, distinct=not info.unique_key,
                           undo=scope.write if writes else scope.read), None
    except psycopg.Error as exc:
        return EMPTY, exc


def _fails(scope: ActorScope, query: sql.Composed, params: dict[str, Any] | None = None) -> psycopg.Error | None:
    """Run a write that is always undone; its error, if any."""
    try:
        with scope.write():
            scope.conn.execute(query, params or {})
        return None
    except psycopg.Error as exc:
        return exc


def _write(scope: ActorScope, store: ReachStore, info: TableInfo, command: str,
           visible: int) -> tuple[int, str | None]:
    """Keys reached by a no-op UPDATE / a DELETE; row by row over the visible rows if the statement fails."""
    if command == "UPDATE":
        if info.update_column is None:
            return EMPTY, None  # the API role may update no column: nothing reached
        if not info.update_with_check:
            keys, error = _attempt(scope, store, info, sql.SQL("SELECT {} FROM {} AS t FOR NO KEY UPDATE").format(
                info.key_expr, info.ident))
            if error is None:
                return keys, None
        col = sql.Identifier(info.update_column)
        head = sql.SQL("UPDATE {t} AS t SET {c} = t.{c}").format(t=info.ident, c=col)
    else:
        head = sql.SQL("DELETE FROM {t} AS t").format(t=info.ident)
    returning = sql.SQL(" RETURNING {}").format(info.key_expr)
    keys, error = _attempt(scope, store, info, head + returning, writes=True)
    if error is None:
        return keys, None
    if error.sqlstate == "42501" and "permission denied" in str(error):
        return EMPTY, None  # no privilege on the table: nothing reached
    # e.g. one row passes USING but fails WITH CHECK: the statement fails as a whole; decide per
    # row, a page of visible keys at a time, collecting the reached ones in the store
    one_row = head + sql.SQL(" WHERE {} = %(k)s").format(info.key_expr) + returning
    for page in store.pages(visible):
        reached = []
        for key in page:
            try:
                with scope.write():
                    reached += [r[0] for r in scope.conn.execute(one_row, {"k": key})]
            except psycopg.Error:
                pass
        store.stage(reached)
    return store.commit_stage(), str(error).strip().splitlines()[0]


def _insert(scope: ActorScope, store: ReachStore, info: TableInfo,
            user: str | None) -> tuple[int, str | None]:
    """Template keys whose copy, owned by ``user``, passes the INSERT policies."""
    if info.insert is None or not info.templates:
        return EMPTY, None
    allowed, note = [], None
    for key, row in info.templates:
        error = _fails(scope, info.insert, {"user": user, "row": row})
        if error is None or (error.sqlstate or "").startswith("23"):
            allowed.append(key)  # accepted, or refused by a constraint checked after the policies
        elif error.sqlstate != "42501":
            note = str(error).strip().splitlines()[0]
    return store.add(allowed), note


def _act_as(conn: psycopg.Connection[Any], actor: Actor, claim_role: str | None, auth: AuthSettings,
            checked: set[str]) -> None:
    """Become the user as PostgREST does, transaction-local: claims, the API role, the pre-request.

    The first time the matrix acts as a database role (``checked`` remembers it), that role
    must not bypass RLS.
    """
    conn.execute("SELECT set_config('session_replication_role', 'replica', true)")
    db_role = act_as(conn, auth, actor.key, claim_role)
    if db_role in checked:
        return
    is_super = conn.execute(
        "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if is_super is None or is_super[0]:
        raise RuntimeError(f"acting as {db_role!r} would bypass RLS (superuser or BYPASSRLS): "
                           "the matrix would prove nothing")
    checked.add(db_role)


def _policy_lets_in(scope: ActorScope, info: TableInfo, expression: str) -> bool:
    """Whether a policy's USING expression is true on some row the acting user may read."""
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE ({}))").format(info.ident, sql.SQL(expression))
    try:
        with scope.write():  # the expression may call a volatile function
            return bool(scalar(scope.conn, query))
    except psycopg.Error:
        return False  # no privilege, or an expression that fails for this user: it lets nobody in


def compute_matrix(conn: psycopg.Connection[Any], target: Target, actors: list[Actor], label: str,
                   store: ReachStore, auth: AuthSettings | None = None,
                   policies: Sequence[api.RoleDependent] = ()) -> Matrix:
    """The access matrix of ``actors`` on every RLS-protected table of the target's policy schemas.

    The matrices of one rehearsal share one ``store`` (a set reached in several states is
    stored once, and comparing them needs both). For each of ``policies`` (role-dependent
    policies, :func:`pytest_rolemig.api.role_dependent_objects`) the matrix also records which
    first role it lets in, evaluated as each acting user it applies to until one is let in
    (``policy_reach``; a policy false on every row costs a scan per acting user).
    """
    started = time.perf_counter()
    auth = auth or auth_settings(conn)
    owners = owner_references(conn, target)
    infos = [table_info(conn, s, t, owners, auth) for s, t in rls_tables(conn, target.policy_schemas)]
    infos += [replace(table_info(conn, s, t, owners, auth), read_only=True)
              for s, t in exposed_views(conn, target.policy_schemas, auth.auth_role)]
    functions = exposed_functions(conn, target.policy_schemas, auth.auth_role)
    mapping = api.role_mapping(conn)
    claims = current_roles(conn, target, [a.key for a in actors if a.key is not None])
    matrix = Matrix(label=label, store=store,
                    tables=tuple(i.qualified for i in infos) + tuple(f"{f}()" for f in functions))
    by_name = {i.qualified: i for i in infos}
    checked: set[str] = set()  # database roles known not to bypass RLS
    for actor in actors:
        user = actor.key or ANON
        matrix.claims[user] = claims.get(actor.key) if actor.key else None
        with conn.transaction(force_rollback=True):
            _act_as(conn, actor, matrix.claims[user], auth, checked)
            scope = ActorScope(conn)
            for info in infos:
                cell = (actor.role, user, info.qualified)
                visible, error = _attempt(scope, store, info,
                                          sql.SQL("SELECT {} FROM {} AS t").format(info.key_expr, info.ident))
                matrix.cells[cell + ("SELECT",)] = visible
                if error is not None and error.sqlstate != "42501":
                    matrix.errors[cell + ("SELECT",)] = str(error).strip().splitlines()[0]
                if info.read_only:
                    continue
                for command in ("UPDATE", "DELETE"):
                    keys, note = _write(scope, store, info, command, visible)
                    matrix.cells[cell + (command,)] = keys
                    if note:
                        matrix.errors[cell + (command,)] = note
                keys, note = _insert(scope, store, info, actor.key)
                matrix.cells[cell + ("INSERT",)] = keys
                if note:
                    matrix.errors[cell + ("INSERT",)] = note
            db_role = auth.anon_role if actor.key is None else auth.auth_role
            for policy in policies:
                table = by_name.get(policy.relation or "")
                if table is None or not ({db_role, "public"} & set(policy.api_roles)):
                    continue
                reach = matrix.policy_reach.setdefault(policy.name, set())
                if not reach and _policy_lets_in(scope, table, policy.expression):  # one role in is enough
                    reach.add(actor.role)
            for function in functions:
                call: Cell = (actor.role, user, f"{function}()", "EXECUTE")
                matrix.cells[call], note = _call(scope, store, function, mapping)
                if note:
                    matrix.errors[call] = note
    matrix.seconds = time.perf_counter() - started
    return matrix


def row_lookup(conn: psycopg.Connection[Any], width: int = 160) -> Any:
    """A function (table, key) -> the row's other columns as short JSON, read as the connecting (owner) role."""
    exprs: dict[str, tuple[sql.Composable, list[str]]] = {}

    def lookup(table: str, key: str) -> str:
        if table.endswith("()"):  # a function: its key is already the result it returned
            return ""
        schema, _, name = table.rpartition(".")  # a display name (schema.name), not SQL spelling
        if table not in exprs:
            pk = [r[0] for r in table_columns(conn, schema, name, "public") if r[5]]
            exprs[table] = (sql.SQL("{}::text").format(sql.Identifier("t", pk[0])) if len(pk) == 1 else
                            sql.SQL("concat_ws(',', {})").format(sql.SQL(", ").join(
                                sql.SQL("{}::text").format(sql.Identifier("t", c)) for c in pk)) if pk else
                            sql.SQL("md5(to_jsonb(t)::text)"), pk)
        expr, pk = exprs[table]
        row = conn.execute(sql.SQL("SELECT (to_jsonb(t) - %s::text[])::text FROM {} AS t WHERE {} = %s LIMIT 1").format(
            sql.Identifier(schema, name), expr), (pk, key)).fetchone()
        text = row[0] if row else ""
        return text if len(text) <= width else text[: width - 3] + "..."

    return lookup
