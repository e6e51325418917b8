"""Hostile names are data, never SQL; what was revoked after a backup stays revoked.

An application whose schema, tables, columns, constraint, policies, PostgreSQL role and role
values are named with quotes, semicolons, ``--``, mixed case, unicode and 63-byte names goes
through configure_target, backup, migrate, validation, rollback and emergency rollback; a canary
table named in the hostile names (``x``) must survive and every step must give the exact result.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pytest_rolemig import api
from pytest_rolemig.db import install as installer
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.target import Target

SCHEMA = "App; Schema"
USERS = 'Weird "Users"; DROP TABLE x;--'
SESSIONS = "Sess'ions); DROP TABLE x;--"
KEY, ROLE, USER_COL = "Ïd", "Rôle", "User Id"
LONG_COL = "é" * 31 + "x"                     # 63 bytes: the longest identifier PostgreSQL keeps
PG_ROLE = 'Evil "Role"; DROP TABLE x;--'
POLICY = "it's; a \"policy\" --"
CHECK_NAME = 'rôle; check "x"'
LONG_POLICY = "P" + "ö" * 31                  # 63 bytes
LEGACY = ["it's; admin", 'Viewer "quoted"', "plain", "robert'); DROP TABLE x;--", "L" * 300]
NEW_ADMIN = "Admin'); DROP TABLE x;--"
MAPPING = RoleMapping(new_roles=(NEW_ADMIN, "viewer"),
                      mapping={"it's; admin": NEW_ADMIN, 'Viewer "quoted"': "viewer", "plain": "viewer",
                               "robert'); DROP TABLE x;--": NEW_ADMIN, "L" * 300: "viewer"})
TARGET = Target(profiles_table=sql.Identifier(SCHEMA, USERS).as_string(None),
                key_column=KEY, role_column=ROLE,
                sessions_table=sql.Identifier(SCHEMA, SESSIONS).as_string(None),
                sessions_user_column=USER_COL, policy_schemas=(SCHEMA,), batch_size=3)


def ident(*names):
    return sql.Identifier(*names).as_string(None)


def lit(value):
    return sql.Literal(value).as_string(None)


def hostile_app(conn) -> None:
    users, sessions = ident(SCHEMA, USERS), ident(SCHEMA, SESSIONS)
    claim = "(pg_catalog.current_setting('request.jwt.claims', true)::jsonb ->> 'sub')::uuid"
    conn.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
                CREATE ROLE anon NOLOGIN NOINHERIT;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
                CREATE ROLE authenticated NOLOGIN NOINHERIT;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = {lit(PG_ROLE)}) THEN
                CREATE ROLE {ident(PG_ROLE)} NOLOGIN;
            END IF;
        END $$;
        CREATE TABLE public.x (v int); INSERT INTO public.x VALUES (42);
        CREATE SCHEMA {ident(SCHEMA)};
        CREATE TABLE {users} (
            {ident(KEY)} uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            {ident(ROLE)} text NOT NULL CONSTRAINT {ident(CHECK_NAME)}
                CHECK ({ident(ROLE)} IN ({", ".join(map(lit, LEGACY))})),
            {ident(LONG_COL)} text);
        CREATE TABLE {sessions} (
            {ident("Sid")} uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            {ident(USER_COL)} uuid NOT NULL REFERENCES {users},
            {ident("tok; en")} text);
        ALTER TABLE {users} ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {sessions} ENABLE ROW LEVEL SECURITY;
        GRANT USAGE ON SCHEMA {ident(SCHEMA)} TO authenticated, {ident(PG_ROLE)};
        GRANT SELECT ON {users}, {sessions} TO authenticated;
        CREATE POLICY {ident(POLICY)} ON {users} FOR SELECT TO authenticated, {ident(PG_ROLE)}
            USING ({ident(KEY)} = {claim} OR {ident(ROLE)} IN ({lit(LEGACY[0])}, {lit(LEGACY[3])}));
        CREATE POLICY {ident(LONG_POLICY)} ON {users} FOR SELECT TO authenticated
            USING ({ident(ROLE)} = {lit('Viewer "quoted"')} AND {ident(LONG_COL)} IS NOT NULL);
        CREATE POLICY {ident("own; sessions")} ON {sessions} FOR SELECT TO authenticated
            USING ({ident(USER_COL)} = {claim});
        INSERT INTO {users} ({ident(ROLE)}, {ident(LONG_COL)})
            SELECT r, 'n' || g FROM unnest({lit(LEGACY)}::text[]) AS r, generate_series(1, 3) AS g;
        INSERT INTO {sessions} ({ident(USER_COL)}, {ident("tok; en")})
            SELECT u.{ident(KEY)}, 'secret-' || g FROM {users} AS u, generate_series(1, 2) AS g;""")


def state(conn):
    """Roles, sessions, policies and constraints, read with the names quoted by psycopg."""
    users, sessions = ident(SCHEMA, USERS), ident(SCHEMA, SESSIONS)
    return {
        "roles": conn.execute(f"SELECT {ident(KEY)}::text, {ident(ROLE)} FROM {users} ORDER BY 1").fetchall(),
        "sessions": conn.execute(f"SELECT to_jsonb(s)::text FROM {sessions} s ORDER BY 1").fetchall(),
        "policies": conn.execute(
            "SELECT policyname::text, roles::text[], qual, with_check FROM pg_policies "
            "WHERE schemaname = %s ORDER BY 1", (SCHEMA,)).fetchall(),
        "checks": conn.execute(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'c' ORDER BY 1", (users,)).fetchall(),
    }


def tables(conn):
    """Every table but the catalogs and the backups' typed copies (which backup_log names)."""
    return conn.execute("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'r' "
                        "AND c.relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace) "
                        "AND NOT (c.relnamespace = 'migration_backup'::regnamespace AND EXISTS ("
                        "    SELECT 1 FROM migration_backup.backup_log b "
                        "     WHERE c.relname IN (b.profiles_copy, b.sessions_copy))) "
                        "ORDER BY 1").fetchall()


@pytest.fixture
def hostile_db(rolemig_empty_db):
    hostile_app(rolemig_empty_db)
    installer.install(rolemig_empty_db, TARGET, MAPPING)
    return rolemig_empty_db


def test_hostile_names_go_through_the_whole_migration(hostile_db):
    conn = hostile_db
    before, tables_before = state(conn), tables(conn)
    assert len(before["roles"]) == 15 and len(before["policies"]) == 3
    assert sorted(r[0] for r in api.legacy_roles(conn)) == sorted(LEGACY)

    backup = api.backup(conn)
    assert (backup.profiles_count, backup.sessions_count, backup.policies_count) == (15, 30, 3)
    assert api.validate_backup(conn, backup.backup_id).ok
    assert not api.pre_migration_checks(conn).failures

    run = api.migrate(conn, backup_id=backup.backup_id, batch_size=4)
    assert run.status == "completed" and run.users_migrated == 15 and run.policies_rewritten == 2
    migrated = state(conn)
    assert {r[1] for r in migrated["roles"]} == {NEW_ADMIN, "viewer"}
    assert dict(migrated["roles"]) == {k: MAPPING.mapping[r] for k, r in before["roles"]}
    quals = " ".join(str(p[2]) for p in migrated["policies"])
    assert "'Admin''); DROP TABLE x;--'::text" in quals and "it''s; admin" not in quals
    post = api.post_migration_checks(conn, backup.backup_id)
    assert not post.failures, post.render(only_problems=True)
    assert migrated["sessions"] == before["sessions"]

    rb = api.rollback(conn, backup.backup_id, "hostile names; DROP TABLE x;--")
    assert api.validate_rollback(conn, backup.backup_id, rb.rollback_id).ok
    assert state(conn) == before

    em = api.rollback(conn, backup.backup_id, emergency=True)
    assert not api.validate_rollback(conn, backup.backup_id, em.rollback_id).failures
    assert state(conn) == before

    assert conn.execute("SELECT v FROM public.x").fetchall() == [(42,)]
    assert tables(conn) == tables_before
    sec = conn.execute("SELECT check_name, status FROM migration_validation.validate_security()").fetchall()
    assert all(status == "pass" for _, status in sec), sec


def test_hostile_names_that_do_not_exist_are_refused_by_name(hostile_db):
    conn = hostile_db
    for kwargs, fragment in (
        ({"p_profiles_table": 'public."x; DROP TABLE x;--"'}, "x; DROP TABLE x;--"),
        ({"p_profiles_table": "public.x; DROP TABLE x"}, "public.x; DROP TABLE x"),
        ({"p_role_column": 'role"; DROP TABLE x;--'}, 'role"; DROP TABLE x;--'),
        ({"p_policy_schemas": ["nope'); DROP TABLE x;--"]}, "nope'); DROP TABLE x;--"),
    ):
        args = {"p_profiles_table": TARGET.profiles_table, "p_key_column": KEY, "p_role_column": ROLE,
                "p_sessions_table": TARGET.sessions_table, "p_sessions_user_column": USER_COL,
                "p_policy_schemas": [SCHEMA], **kwargs}
        call = "SELECT * FROM migration_control.configure_target(" + ", ".join(
            f"{k} => %({k})s" for k in args) + ")"
        with pytest.raises(psycopg.errors.RaiseException) as exc:
            conn.execute(call, args)
        assert fragment in str(exc.value) + (exc.value.diag.message_detail or ""), (kwargs, str(exc.value))
    assert conn.execute("SELECT v FROM public.x").fetchall() == [(42,)]
    assert conn.execute("SELECT profiles_table FROM migration_control.target_config").fetchone()[0] == USERS


def test_names_longer_than_postgresql_keeps_are_refused_or_resolved(hostile_db):
    """A 70-character name (PostgreSQL truncates to 63 bytes) must not silently target another table."""
    conn = hostile_db
    long_name = "T" * 70
    conn.execute(f"CREATE TABLE public.{ident(long_name)} (id uuid PRIMARY KEY, role text)")  # stored truncated
    try:
        stored = conn.execute(
            "SELECT * FROM migration_control.configure_target(p_profiles_table => %s, p_key_column => 'id', "
            "p_role_column => 'role', p_sessions_table => %s, p_sessions_user_column => %s, p_policy_schemas => %s)",
            (f"public.{ident(long_name)}", TARGET.sessions_table, USER_COL, [SCHEMA])).fetchall()
    except psycopg.errors.RaiseException as exc:
        assert "T" * 63 in str(exc) and "does not exist" in str(exc)  # refused, naming the table
    else:
        assert dict(stored)["profiles_table"] == "public." + "T" * 63, stored  # resolved to the real table
    assert conn.execute("SELECT v FROM public.x").fetchall() == [(42,)]


# ------------------------------------------------------- revoked stays revoked ----

def _session_ids(conn):
    return {r[0] for r in conn.execute("SELECT id::text FROM auth.sessions")}


@pytest.mark.parametrize("migrate_first", [True, False], ids=["after_migration", "without_migration"])
def test_sessions_revoked_after_the_backup_stay_revoked(rolemig_db, migrate_first):
    backup = api.backup(rolemig_db)
    revoked = {r[0] for r in rolemig_db.execute(
        "DELETE FROM auth.sessions WHERE id IN (SELECT id FROM auth.sessions ORDER BY id LIMIT 12) "
        "RETURNING id::text")}
    assert len(revoked) == 12
    if migrate_first:
        api.migrate(rolemig_db, backup_id=backup.backup_id)
        rb = api.rollback(rolemig_db, backup.backup_id, "revert")
        assert not revoked & _session_ids(rolemig_db), "execute_rollback resurrected revoked sessions"
        assert rb.sessions_restored == 0
    em = api.rollback(rolemig_db, backup.backup_id, emergency=True)
    assert not revoked & _session_ids(rolemig_db), "emergency_rollback resurrected revoked sessions"
    check = api.validate_rollback(rolemig_db, backup.backup_id, em.rollback_id).get("sessions_intact")
    assert check.status == "warn"  # reported as revoked after backup, not restored


def test_sessions_expired_after_the_backup_stay_expired(rolemig_db):
    """Revocation by expiry (not_after set to the past) must survive a rollback too."""
    alive_at_backup = [r[0] for r in rolemig_db.execute(
        "UPDATE auth.sessions SET not_after = now() + interval '30 days' "
        "WHERE id IN (SELECT id FROM auth.sessions ORDER BY id LIMIT 5) RETURNING id")]
    backup = api.backup(rolemig_db)
    expired = {r[0] for r in rolemig_db.execute(
        "UPDATE auth.sessions SET not_after = now() - interval '1 minute' WHERE id = ANY (%s) RETURNING id::text",
        (alive_at_backup,))}
    assert len(expired) == 5
    api.migrate(rolemig_db, backup_id=backup.backup_id)
    api.rollback(rolemig_db, backup.backup_id, "revert")
    alive = {r[0] for r in rolemig_db.execute(
        "SELECT id::text FROM auth.sessions WHERE id::text = ANY (%s) AND (not_after IS NULL OR not_after > now())",
        (list(expired),))}
    assert not alive, "execute_rollback revived expired sessions"
    api.rollback(rolemig_db, backup.backup_id, emergency=True)
    alive = {r[0] for r in rolemig_db.execute(
        "SELECT id::text FROM auth.sessions WHERE id::text = ANY (%s) AND (not_after IS NULL OR not_after > now())",
        (list(expired),))}
    assert not alive, "emergency_rollback revived sessions that were expired after the backup"
