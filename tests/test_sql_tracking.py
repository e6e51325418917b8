"""migration-logging-system.sql: schemas, configuration tables and the batch tracking functions.

Runs on real PostgreSQL through the plugin's ``rolemig_db`` fixture (a fresh clone per test with
the whole infrastructure installed). Every check is exercised for its refusing result too.
"""

from __future__ import annotations

import re

import psycopg
import pytest
from sql_helpers import one, rows

from pytest_rolemig import resources

BATCH_ID = re.compile(r"^batch_\d{8}_\d{6}_[0-9a-f]{12}$")
MY_SCHEMAS = ("migration_tracking", "migration_backup")


def start(conn, name="role_system_migration", size=None, run=None, details=None):
    return one(conn, "SELECT migration_tracking.start_migration_batch("
                     "%s::text, %s::integer, %s::text, coalesce(%s::jsonb, '{}')) AS id",
               (name, size, run, details))["id"]


# ------------------------------------------------------------- schema ----

def test_file_creates_schemas_and_configuration_tables(rolemig_db):
    schemas = {r["nspname"] for r in rows(rolemig_db, "SELECT nspname FROM pg_namespace")}
    assert {"migration_tracking", "migration_backup", "migration_validation", "migration_control"} <= schemas
    cols = rows(rolemig_db, """
        SELECT column_name FROM information_schema.columns
         WHERE table_schema = 'migration_control' AND table_name = 'target_config' ORDER BY ordinal_position""")
    assert [c["column_name"] for c in cols] == [
        "singleton", "profiles_schema", "profiles_table", "key_column", "role_column", "sessions_schema",
        "sessions_table", "sessions_key_column", "sessions_user_column", "policy_schemas", "batch_size",
        "auth_role", "role_claim", "updated_at",
        # added by ALTER TABLE, so an installed infrastructure upgrades in place (#18)
        "user_column", "anon_role", "jwt_claims", "pre_request"]
    # one row only
    with pytest.raises(psycopg.errors.UniqueViolation):
        rolemig_db.execute("INSERT INTO migration_control.target_config DEFAULT VALUES")
    with pytest.raises(psycopg.errors.CheckViolation):
        rolemig_db.execute("INSERT INTO migration_control.target_config (singleton) VALUES (false)")
    # mapping targets must be new roles
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        rolemig_db.execute("INSERT INTO migration_control.role_mapping VALUES ('x', 'not_a_new_role')")


def test_file_is_idempotent_and_keeps_data(rolemig_db):
    batch = start(rolemig_db, "again")
    text = resources.sql_file("migration-logging-system.sql").read_text()
    rolemig_db.execute(text.encode())
    rolemig_db.execute(text.encode())
    assert one(rolemig_db, "SELECT status FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["status"] == "running"
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_control.role_mapping")["n"] == 13


@pytest.mark.parametrize("schema", MY_SCHEMAS)
def test_functions_pin_search_path_are_invoker_and_not_public(rolemig_db, schema):
    funcs = rows(rolemig_db, """
        SELECT p.proname, p.prosecdef, p.proconfig,
               has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %s""", (schema,))
    assert funcs, f"no functions in {schema}"
    bad = [f["proname"] for f in funcs
           if f["prosecdef"] or "search_path=pg_catalog, pg_temp" not in (f["proconfig"] or [])
           or f["public_exec"]]
    assert bad == []


# --------------------------------------------------- start_migration_batch ----

def test_start_batch_defaults_and_numbering(rolemig_db):
    first = start(rolemig_db, "role_system_migration", None, "run_a")
    second = start(rolemig_db, "role_system_migration", 50, "run_a")
    other = start(rolemig_db, "role_system_migration", None, "run_b")
    alone = start(rolemig_db)
    assert all(BATCH_ID.match(b) for b in (first, second, other, alone))
    got = {r["batch_id"]: r for r in rows(rolemig_db, "SELECT * FROM migration_tracking.migration_batch")}
    assert (got[first]["batch_number"], got[second]["batch_number"], got[other]["batch_number"]) == (1, 2, 1)
    assert got[alone]["batch_number"] == 1 and got[alone]["run_id"] is None
    assert got[alone]["migration_name"] == "role_system_migration"
    assert got[first]["batch_size"] == 1000  # from target_config
    assert got[second]["batch_size"] == 50
    assert {r["status"] for r in got.values()} == {"running"}


def test_start_batch_keeps_details(rolemig_db):
    from psycopg.types.json import Jsonb

    batch = start(rolemig_db, "m", details=Jsonb({"note": "x"}))
    assert one(rolemig_db, "SELECT details FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["details"] == {"note": "x"}


@pytest.mark.parametrize("name,size,message", [
    ("", None, "migration name must not be empty"),
    (None, None, "migration name must not be empty"),
    ("m", 0, r"batch size must be positive \(got 0\)"),
])
def test_start_batch_refuses_bad_input(rolemig_db, name, size, message):
    with pytest.raises(psycopg.errors.RaiseException, match=message) as exc:
        start(rolemig_db, name, size)
    assert exc.value.diag.message_hint
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_batch")["n"] == 0


# ------------------------------------------------------ log_user_migration ----

def test_log_user_migration_writes_rows_and_counts(rolemig_db):
    batch = start(rolemig_db)
    ids = [one(rolemig_db, "SELECT migration_tracking.log_user_migration(%s, %s, %s, %s, %s, %s) AS id",
               (batch, f"u{i}", old, new, status, msg))["id"]
           for i, (old, new, status, msg) in enumerate([
               ("super_admin", "owner", "migrated", None),
               ("admin", "admin", "unchanged", None),
               ("org_admin", "admin", "failed", "check violation"),
               ("team_lead", "manager", "migrated", None)])]
    assert ids == sorted(ids) and len(set(ids)) == 4
    b = one(rolemig_db, "SELECT * FROM migration_tracking.migration_batch WHERE batch_id = %s", (batch,))
    assert (b["processed_users"], b["failed_users"]) == (3, 1)
    logged = rows(rolemig_db, "SELECT user_key, old_role, new_role, status, message "
                              "FROM migration_tracking.migration_log ORDER BY log_id")
    assert logged[2] == {"user_key": "u2", "old_role": "org_admin", "new_role": "admin",
                         "status": "failed", "message": "check violation"}


def test_log_user_migration_refuses_unknown_and_finished_batches(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="migration batch 'batch_nope' does not exist"):
        rolemig_db.execute("SELECT migration_tracking.log_user_migration('batch_nope', 'u1', 'a', 'b')")
    batch = start(rolemig_db)
    rolemig_db.execute("SELECT * FROM migration_tracking.complete_migration_batch(%s)", (batch,))
    with pytest.raises(psycopg.errors.RaiseException, match=f"migration batch {batch} is already completed"):
        rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, 'u1', 'a', 'b')", (batch,))
    with pytest.raises(psycopg.errors.RaiseException, match="invalid user migration status 'done'"):
        rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, 'u1', 'a', 'b', 'done')",
                           (start(rolemig_db),))
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_log")["n"] == 0


# ------------------------------------------------- complete_migration_batch ----

def test_complete_batch_recomputes_counters_from_log(rolemig_db):
    batch = start(rolemig_db)
    # rows written set-based, as execute_role_migration does, without touching the counters
    rolemig_db.execute("""
        INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status)
        SELECT %s, 'u' || g, 'author', 'editor', CASE WHEN g %% 5 = 0 THEN 'failed' ELSE 'migrated' END
          FROM generate_series(1, 20) g""", (batch,))
    result = one(rolemig_db, "SELECT * FROM migration_tracking.complete_migration_batch(%s)", (batch,))
    assert (result["batch_id"], result["status"], result["processed_users"], result["failed_users"]) == (
        batch, "completed", 16, 4)
    assert result["duration"].total_seconds() >= 0
    b = one(rolemig_db, "SELECT * FROM migration_tracking.migration_batch WHERE batch_id = %s", (batch,))
    assert b["completed_at"] is not None and (b["processed_users"], b["failed_users"]) == (16, 4)


def test_complete_batch_failed_keeps_error(rolemig_db):
    batch = start(rolemig_db)
    result = one(rolemig_db, "SELECT * FROM migration_tracking.complete_migration_batch(%s, 'failed', 'boom')",
                 (batch,))
    assert result["status"] == "failed"
    assert one(rolemig_db, "SELECT error FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["error"] == "boom"


def test_complete_batch_refuses(rolemig_db):
    with pytest.raises(psycopg.errors.RaiseException, match="migration batch 'batch_x' does not exist"):
        rolemig_db.execute("SELECT * FROM migration_tracking.complete_migration_batch('batch_x')")
    batch = start(rolemig_db)
    with pytest.raises(psycopg.errors.RaiseException, match="invalid final batch status 'running'"):
        rolemig_db.execute("SELECT * FROM migration_tracking.complete_migration_batch(%s, 'running')", (batch,))
    rolemig_db.execute("SELECT * FROM migration_tracking.complete_migration_batch(%s)", (batch,))
    with pytest.raises(psycopg.errors.RaiseException, match="is already completed"):
        rolemig_db.execute("SELECT * FROM migration_tracking.complete_migration_batch(%s, 'failed')", (batch,))
    assert one(rolemig_db, "SELECT status FROM migration_tracking.migration_batch WHERE batch_id = %s",
               (batch,))["status"] == "completed"


# ---------------------------------------------------- get_migration_status ----

def test_get_migration_status_all_one_and_unknown(rolemig_db):
    assert rows(rolemig_db, "SELECT * FROM migration_tracking.get_migration_status()") == []
    first = start(rolemig_db, "m", None, "run_1")
    second = start(rolemig_db, "m", None, "run_1")
    rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, 'u1', 'author', 'editor')", (first,))
    every = rows(rolemig_db, "SELECT * FROM migration_tracking.get_migration_status()")
    assert [r["batch_id"] for r in every] == [second, first]  # newest first
    single = one(rolemig_db, "SELECT * FROM migration_tracking.get_migration_status(%s)", (first,))
    assert (single["run_id"], single["batch_number"], single["processed_users"], single["status"]) == (
        "run_1", 1, 1, "running")
    with pytest.raises(psycopg.errors.RaiseException, match="migration batch 'batch_unknown' does not exist"):
        rolemig_db.execute("SELECT * FROM migration_tracking.get_migration_status('batch_unknown')")


def test_tracking_works_with_empty_search_path(rolemig_db):
    rolemig_db.execute("SET search_path = ''")
    batch = start(rolemig_db)
    rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, 'u1', 'author', 'editor')", (batch,))
    assert one(rolemig_db, "SELECT * FROM migration_tracking.complete_migration_batch(%s)",
               (batch,))["processed_users"] == 1


def test_log_cascades_with_batch(rolemig_db):
    batch = start(rolemig_db)
    other = start(rolemig_db, "other")
    for b in (batch, other):
        rolemig_db.execute("SELECT migration_tracking.log_user_migration(%s, 'u1', 'author', 'editor')", (b,))
    rolemig_db.execute("DELETE FROM migration_tracking.migration_batch WHERE batch_id = %s", (batch,))
    assert [r["batch_id"] for r in rows(rolemig_db, "SELECT batch_id FROM migration_tracking.migration_log")] == [other]
    rolemig_db.execute("TRUNCATE migration_tracking.migration_batch")
    assert one(rolemig_db, "SELECT count(*) AS n FROM migration_tracking.migration_log")["n"] == 0


def test_log_has_no_per_row_foreign_key_even_on_an_older_install(rolemig_db):
    """The log's foreign key cost a lookup and a lock per logged user; the file drops an old one."""
    rolemig_db.execute("""ALTER TABLE migration_tracking.migration_log ADD CONSTRAINT old_fk
        FOREIGN KEY (batch_id) REFERENCES migration_tracking.migration_batch ON DELETE CASCADE""")
    rolemig_db.execute(resources.sql_file("migration-logging-system.sql").read_text().encode())
    assert rows(rolemig_db, """SELECT conname FROM pg_constraint WHERE contype = 'f'
        AND conrelid = 'migration_tracking.migration_log'::regclass""") == []


def test_log_has_only_partial_indexes_even_on_an_older_install(rolemig_db):
    """Each full index on the log is an insert per logged user; an older install's primary key is dropped."""
    rolemig_db.execute("ALTER TABLE migration_tracking.migration_log ADD CONSTRAINT migration_log_pkey "
                       "PRIMARY KEY (log_id)")
    rolemig_db.execute(resources.sql_file("migration-logging-system.sql").read_text().encode())
    assert rows(rolemig_db, """SELECT indexrelid::regclass::text AS name, indpred IS NOT NULL AS partial
        FROM pg_index WHERE indrelid = 'migration_tracking.migration_log'::regclass ORDER BY 1""") == [
        {"name": "migration_tracking.migration_log_merged_idx", "partial": True},
        {"name": "migration_tracking.migration_log_revisited_idx", "partial": True}]
