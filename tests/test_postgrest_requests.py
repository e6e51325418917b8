"""Requests as PostgREST makes them (API role, claims template, db-pre-request) and no sessions table.

Real PostgreSQL through the plugin's fixtures (``rolemig_db``: the demo installed, 130 users);
the PostgREST-shaped application is tests/examples/postgrest-app/schema.sql.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import psycopg
import pytest

from pytest_rolemig import api
from pytest_rolemig.access.matrix import choose_actors, compute_matrix
from pytest_rolemig.access.store import ReachStore
from pytest_rolemig.cli import main
from pytest_rolemig.db.install import install
from pytest_rolemig.db.templates import load_schema_file
from pytest_rolemig.mapping import load_mapping
from pytest_rolemig.postgrest import (
    AuthSettings,
    act_as,
    auth_settings,
    fill_template,
    parse_claims,
    token_fields,
)
from pytest_rolemig.target import Target


def val(conn, query, params=None):
    """The one value of ``query``."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


APP = Path(__file__).parent / "examples" / "postgrest-app"
APP_TARGET = Target(profiles_table="api.members", role_column="app_role", sessions_table=None,
                    policy_schemas=("api",))
APP_AUTH = AuthSettings(auth_role="webuser", anon_role="guest",
                        jwt_claims=parse_claims('{"role": "webuser", "id": "{user}", "app_role": "{role}"}'),
                        pre_request="api.authenticate")


def test_template_is_filled_in_parsed_json_not_as_text():
    template = {"sub": "{user}", "meta": {"note": "user {user} as {role}", "{role}": ["{role}", 1, None]},
                "braces": "{}{x}"}
    assert fill_template(template, 'u"1', None) == {
        "sub": 'u"1', "meta": {"note": 'user u"1 as ', None: [None, 1, None]}, "braces": "{}{x}"}
    assert AuthSettings().claims("7", "editor") == {"sub": "7", "role": "authenticated", "user_role": "editor"}
    assert AuthSettings().claims(None, None) == {"role": "anon"}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_claims("{id: {user}}")
    with pytest.raises(ValueError, match="JSON object"):
        parse_claims('["{user}"]')


@pytest.mark.parametrize("template", [None, '{"sub": "{user}", "app": {"r": "{role}", "who": "id {user}!"}, '
                                            '"role": "authenticated", "n": 1}'])
def test_sql_claims_equal_the_python_ones(rolemig_db, template):
    auth = AuthSettings(jwt_claims=parse_claims(template) if template else None)
    api.configure_requests(rolemig_db, auth)
    for user, role in (("42", "editor"), ('we"ird\\', "viewer"), ("x", None)):
        got = val(rolemig_db, "SELECT migration_control.request_claims(%s, %s)", (user, role))
        assert got == auth.claims(user, role)
    assert auth_settings(rolemig_db) == auth


def test_supabase_claims_carry_what_the_users_auth_row_holds(rolemig_db):
    """Supabase copies app_metadata, user_metadata and email from auth.users into every token:
    the probe's claims carry them too, so a policy reading ``auth.jwt() -> 'app_metadata'`` is
    measured as the application's users meet it (in SQL and in Python alike)."""
    uid = val(rolemig_db, """UPDATE auth.users SET raw_app_meta_data = raw_app_meta_data || '{"role": "editor"}'
                             WHERE id = (SELECT id FROM auth.users ORDER BY id LIMIT 1) RETURNING id::text""")
    claims = val(rolemig_db, "SELECT migration_control.request_claims(%s, 'editor')", (uid,))
    assert claims["sub"] == uid and claims["role"] == "authenticated" and claims["user_role"] == "editor"
    assert claims["app_metadata"]["role"] == "editor" and "user_metadata" in claims and claims["email"]
    assert claims == AuthSettings().claims(uid, "editor", token_fields(rolemig_db, uid))
    with rolemig_db.transaction(force_rollback=True):
        act_as(rolemig_db, auth_settings(rolemig_db), uid, "editor")
        assert val(rolemig_db, "SELECT auth.jwt() -> 'app_metadata' ->> 'role'") == "editor"
    # a template places the same fields where it says
    auth = AuthSettings(jwt_claims=parse_claims('{"sub": "{user}", "meta": "{app_metadata}", "mail": "{email}", '
                                                '"who": "{user_metadata}"}'))
    api.configure_requests(rolemig_db, auth)
    got = val(rolemig_db, "SELECT migration_control.request_claims(%s, 'editor')", (uid,))
    assert got == auth.claims(uid, "editor", token_fields(rolemig_db, uid))
    assert got["meta"]["role"] == "editor" and got["mail"] == claims["email"] and got["who"] == claims["user_metadata"]
    # a key that is no auth.users id has no token fields, and no error
    assert token_fields(rolemig_db, "not-a-uuid") == {}
    assert val(rolemig_db, "SELECT migration_control.request_claims('not-a-uuid', 'x') -> 'meta'") is None


def test_configure_requests_refuses_a_missing_pre_request_and_a_non_object(rolemig_db):
    for params, message in (({"p_pre_request": "public.no_such_fn"}, "pre-request function public.no_such_fn"),
                            ({"p_jwt_claims": "[1]"}, "must be a JSON object")):
        args = ", ".join(f"{k} => %({k})s" for k in params)
        with pytest.raises(psycopg.errors.RaiseException, match=message) as err:
            rolemig_db.execute(f"SELECT * FROM migration_control.configure_requests({args})", params)
        hint = err.value.diag.message_hint
        assert "rolemig_pre_request" in hint or "rolemig_jwt_claims" in hint


@pytest.fixture
def app_db(rolemig_empty_db):
    conn = rolemig_empty_db
    load_schema_file(conn, APP / "schema.sql")
    install(conn, APP_TARGET, load_mapping(APP / "roles.toml"), APP_AUTH)
    conn.execute("""INSERT INTO api.members (email, display_name, app_role)
                    SELECT 'm' || i || '@example.com', 'm' || i, (ARRAY['admin','staff','editor','contributor',
                           'reader'])[1 + i % 5] FROM generate_series(0, 19) AS i""")
    return conn


def test_act_as_runs_the_pre_request_that_the_policies_read(app_db):
    key = val(app_db, "SELECT id::text FROM api.members WHERE app_role = 'reader' ORDER BY id LIMIT 1")
    auth = auth_settings(app_db)
    assert auth == APP_AUTH
    with app_db.transaction(force_rollback=True):
        assert act_as(app_db, auth, key, "reader") == "webuser"
        assert val(app_db, "SELECT current_setting('app.user_id')") == key
        assert [r[0] for r in app_db.execute("SELECT id::text FROM api.members")] == [key]
    with app_db.transaction(force_rollback=True):
        act_as(app_db, auth, None, None)
        assert val(app_db, "SELECT current_user") == "guest"
    actors = choose_actors(app_db, APP_TARGET)
    assert any(a.key is None for a in actors), "guest exists: an anonymous caller is among the actors"
    staff = next(a.key for a in actors if a.role == "staff")
    reader = next(a.key for a in actors if a.role == "reader")
    with ReachStore.beside(app_db) as store:
        matrix = compute_matrix(app_db, APP_TARGET, actors, "x", store)
        assert matrix.reached(("staff", staff, "api.members", "SELECT")) == 20
        assert matrix.rows(("reader", reader, "api.members", "SELECT")) == {reader}


def test_no_sessions_table_backs_up_validates_and_rolls_back_without_sessions(app_db):
    assert val(app_db, "SELECT sessions_table FROM migration_control.target_config") is None
    backup = api.backup(app_db, "no_sessions")
    assert backup.sessions_count == 0
    assert not api.validate_backup(app_db, backup.backup_id).failures
    api.migrate(app_db, backup_id=backup.backup_id, batch_size=7)
    post = api.post_migration_checks(app_db, backup.backup_id)
    assert not post.failures, post
    sessions = next(c for c in post.checks if c.name == "sessions_intact")
    assert sessions.status == "pass" and sessions.details["note"] == "no sessions table"
    login = api.authentication_checks(app_db, 20)
    assert not login.failures, login
    own = next(c for c in login.checks if c.name == "own_sessions_readable")
    assert own.status == "pass" and own.details["note"] == "no sessions table"
    rollback = api.rollback(app_db, backup.backup_id)
    report = api.validate_rollback(app_db, backup.backup_id, rollback.rollback_id)
    assert not report.failures, report


def test_cli_install_with_no_sessions_table_and_postgrest_requests_then_plan(rolemig_server, app_db):
    dsn = rolemig_server.dsn(app_db.info.dbname)
    out, err = io.StringIO(), io.StringIO()
    code = main(["install", "--mapping", str(APP / "roles.toml"), "--profiles-table", "api.members",
                 "--role-column", "app_role", "--sessions-table", "none", "--policy-schema", "api",
                 "--api-role", "webuser", "--anon-role", "guest", "--pre-request", "api.authenticate",
                 "--jwt-claims", '{"role": "webuser", "id": "{user}", "app_role": "{role}"}', "--dsn", dsn],
                out=out, err=err)
    assert code == 0, err.getvalue()
    assert "sessions none" in out.getvalue()
    out, err = io.StringIO(), io.StringIO()
    code = main(["plan", "--json", "--dsn", dsn], out=out, err=err)
    assert code == 0, err.getvalue()
    changes = json.loads(out.getvalue())["access_changes"]
    assert set(changes) == {"admin", "staff", "editor", "contributor", "reader"}
    assert all(not c["errors"] and not c["gains"] and not c["loses"] for c in changes.values()), changes
    out, err = io.StringIO(), io.StringIO()
    code = main(["install", "--jwt-claims", "{id}", "--dsn", dsn], out=out, err=err)
    assert code != 0 and "--jwt-claims" in err.getvalue()
