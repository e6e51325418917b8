"""The application's triggers run under the application's search_path (issue #17).

The infrastructure pins ``search_path = pg_catalog, pg_temp``; an application trigger function
usually does not, so it resolves names through the current search_path. The statements that write
the application's table (the migration's role UPDATE, the revert and emergency restores) therefore
switch to the path the application's own sessions get (the role/database default) for that
statement only. A trigger calling an unqualified helper, like the PostgREST schema that showed the
bug (``function current_user_data(unknown) does not exist``), must work through every entry point;
the caller's search_path must be unchanged afterwards, and application objects that look like the
built-ins those statements use must never run.

Real PostgreSQL through ``rolemig_db`` (demo app, infrastructure, 130 users). Expected states are
read with plain SQL before the run and the mapping is applied in Python.
"""

from __future__ import annotations

import psycopg
import pytest

from pytest_rolemig import resources
from pytest_rolemig.mapping import load_mapping

MAPPING = load_mapping(resources.demo_mapping()).mapping
# what the restores must bring back; updated_at is the trigger's own column, set on every write
COLUMNS = "id::text, role, email, display_name, full_name, phone, locale, metadata::text, is_active"


def install_trigger(conn, schema: str = "public") -> None:
    """An updated_at trigger without a pinned search_path, calling a helper by its bare name.

    It also records the search_path it ran under (into a table named by its bare name too).
    """
    conn.execute(f"""
        CREATE SCHEMA IF NOT EXISTS {schema};
        CREATE FUNCTION {schema}.current_user_data(p_key text) RETURNS text
            LANGUAGE sql STABLE AS $$ SELECT p_key $$;
        CREATE TABLE {schema}.trigger_paths (path text PRIMARY KEY);
        CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            PERFORM current_user_data('x');
            INSERT INTO trigger_paths VALUES (current_setting('search_path')) ON CONFLICT DO NOTHING;
            RETURN NEW;
        END $$;
        CREATE TRIGGER user_profiles_touch BEFORE UPDATE OR INSERT ON public.user_profiles
            FOR EACH ROW EXECUTE FUNCTION public.touch();""")


def profiles(conn) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in conn.execute(f"SELECT {COLUMNS} FROM public.user_profiles")}


def roles(conn) -> dict[str, str]:
    return {k: r for k, r in conn.execute("SELECT id::text, role FROM public.user_profiles")}


def backup(conn) -> str:
    query = "SELECT backup_id FROM migration_backup.create_comprehensive_backup('b')"
    return conn.execute(query).fetchone()[0]


def rollback(conn, function: str, backup_id: str) -> int:
    """Run a rollback function, check it completed; the number of profiles it restored."""
    status, restored = conn.execute(f"SELECT status, profiles_restored FROM migration_backup.{function}(%s)",
                                    (backup_id,)).fetchone()
    assert status == "completed", conn.execute("SELECT error FROM migration_backup.rollback_log").fetchall()
    return restored


def application_writes(conn) -> None:
    """What the application does after the migration was reverted: edits, a role change, a delete."""
    conn.execute("""
        UPDATE public.user_profiles SET display_name = 'changed', phone = '000', metadata = '{"x": 1}'
         WHERE id IN (SELECT id FROM public.user_profiles ORDER BY id LIMIT 10);
        UPDATE public.user_profiles SET role = 'author'
         WHERE id IN (SELECT id FROM public.user_profiles WHERE role <> 'author' ORDER BY id DESC LIMIT 3);
        DELETE FROM public.user_profiles WHERE id = (SELECT min(id::text)::uuid FROM public.user_profiles)""")


def migrate_revert_emergency(conn, after_step=lambda: None) -> None:
    """Backup, migrate, revert; the application writes; emergency restore. Each step checked."""
    before = profiles(conn)
    backup_id = backup(conn)
    after_step()

    status, error = conn.execute("SELECT status, error FROM migration_control.execute_role_migration("
                                 "p_batch_size => 50)").fetchone()
    after_step()
    assert (status, error) == ("completed", None)
    assert roles(conn) == {k: MAPPING[v[0]] for k, v in before.items()}

    restored = rollback(conn, "execute_rollback", backup_id)
    after_step()
    assert restored > 0 and roles(conn) == {k: v[0] for k, v in before.items()}

    application_writes(conn)
    assert profiles(conn) != before
    restored = rollback(conn, "emergency_rollback", backup_id)
    after_step()
    # 10 edited, 3 roles changed, 1 re-inserted, and every row whose updated_at the trigger moved
    assert restored >= 14
    assert profiles(conn) == before


@pytest.mark.parametrize("schema", ["public", "api"])
def test_migration_and_rollbacks_fire_application_triggers_under_its_search_path(
        rolemig_server, rolemig_db, schema):
    """Offline migration, revert and emergency rollback, with the helper in public (the default
    path) or in api (on the path through ALTER DATABASE, as an application would set it)."""
    install_trigger(rolemig_db, schema)
    if schema == "public":
        migrate_revert_emergency(rolemig_db)
        conn_path = '"$user", public'
        paths = rolemig_db.execute("SELECT path FROM public.trigger_paths").fetchall()
    else:
        db = rolemig_db.info.dbname
        rolemig_db.execute(f'ALTER DATABASE "{db}" SET search_path = "$user", public, api')
        with psycopg.connect(rolemig_server.dsn(db), autocommit=True) as app:
            migrate_revert_emergency(app)
            conn_path = app.execute("SHOW search_path").fetchone()[0]
            paths = app.execute("SELECT path FROM api.trigger_paths").fetchall()
    # the trigger saw the application's path, with temporary objects searched last
    assert sorted(paths) == sorted({(conn_path,), (conn_path + ", pg_temp",)}), paths


def test_online_procedure_fires_application_triggers_under_its_search_path(rolemig_db):
    install_trigger(rolemig_db)
    before = roles(rolemig_db)
    backup_id = backup(rolemig_db)
    result = rolemig_db.execute("CALL migration_control.run_online_migration("
                                "p_backup_id => %s, p_batch_size => 50)", (backup_id,)).fetchone()[0]
    assert result["status"] == "completed", result
    assert roles(rolemig_db) == {k: MAPPING[v] for k, v in before.items()}
    paths = rolemig_db.execute("SELECT path FROM public.trigger_paths").fetchall()
    assert paths == [('"$user", public, pg_temp',)]


def plant(conn) -> None:
    """Application objects in public that the statements writing the profiles would pick over the
    built-ins if they named them unqualified under the application's path: a better match than
    pg_catalog's polymorphic functions, and operators taking a bare literal next to jsonb as jsonb.
    Each one writes to the canary when it runs."""
    conn.execute("""
        CREATE SCHEMA canary;
        CREATE TABLE canary.hits (hit text NOT NULL);
        CREATE FUNCTION public.plant_hit(p text) RETURNS void LANGUAGE sql VOLATILE
            AS $$ INSERT INTO canary.hits VALUES (p) $$;
        CREATE FUNCTION public.unnest(p text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('unnest'); RETURN QUERY SELECT pg_catalog.unnest(p); END $$;
        CREATE FUNCTION public.plant_append(p_state text[], p text) RETURNS text[] LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('array_agg'); RETURN pg_catalog.array_append(p_state, p); END $$;
        CREATE AGGREGATE public.array_agg(text) (SFUNC = public.plant_append, STYPE = text[]);
        CREATE FUNCTION public.jsonb_populate_record(p public.user_profiles, p_row jsonb)
            RETURNS public.user_profiles LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('jsonb_populate_record');
                  RETURN pg_catalog.jsonb_populate_record(p, p_row); END $$;
        CREATE FUNCTION public.plant_get(p jsonb, p_key jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('->');
                  RETURN p OPERATOR(pg_catalog.->) (p_key OPERATOR(pg_catalog.#>>) '{}'); END $$;
        CREATE FUNCTION public.plant_get_text(p jsonb, p_key jsonb) RETURNS text LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('->>');
                  RETURN p OPERATOR(pg_catalog.->>) (p_key OPERATOR(pg_catalog.#>>) '{}'); END $$;
        CREATE FUNCTION public.plant_has(p jsonb, p_key jsonb) RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN PERFORM public.plant_hit('?');
                  RETURN p OPERATOR(pg_catalog.?) (p_key OPERATOR(pg_catalog.#>>) '{}'); END $$;
        CREATE OPERATOR public.-> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.plant_get);
        CREATE OPERATOR public.->> (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.plant_get_text);
        CREATE OPERATOR public.? (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = public.plant_has);""")
    # the plants are live for the application: bare names resolve to them
    conn.execute("""SELECT (SELECT pg_catalog.count(*) FROM unnest(ARRAY['a'])), array_agg('a'::text),
                           '{"a": 1}'::jsonb -> '"a"', '{"a": 1}'::jsonb ->> '"a"', '{"a": 1}'::jsonb ? '"a"',
                           jsonb_populate_record(NULL::public.user_profiles, '{}')""")
    hits = {r[0] for r in conn.execute("SELECT hit FROM canary.hits")}
    assert hits == {"unnest", "array_agg", "->", "->>", "?", "jsonb_populate_record"}, hits
    conn.execute("DELETE FROM canary.hits")


def test_caller_search_path_kept_and_statements_not_hijacked_by_application_objects(rolemig_db):
    install_trigger(rolemig_db)
    plant(rolemig_db)
    # inside one transaction: a path our functions set with set_config(..., true) and did not
    # take back would still be visible to the caller after the call
    seen = []
    with rolemig_db.transaction():
        rolemig_db.execute("SET LOCAL search_path = auth, public")
        migrate_revert_emergency(
            rolemig_db, lambda: seen.append(rolemig_db.execute("SHOW search_path").fetchone()[0]))
    assert seen == ["auth, public"] * 4
    assert rolemig_db.execute("SELECT hit, count(*) FROM canary.hits GROUP BY 1").fetchall() == []
    assert rolemig_db.execute("SHOW search_path").fetchone()[0] == '"$user", public'


def test_application_search_path_is_the_default_with_temporary_objects_last(rolemig_server, rolemig_db):
    query = "SELECT migration_tracking.application_search_path()"
    rolemig_db.execute("SET search_path = auth")  # the session's own SET is not the application's path
    assert rolemig_db.execute(query).fetchone()[0] == '"$user", public, pg_temp'
    db = rolemig_db.info.dbname
    for default, expected in [("pg_temp, public", "pg_temp, public"),
                              ("public, PG_TEMP, api", "public, pg_temp, api"),
                              ("''", '"", pg_temp'),
                              ('api, "PG_TEMP"', 'api, "PG_TEMP", pg_temp')]:
        rolemig_db.execute(f'ALTER DATABASE "{db}" SET search_path = {default}')
        with psycopg.connect(rolemig_server.dsn(db), autocommit=True) as app:
            assert app.execute(query).fetchone()[0] == expected, default
            # the value is one set_config accepts
            app.execute("SELECT pg_catalog.set_config('search_path', %s, false)", (expected,))
