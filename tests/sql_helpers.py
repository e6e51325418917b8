"""Query helpers shared by the SQL tests: rows as dicts, exactly-one-row lookups."""

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
