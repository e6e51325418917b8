"""db.one / db.scalar: the first row of a query, or an error that names the query."""

import pytest
from psycopg import sql
from psycopg.rows import dict_row

from pytest_rolemig.db.query import NoRowError, one, scalar


def test_one_and_scalar_read_the_first_row(rolemig_empty_db):
    assert scalar(rolemig_empty_db, "SELECT 41 + %s", (1,)) == 42
    assert one(rolemig_empty_db, "SELECT 1, 'a'") == (1, "a")


def test_rows_are_tuples_whatever_the_connection_row_factory(rolemig_empty_db):
    rolemig_empty_db.row_factory = dict_row
    assert scalar(rolemig_empty_db, "SELECT 'x' AS name") == "x"


def test_no_row_names_the_query(rolemig_empty_db):
    with pytest.raises(NoRowError, match=r"no row returned by: SELECT 1 WHERE false$"):
        scalar(rolemig_empty_db, "SELECT 1\n       WHERE false")
    composed = sql.SQL("SELECT 1 FROM {} WHERE false").format(sql.Identifier("pg_catalog", "pg_class"))
    with pytest.raises(NoRowError, match='"pg_catalog"."pg_class"'):
        one(rolemig_empty_db, composed)
