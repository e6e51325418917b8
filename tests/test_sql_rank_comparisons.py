"""Enum roles compared by rank: role_rank_comparisons() finds them, expand keeps kept thresholds.

Real PostgreSQL through ``rolemig_db`` (infrastructure installed); each test configures its own
small application with an enum role column whose labels interleave legacy and new ranks.
"""

from __future__ import annotations

import psycopg
import pytest
from sql_helpers import one, rows

APP = """
CREATE SCHEMA app;
CREATE TYPE app.rank AS ENUM ('viewer', 'reader', 'editor', 'writer');
CREATE TABLE app.members (id integer PRIMARY KEY, rank app.rank NOT NULL);
CREATE TABLE app.logins (id bigint PRIMARY KEY, member_id integer REFERENCES app.members);
CREATE TABLE app.docs (id integer PRIMARY KEY, body text);
INSERT INTO app.members
SELECT g, (ARRAY['viewer', 'editor'])[1 + g % 2]::app.rank FROM generate_series(1, 12) g;
CREATE FUNCTION app.my_rank() RETURNS app.rank LANGUAGE sql STABLE
    AS $$ SELECT rank FROM app.members LIMIT 1 $$;
CREATE FUNCTION app.plain(p integer) RETURNS boolean LANGUAGE sql STABLE AS $$ SELECT p > 1 AND p < 9 $$;
ALTER TABLE app.members ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY "members: editors" ON app.members FOR SELECT USING (rank >= 'editor'::app.rank);
CREATE POLICY "docs: editors" ON app.docs FOR SELECT USING (app.my_rank() >= 'editor'::app.rank);
CREATE POLICY "docs: own" ON app.docs FOR SELECT USING (id > 0);
SELECT * FROM migration_control.configure_target(
    p_profiles_table => 'app.members', p_role_column => 'rank', p_sessions_table => 'app.logins',
    p_sessions_user_column => 'member_id', p_policy_schemas => ARRAY['app']);
"""
KEPT = """SELECT * FROM migration_control.load_role_mapping('{"viewer": "reader", "editor": "writer"}',
                                                          ARRAY['reader', 'writer'])"""
MERGED = """SELECT * FROM migration_control.load_role_mapping('{"viewer": "reader", "editor": "reader"}',
                                                            ARRAY['reader', 'writer'])"""


def _expand(conn, expr):
    return conn.execute("SELECT migration_control.expand_role_literals(%s)", (expr,)).fetchone()[0]


def test_rank_comparisons_name_the_policies_and_functions_that_order_the_enum(rolemig_db):
    rolemig_db.execute(APP)
    found = {(r["object_kind"], r["object_name"]) for r in rows(
        rolemig_db, "SELECT * FROM migration_validation.role_rank_comparisons()")}
    assert found == {("policy", 'app.members."members: editors"'), ("policy", 'app.docs."docs: editors"')}
    # a text role column orders nothing by rank
    rolemig_db.execute("SELECT * FROM migration_control.configure_target()")
    assert rows(rolemig_db, "SELECT * FROM migration_validation.role_rank_comparisons()") == []


def test_a_threshold_every_role_keeps_needs_no_expansion_and_migrates_in_batches(rolemig_db):
    rolemig_db.execute(APP)
    rolemig_db.execute(KEPT)
    expr = "(rank >= 'editor'::app.rank)"
    assert _expand(rolemig_db, expr) == expr
    one(rolemig_db, "SELECT backup_id FROM migration_backup.create_comprehensive_backup()")
    first = one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration(p_batch_size => 4, "
                            "p_max_batches => 1)")
    assert first["status"] == "partial", first
    done = one(rolemig_db, "SELECT * FROM migration_control.execute_role_migration()")
    assert done["status"] == "completed", done
    rolemig_db.execute("SET search_path = pg_catalog")
    qual = one(rolemig_db, "SELECT qual FROM pg_policies WHERE policyname = 'members: editors'")["qual"]
    assert qual == "(rank >= 'writer'::app.rank)"


def test_a_threshold_a_merge_moves_is_refused_naming_the_literal(rolemig_db):
    rolemig_db.execute(APP)
    rolemig_db.execute(MERGED)
    with pytest.raises(psycopg.errors.RaiseException, match="cannot expand role literal 'editor'"):
        _expand(rolemig_db, "(rank >= 'editor'::app.rank)")
    # a strict comparison on the other side of the same threshold is kept either way
    assert _expand(rolemig_db, "(rank < 'reader'::app.rank)") == "(rank < 'reader'::app.rank)"
