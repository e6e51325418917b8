"""Where the access matrix keeps the rows each user reaches: in the database, not in Python.

A staff user reaches every row of every table, so the keys a matrix compares grow with
the users (about 1.6 KiB per user when Python held them). The store keeps each distinct
set of keys once, in a temporary table of a second connection to the same database: the
probing connection cannot keep them, because every actor's probes run in a transaction
that is rolled back. Python keeps, per set, its size and a digest (the count and two
64-bit hash sums, computed by the server) that recognises a set seen before, so a set is
written only the first time it appears; states of a rehearsal mostly repeat the sets of
the state before. Comparing two states is a query over the stored sets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import sql

#: The set id of "no rows": never stored.
EMPTY = 0
#: Keys read per round trip where keys have to pass through Python (the per-row fallback).
PAGE = 1000

Digest = tuple[int, int, int]


def _row(cur: psycopg.Cursor[Any]) -> Any:
    """The one row an aggregate query returns."""
    row = cur.fetchone()
    assert row is not None, "an aggregate query returned no row"
    return row


def _digest(distinct: bool) -> sql.Composable:
    """Count and two hash sums of the keys of ``r(k)``: equal for equal sets, whatever the order.

    DISTINCT only where keys can repeat (a table without a primary key): it doubles the cost.
    """
    rows = sql.SQL("(SELECT DISTINCT r.k FROM r)" if distinct else "r")
    return sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(d.k, 0)), 0), "
                   "coalesce(sum(hashtextextended(d.k, 1)), 0) FROM {} AS d(k)").format(rows)


class ReachStore:
    """Distinct sets of reached row keys, by id; the rows live in a temporary table of ``conn``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self._ids: dict[Digest, int] = {(0, 0, 0): EMPTY}
        self._sizes: list[int] = [0]
        self._given: dict[frozenset[str], int] = {}  # sets given in Python by add(): no round trip again
        conn.execute("CREATE TEMPORARY TABLE rolemig_reach (set_id integer NOT NULL, row_key text NOT NULL, "
                     "PRIMARY KEY (set_id, row_key))")
        conn.execute("CREATE TEMPORARY TABLE rolemig_reach_stage (row_key text NOT NULL)")

    @classmethod
    @contextmanager
    def beside(cls, conn: psycopg.Connection[Any]) -> Iterator[ReachStore]:
        """A store on a second connection to ``conn``'s database, closed (with its rows) on exit."""
        try:
            other = psycopg.connect(conn.info.dsn, password=conn.info.password, autocommit=True)
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"the access matrix keeps the rows users reach on a second connection to "
                               f"database {conn.info.dbname!r}, which could not be opened: {exc}") from exc
        try:
            try:
                store = cls(other)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise RuntimeError(f"the access matrix keeps the rows users reach in a temporary table, and "
                                   f"{conn.info.user!r} may not create one in database {conn.info.dbname!r} "
                                   f"(GRANT TEMPORARY ON DATABASE ... TO ...): {exc}") from exc
            yield store
        finally:
            other.close()

    # ---------------------------------------------------------------- adding --
    def _set_id(self, digest_row: Any, write: Callable[[int], object]) -> int:
        """The id of the set whose digest query returned ``digest_row``.

        A set not seen before gets the next id, once ``write(id)`` has stored its rows.
        """
        digest = (int(digest_row[0]), int(digest_row[1]), int(digest_row[2]))
        known = self._ids.get(digest)
        if known is not None:
            return known
        write(len(self._sizes))
        self._ids[digest] = len(self._sizes)
        self._sizes.append(digest[0])
        return self._ids[digest]

    def probe(self, source: psycopg.Connection[Any], query: sql.Composable,
              params: dict[str, Any] | None = None, distinct: bool = True,
              undo: Callable[[], AbstractContextManager[Any]] | None = None) -> int:
        """The id of the keys ``query`` (one text column) returns on ``source``.

        ``distinct`` False promises that the query returns no key twice (a primary key).

        The query runs in ``undo()`` (by default a savepoint that is rolled back), first for
        the digest, then, only when the set is new, once more to stream its keys into the
        store (COPY out of ``source``, COPY into the store; no key becomes a Python object).
        Errors of ``source`` propagate, and a set whose copy failed is not remembered.
        """
        scope = undo or (lambda: source.transaction(force_rollback=True))
        wrapped = sql.SQL("WITH r(k) AS ({}) ").format(query)
        with scope():
            row = _row(source.execute(wrapped + _digest(distinct), params or {}))

        def copy_keys(set_id: int) -> None:
            out = wrapped + sql.SQL("SELECT {} {}::integer, r.k FROM r").format(
                sql.SQL("DISTINCT" if distinct else ""), sql.Literal(set_id))
            with scope(), source.cursor() as src_cur, \
                    src_cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(out), params or {}) as src, \
                    self.conn.cursor() as dst_cur, \
                    dst_cur.copy("COPY rolemig_reach (set_id, row_key) FROM STDIN") as dst:
                for chunk in src:
                    dst.write(chunk)

        return self._set_id(row, copy_keys)

    def stage(self, keys: list[str]) -> None:
        """Add ``keys`` to the set being assembled (see :meth:`commit_stage`)."""
        with self.conn.cursor() as cur, cur.copy("COPY rolemig_reach_stage (row_key) FROM STDIN") as copy:
            for key in keys:
                copy.write_row((key,))

    def commit_stage(self) -> int:
        """The id of the set assembled by :meth:`stage` calls; the stage is emptied."""
        row = _row(self.conn.execute(sql.SQL("WITH r(k) AS (SELECT row_key FROM rolemig_reach_stage) ")
                                     + _digest(True)))
        set_id = self._set_id(row, lambda new: self.conn.execute(
            "INSERT INTO rolemig_reach (set_id, row_key) "
            "SELECT DISTINCT %s::integer, row_key FROM rolemig_reach_stage", (new,)))
        self.conn.execute("DELETE FROM rolemig_reach_stage")
        return set_id

    def add(self, keys: list[str]) -> int:
        """The id of a set given in Python (a handful of keys, e.g. INSERT templates).

        One round trip the first time a set is given, none after: acting users of one role,
        and every state, mostly give the same few sets.
        """
        if not keys:
            return EMPTY
        given = frozenset(keys)
        known = self._given.get(given)
        if known is not None:
            return known
        row = _row(self.conn.execute(sql.SQL("WITH r(k) AS (SELECT unnest(%s::text[])) ") + _digest(True),
                                     (keys,)))
        self._given[given] = self._set_id(row, lambda new: self.conn.execute(
            "INSERT INTO rolemig_reach (set_id, row_key) SELECT DISTINCT %s::integer, unnest(%s::text[])",
            (new, keys)))
        return self._given[given]

    # --------------------------------------------------------------- reading --
    def size(self, set_id: int) -> int:
        """Rows in the set (from its digest: no query)."""
        return self._sizes[set_id]

    @property
    def sets(self) -> int:
        """Distinct non-empty sets stored."""
        return len(self._sizes) - 1

    def stored_rows(self) -> int:
        """Rows in the store's table: each distinct set once."""
        return int(_row(self.conn.execute("SELECT count(*) FROM rolemig_reach"))[0])

    def pages(self, set_id: int) -> Iterator[list[str]]:
        """The keys of a set in key order, :data:`PAGE` at a time (keyset paging: no open cursor)."""
        after = None
        while True:
            page = [r[0] for r in self.conn.execute(
                "SELECT row_key FROM rolemig_reach WHERE set_id = %s "
                "AND (%s::text IS NULL OR row_key > %s::text) ORDER BY row_key LIMIT %s",
                (set_id, after, after, PAGE))]
            if not page:
                return
            yield page
            after = page[-1]

    def keys(self, set_id: int) -> frozenset[str]:
        """Every key of a set, in Python: for tests and small sets."""
        return frozenset(k for page in self.pages(set_id) for k in page)

    def diff(self, before: int, after: int,
             examples: int = 20) -> tuple[int, int, tuple[str, ...], tuple[str, ...]]:
        """Rows gained and lost from set ``before`` to set ``after``: counts, then the first keys of each."""
        row = _row(self.conn.execute(
            """
            WITH gained AS (SELECT a.row_key FROM rolemig_reach a
                             WHERE a.set_id = %(after)s AND NOT EXISTS (
                                   SELECT 1 FROM rolemig_reach b
                                    WHERE b.set_id = %(before)s AND b.row_key = a.row_key)),
                 lost AS (SELECT b.row_key FROM rolemig_reach b
                           WHERE b.set_id = %(before)s AND NOT EXISTS (
                                 SELECT 1 FROM rolemig_reach a
                                  WHERE a.set_id = %(after)s AND a.row_key = b.row_key))
            SELECT (SELECT count(*) FROM gained), (SELECT count(*) FROM lost),
                   ARRAY(SELECT row_key FROM gained ORDER BY 1 LIMIT %(n)s),
                   ARRAY(SELECT row_key FROM lost ORDER BY 1 LIMIT %(n)s)
            """, {"before": before, "after": after, "n": examples}))
        return row[0], row[1], tuple(row[2]), tuple(row[3])

    def union_diff(self, pairs: list[tuple[int, int]]) -> tuple[int, int]:
        """Distinct rows gained and lost over several (before, after) pairs: one role's acting users."""
        row = _row(self.conn.execute(
            """
            WITH p AS (SELECT * FROM unnest(%s::integer[], %s::integer[]) AS p(before, after))
            SELECT (SELECT count(DISTINCT a.row_key) FROM p JOIN rolemig_reach a ON a.set_id = p.after
                     WHERE NOT EXISTS (SELECT 1 FROM rolemig_reach b
                                        WHERE b.set_id = p.before AND b.row_key = a.row_key)),
                   (SELECT count(DISTINCT b.row_key) FROM p JOIN rolemig_reach b ON b.set_id = p.before
                     WHERE NOT EXISTS (SELECT 1 FROM rolemig_reach a
                                        WHERE a.set_id = p.after AND a.row_key = b.row_key))
            """, ([b for b, _ in pairs], [a for _, a in pairs])))
        return row[0], row[1]
