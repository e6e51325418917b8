"""No function of the infrastructure can be hijacked through the caller's search_path.

Look-alike objects (functions shadowing the built-ins the SQL uses, an operator, tables named like
the migration tables) are planted in ``public`` and ``pg_temp``, and the session's search_path puts
them first. Every planted object writes to a canary table when it runs. The whole rehearsal
(backup, validate, migrate, validate, rollback, emergency rollback, security checks) must then give
exactly what it gives on an untouched copy, and with ``search_path = ''`` (STYLE habit 11), and the
canary must stay empty.
"""

from __future__ import annotations

import pytest

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.db.templates import clone

# (signature, return type, body expression after the canary write)
SHADOWS = [
    ("format(text)", "text", "pg_catalog.format($1)"),
    ("format(text, text)", "text", "pg_catalog.format($1, $2)"),
    ("format(text, text, text)", "text", "pg_catalog.format($1, $2, $3)"),
    ("format(text, text, text, text)", "text", "pg_catalog.format($1, $2, $3, $4)"),
    ("format(text, text, text, text, text)", "text", "pg_catalog.format($1, $2, $3, $4, $5)"),
    ("jsonb_populate_record(anyelement, jsonb)", "anyelement", "pg_catalog.jsonb_populate_record($1, $2)"),
    ("hashtextextended(text, bigint)", "bigint", "pg_catalog.hashtextextended($1, $2)"),
    ("hashtext(text)", "integer", "pg_catalog.hashtext($1)"),
    ("to_jsonb(anyelement)", "jsonb", "pg_catalog.to_jsonb($1)"),
    ("quote_ident(text)", "text", "pg_catalog.quote_ident($1)"),
    ("quote_literal(text)", "text", "pg_catalog.quote_literal($1)"),
    ("parse_ident(text, boolean)", "text[]", "pg_catalog.parse_ident($1, $2)"),
    ("to_regclass(text)", "regclass", "pg_catalog.to_regclass($1)"),
    ("gen_random_uuid()", "uuid", "pg_catalog.gen_random_uuid()"),
    ("clock_timestamp()", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("now()", "timestamptz", "pg_catalog.now()"),
    ("replace(text, text, text)", "text", "pg_catalog.replace($1, $2, $3)"),
    ("substr(text, integer, integer)", "text", "pg_catalog.substr($1, $2, $3)"),
    ("lower(text)", "text", "pg_catalog.lower($1)"),
    ("set_config(text, text, boolean)", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("current_setting(text, boolean)", "text", "pg_catalog.current_setting($1, $2)"),
    ("pg_get_expr(pg_node_tree, oid)", "text", "pg_catalog.pg_get_expr($1, $2)"),
    ("format_type(oid, integer)", "text", "pg_catalog.format_type($1, $2)"),
    ("pg_try_advisory_xact_lock(bigint)", "boolean", "pg_catalog.pg_try_advisory_xact_lock($1)"),
    ("array_to_string(anyarray, text)", "text", "pg_catalog.array_to_string($1, $2)"),
    ("jsonb_build_object(text, text)", "jsonb", "pg_catalog.jsonb_build_object($1, $2)"),
    ("texteq_plant(text, text)", "boolean", "pg_catalog.texteq($1, $2)"),
    ("textcat_plant(text, text)", "text", "pg_catalog.textcat($1, $2)"),
]
TABLES = ["backup_log", "role_mapping", "new_roles", "target_config", "migration_batch", "migration_log",
          "user_profiles_complete_backup", "user_sessions_backup", "rls_policies_backup", "rollback_log",
          "validation_results", "rls_policy_changes", "pg_policy", "pg_class", "user_profiles", "sessions"]


def plant(conn) -> None:
    """Every look-alike, in public (shared) and pg_temp (this session), each writing to the canary."""
    conn.execute("""
        CREATE SCHEMA canary;  -- outside the policy schemas: not part of what is migrated or checked
        CREATE TABLE canary.hits (hit text NOT NULL);
        GRANT USAGE ON SCHEMA canary TO PUBLIC;
        GRANT ALL ON canary.hits TO PUBLIC;
        CREATE FUNCTION public.plant_hit(p text) RETURNS boolean LANGUAGE sql VOLATILE
            AS $$ INSERT INTO canary.hits VALUES (p) RETURNING true $$;""")
    for schema in ("public", "pg_temp"):
        for signature, returns, body in SHADOWS:
            name = signature.split("(")[0]
            exists = conn.execute("SELECT pg_catalog.to_regprocedure(%s) IS NOT NULL",
                                  (f"{schema}.{signature}",)).fetchone()[0]
            if exists:
                continue  # already there (pgcrypto puts gen_random_uuid in public): a real look-alike
            conn.execute(
                f"CREATE FUNCTION {schema}.{signature} RETURNS {returns} LANGUAGE plpgsql VOLATILE AS $$ "
                f"BEGIN PERFORM public.plant_hit('{schema}.{name}'); RETURN {body}; END $$")
        for table in TABLES:
            if schema == "public" and table in ("user_profiles",):
                continue  # the application's own table
            kind = "TEMP VIEW" if schema == "pg_temp" else "VIEW"
            target = table if schema == "pg_temp" else f"public.{table}"
            conn.execute(f"CREATE {kind} {target} AS SELECT public.plant_hit('{schema}.{table}') AS hijacked")
    conn.execute("""
        CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.texteq_plant);
        CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.textcat_plant);
        SET search_path = pg_temp, public, pg_catalog""")
    # the plants are live: unqualified names in this session resolve to them
    conn.execute("SELECT format('%s', 'x'), 'a'::text = 'b'::text, 'a'::text || 'b'::text, hashtext('x'), "
                 "(SELECT count(*) FROM backup_log)")
    hits = {r[0] for r in conn.execute("SELECT hit FROM canary.hits")}
    assert {"public.format", "public.texteq_plant", "public.textcat_plant", "public.hashtext",
            "pg_temp.backup_log"} <= hits, hits
    conn.execute("DELETE FROM canary.hits")


def roles(conn) -> list[tuple[str, str]]:
    return conn.execute("SELECT p.id::pg_catalog.text, p.role FROM public.user_profiles AS p ORDER BY 1").fetchall()


def sessions(conn) -> list[tuple[str, str]]:
    return conn.execute("SELECT s.id::pg_catalog.text, pg_catalog.to_jsonb(s)::pg_catalog.text "
                        "FROM auth.sessions AS s ORDER BY 1").fetchall()


def statuses(report: CheckReport) -> list[tuple[str | None, str, str]]:
    return [(c.group, c.name, c.status) for c in report.checks]


def rehearse(conn) -> dict:
    """The whole rehearsal through the public API, reduced to what must not depend on the session."""
    out: dict = {"roles_before": roles(conn), "sessions_before": sessions(conn)}
    out["init"] = statuses(api.initialize(conn))
    backup = api.backup(conn, "hijack")
    out["backup"] = (backup.profiles_count, backup.sessions_count, backup.policies_count, backup.status)
    out["backup_checks"] = statuses(api.validate_backup(conn, backup.backup_id))
    out["pre"] = statuses(api.validate(conn, "pre_migration"))
    run = api.migrate(conn, backup_id=backup.backup_id, batch_size=40)
    out["migrate"] = (run.batches, run.users_migrated, run.users_unchanged, run.policies_rewritten, run.status)
    out["roles_migrated"] = roles(conn)
    out["post"] = statuses(api.validate(conn, "post_migration"))
    rb = api.rollback(conn, backup.backup_id, "hijack test")
    out["rollback"] = (rb.status, rb.profiles_restored, rb.sessions_restored, rb.policies_restored, rb.conflicts)
    out["rollback_checks"] = statuses(api.validate_rollback(conn, backup.backup_id, rb.rollback_id))
    out["roles_rolled_back"] = roles(conn)
    em = api.rollback(conn, backup.backup_id, emergency=True)
    out["emergency_checks"] = statuses(api.validate_rollback(conn, backup.backup_id, em.rollback_id))
    out["roles_after_emergency"] = roles(conn)
    out["sessions_after"] = sessions(conn)
    out["security"] = statuses(CheckReport.from_rows(
        "validate_security", conn.execute("SELECT * FROM migration_validation.validate_security()")))
    out["status"] = statuses(api.infrastructure_status(conn))
    return out


@pytest.fixture
def control(rolemig_server, rolemig_template):
    """The rehearsal on an untouched copy, with the default search_path."""
    with clone(rolemig_server, rolemig_template.name, "rolemig_sec") as conn:
        result = rehearse(conn)
    assert result["migrate"][-1] == "completed" and result["roles_migrated"] != result["roles_before"]
    assert result["roles_rolled_back"] == result["roles_before"] == result["roles_after_emergency"]
    assert result["sessions_after"] == result["sessions_before"]
    for step in ("init", "backup_checks", "pre", "post", "rollback_checks", "emergency_checks", "security"):
        assert not [c for c in result[step] if c[2] == "fail"], (step, result[step])
    return result


def test_planted_look_alikes_never_run_and_change_nothing(rolemig_db, control):
    plant(rolemig_db)
    planted = rehearse(rolemig_db)
    hits = rolemig_db.execute("SELECT hit, count(*) FROM canary.hits GROUP BY 1").fetchall()
    assert hits == [], f"planted objects were executed by the infrastructure: {hits}"
    assert planted == control


def test_whole_infrastructure_runs_with_an_empty_search_path(rolemig_db, control):
    rolemig_db.execute("SET search_path = ''")
    assert rolemig_db.execute("SHOW search_path").fetchone()[0] == '""'
    assert rehearse(rolemig_db) == control


def test_every_function_pins_its_search_path(rolemig_db):
    """The property the two tests above rely on, stated directly (pg_partman CVE-2021-33204)."""
    unpinned = rolemig_db.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname LIKE 'migration\\_%' AND p.prokind <> 'p' AND NOT EXISTS (
               SELECT 1 FROM unnest(p.proconfig) c WHERE c = 'search_path=pg_catalog, pg_temp')""").fetchall()
    assert unpinned == []


def test_the_canary_catches_an_unpinned_function(rolemig_db):
    """The plants are not decorative: one function with its search_path removed is hijacked at once."""
    rolemig_db.execute("ALTER FUNCTION migration_validation.validate_security() RESET search_path")
    plant(rolemig_db)
    rolemig_db.execute("SELECT * FROM migration_validation.validate_security()").fetchall()
    hits = {r[0] for r in rolemig_db.execute("SELECT hit FROM canary.hits")}
    assert hits & {"public.to_jsonb", "pg_temp.to_jsonb", "public.format", "public.quote_ident"}, hits


def test_online_migration_procedure_is_not_hijacked(rolemig_db):
    backup = api.backup(rolemig_db)
    plant(rolemig_db)
    rolemig_db.execute("SET search_path = \"$user\", public")  # the default: pg_catalog implicitly first
    rolemig_db.execute("CALL migration_control.run_online_migration(p_backup_id => %s)", (backup.backup_id,))
    hits = rolemig_db.execute("SELECT hit, count(*) FROM canary.hits GROUP BY 1 ORDER BY 1").fetchall()
    assert hits == [], f"planted objects were executed by run_online_migration: {hits}"
