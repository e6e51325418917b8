"""The oracle's stored snapshots: what the gate compares with, kept in the database.

Real PostgreSQL through ``rolemig_db`` (demo app, infrastructure, 130 users). Each
comparison is checked both ways: unchanged data compares equal, and a lost, added or
changed row, a wrong role or a changed policy is found and named.
"""

from __future__ import annotations

import pytest

from pytest_rolemig import api, resources
from pytest_rolemig.mapping import load_mapping
from pytest_rolemig.roundtrip.oracle import StoredSnapshot, composite_fields, take_snapshot
from pytest_rolemig.target import Target

MAPPING = load_mapping(resources.demo_mapping()).mapping
TARGET = Target()


def test_stored_snapshot_counts_what_the_in_memory_one_holds(rolemig_db):
    stored = StoredSnapshot.take(rolemig_db, TARGET, "before")
    held = take_snapshot(rolemig_db, TARGET)
    assert (stored.profiles_count, stored.sessions_count) == (len(held.profiles), len(held.sessions))
    assert stored.profiles_count == 130 and stored.sessions_count > 0
    assert stored.policies == held.policies


def test_unchanged_data_compares_equal(rolemig_db):
    before = StoredSnapshot.take(rolemig_db, TARGET, "before")
    again = StoredSnapshot.take(rolemig_db, TARGET, "again")
    assert before.differences(again) == []
    assert before.compare_rows(again, "sessions").same
    identity = {role: role for role in MAPPING}
    assert before.role_mismatches(again, identity).count == 0


def test_lost_added_and_changed_rows_are_counted_and_named(rolemig_db):
    before = StoredSnapshot.take(rolemig_db, TARGET, "before")
    gone, edited = [r[0] for r in rolemig_db.execute(
        "SELECT id::text FROM auth.sessions ORDER BY id LIMIT 2")]
    rolemig_db.execute("DELETE FROM auth.sessions WHERE id = %s", (gone,))
    rolemig_db.execute("UPDATE auth.sessions SET user_agent = 'tampered' WHERE id = %s", (edited,))
    added = rolemig_db.execute(
        "INSERT INTO auth.sessions (user_id) SELECT user_id FROM auth.sessions LIMIT 1 RETURNING id::text"
    ).fetchone()[0]
    after = StoredSnapshot.take(rolemig_db, TARGET, "after")

    sessions = before.compare_rows(after, "sessions")
    assert (sessions.lost, sessions.added, sessions.changed) == (1, 1, 1)
    by_key = {k: (b, a) for k, b, a in sessions.sample}
    assert by_key[gone][1] is None and by_key[added][0] is None
    assert "tampered" in by_key[edited][1] and "tampered" not in by_key[edited][0]
    assert before.compare_rows(after, "profiles").same
    assert sorted(line.split(":")[0] for line in before.differences(after)) == sorted(
        f"session {k}" for k in (gone, edited, added))


def test_role_mismatches_after_a_migration(rolemig_db):
    backup_id = api.backup(rolemig_db, "oracle").backup_id
    before = StoredSnapshot.take(rolemig_db, TARGET, "before")
    assert api.migrate(rolemig_db, backup_id=backup_id).status == "completed"
    migrated = StoredSnapshot.take(rolemig_db, TARGET, "migrated")
    assert before.role_mismatches(migrated, MAPPING).count == 0
    assert before.role_mismatches(migrated, {role: role for role in MAPPING}).count > 0

    key, old = rolemig_db.execute(
        "SELECT id::text, role FROM public.user_profiles WHERE role = 'owner' ORDER BY id LIMIT 1").fetchone()
    rolemig_db.execute("UPDATE public.user_profiles SET role = 'viewer' WHERE id = %s", (key,))
    broken = StoredSnapshot.take(rolemig_db, TARGET, "broken")
    wrong = before.role_mismatches(broken, MAPPING)
    assert wrong.count == 1
    legacy = wrong.sample[0][1]
    assert wrong.sample == ((key, legacy, MAPPING[legacy], "viewer"),) and MAPPING[legacy] == old
    assert (wrong.before_users, wrong.after_users) == (130, 130)


def test_policy_change_is_a_difference(rolemig_db):
    before = StoredSnapshot.take(rolemig_db, TARGET, "before")
    name, table = rolemig_db.execute(
        "SELECT polname, polrelid::regclass::text FROM pg_policy ORDER BY polname LIMIT 1").fetchone()
    rolemig_db.execute(f'DROP POLICY "{name}" ON {table}')
    after = StoredSnapshot.take(rolemig_db, TARGET, "after")
    assert any(line.startswith("policy ") and name in line for line in before.differences(after))


@pytest.mark.parametrize("text, fields", [
    ("(1,abc,,\"\")", ["1", "abc", None, ""]),
    ('(x,"a ""quoted"", b",)', ["x", 'a "quoted", b', None]),
    ('("back\\\\slash","{""k"": 1}")', ["back\\slash", '{"k": 1}']),
    ("()", [None]),
])
def test_composite_fields_reads_record_out(text, fields):
    assert composite_fields(text) == fields


def test_composite_fields_agree_with_the_server(rolemig_db):
    value = ("a,b", 'q"uote', None, "", "back\\slash", "{1,2}", " lead")
    text = rolemig_db.execute("SELECT ROW(%s::text, %s::text, %s::text, %s::text, %s::text, %s::text, "
                              "%s::text)::text", value).fetchone()[0]
    assert composite_fields(text) == list(value)
