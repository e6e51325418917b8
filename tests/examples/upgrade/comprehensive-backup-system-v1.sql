-- Version 1 of pytest_rolemig/sql/20-comprehensive-backup-system.sql (jsonb rows), kept as the test of the upgrade
-- to version 2 (typed copies) installs it: tests/test_backup_upgrade.py.

-- Comprehensive backup system: a complete, verifiable copy of everything the role
-- migration touches, taken before it runs.
--
-- Provides (schema migration_backup):
--   * tables backup_log, user_profiles_complete_backup (every column of every profile
--     row, as to_jsonb, plus the exact text of the json values to_jsonb cannot give back),
--     user_sessions_backup (every session row), rls_policies_backup (every policy of the
--     migrated tables, from pg_catalog.pg_policy);
--   * create_comprehensive_backup, validate_backup_completeness, get_backup_summary;
--   * helpers shared with the rollback system: describe_policies, role_check_constraints,
--     migrated_tables, backup_checksums.
-- Depends on: migration-logging-system.sql (schemas, migration_control.target_config,
--   migration_control.role_mapping, migration_control.new_roles).
-- Idempotent: safe to run twice; contains no psql meta-commands.

CREATE TABLE IF NOT EXISTS migration_backup.backup_log (
    backup_id         text PRIMARY KEY,
    backup_name       text NOT NULL,
    status            text NOT NULL CHECK (status IN ('in_progress', 'completed', 'failed')),
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz,
    target            jsonb NOT NULL,
    profiles_count    bigint,
    sessions_count    bigint,
    policies_count    integer,
    profiles_checksum text,
    sessions_checksum text,
    policies_checksum text,
    error             text
);
COMMENT ON COLUMN migration_backup.backup_log.target IS
    'target_config row + mapping + new_roles + role_checks [{name, definition}] + rls_tables [{schema, table, enabled, forced}]';

CREATE TABLE IF NOT EXISTS migration_backup.user_profiles_complete_backup (
    backup_id text NOT NULL,
    user_key  text NOT NULL,
    role      text,
    row_data  jsonb NOT NULL,
    json_text jsonb,
    PRIMARY KEY (backup_id, user_key)
);
-- to_jsonb(row) loses what a json column holds beyond its value (whitespace, key order,
-- duplicate keys) and, for json and jsonb alike, the difference between a JSON null and SQL
-- NULL: json_text keeps, for those columns only, {column: exact text}; NULL when none needs it.
ALTER TABLE migration_backup.user_profiles_complete_backup ADD COLUMN IF NOT EXISTS json_text jsonb;

CREATE TABLE IF NOT EXISTS migration_backup.user_sessions_backup (
    backup_id   text NOT NULL,
    session_key text NOT NULL,
    user_key    text,
    row_data    jsonb NOT NULL,
    PRIMARY KEY (backup_id, session_key)
);

-- The row copies carry no foreign key to backup_log (one lookup per copied row cost a quarter
-- of a backup); only create_comprehensive_backup writes them, after its backup_log row.
-- Deleting or truncating backup_log still removes them (see cascade_without_foreign_keys).
SELECT migration_tracking.cascade_without_foreign_keys(
    'migration_backup.backup_log', 'backup_id',
    ARRAY['migration_backup.user_profiles_complete_backup', 'migration_backup.user_sessions_backup']::regclass[]);

CREATE TABLE IF NOT EXISTS migration_backup.rls_policies_backup (
    backup_id   text NOT NULL REFERENCES migration_backup.backup_log ON DELETE CASCADE,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    policy_name text NOT NULL,
    permissive  text NOT NULL,
    command     text NOT NULL,
    roles       text[] NOT NULL,
    using_expr  text,
    check_expr  text,
    PRIMARY KEY (backup_id, schema_name, table_name, policy_name)
);

-- ------------------------------------------------------------ helpers ----

CREATE OR REPLACE FUNCTION migration_backup.describe_policies()
RETURNS TABLE (schema_name text, table_name text, policy_name text, permissive text, command text,
               roles text[], using_expr text, check_expr text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- Every row-level security policy of the database in the shape rls_policies_backup stores:
    -- the same expression serves backup, restore and the comparison after a rollback, so the
    -- three can never disagree on what "the same policy" means. Roles are sorted by name.
    SELECT n.nspname::text, c.relname::text, p.polname::text,
           CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
           CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                         WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
           ARRAY(SELECT CASE WHEN r.oid = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r.oid)::text END
                   FROM pg_catalog.unnest(p.polroles) AS r(oid)
                  ORDER BY 1),
           pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
      FROM pg_catalog.pg_policy AS p
      JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
$$;

CREATE OR REPLACE FUNCTION migration_backup.role_check_constraints(
    p_schema text, p_table text, p_role_column text
) RETURNS TABLE (name text, definition text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- CHECK constraints of the profiles table that involve the role column, with their
    -- definition as pg_get_constraintdef prints it (ready for ADD CONSTRAINT ... <definition>).
    SELECT con.conname::text, pg_catalog.pg_get_constraintdef(con.oid)
      FROM pg_catalog.pg_constraint AS con
      JOIN pg_catalog.pg_class AS c ON c.oid = con.conrelid
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
      JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attname = p_role_column
     WHERE n.nspname = p_schema AND c.relname = p_table
       AND con.contype = 'c' AND a.attnum = ANY (con.conkey)
     ORDER BY con.conname
$$;

CREATE OR REPLACE FUNCTION migration_backup.migrated_tables(
    p_profiles_schema text, p_profiles_table text, p_policy_schemas text[]
) RETURNS TABLE (schema_name text, table_name text, rls_enabled boolean, rls_forced boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- The tables whose policies the migration may rewrite: every table of the policy schemas
    -- with RLS enabled or with a policy, plus the profiles table itself; with their RLS flags.
    SELECT n.nspname::text, c.relname::text, c.relrowsecurity, c.relforcerowsecurity
      FROM pg_catalog.pg_class AS c
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND (   (n.nspname = ANY (p_policy_schemas)
                AND (c.relrowsecurity
                     OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy AS p WHERE p.polrelid = c.oid)))
            OR (n.nspname = p_profiles_schema AND c.relname = p_profiles_table))
     ORDER BY 1, 2
$$;

CREATE OR REPLACE FUNCTION migration_backup.backup_checksums(p_backup_id text)
RETURNS TABLE (profiles_count bigint, profiles_checksum text, sessions_count bigint,
               sessions_checksum text, policies_count integer, policies_checksum text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- Counts and checksums recomputed from the backup tables. The row checksum is the sum of
    -- 64-bit hashes of the jsonb text, order-independent and comparable with the same
    -- expression over to_jsonb(t) of the live table. Empty sets sum to '0', not NULL.
    -- sum(bigint) is already exact (its result is numeric); a ::numeric per row only cost time.
    SELECT p.n, p.s, s.n, s.s, c.n::integer, c.s
      FROM (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(b.row_data::text, 0)), 0)::text AS s
              FROM migration_backup.user_profiles_complete_backup AS b
             WHERE b.backup_id = p_backup_id) AS p,
           (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(b.row_data::text, 0)), 0)::text AS s
              FROM migration_backup.user_sessions_backup AS b
             WHERE b.backup_id = p_backup_id) AS s,
           (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(
                       concat_ws('|', b.schema_name, b.table_name, b.policy_name, b.permissive,
                                 b.command, b.roles::text, b.using_expr, b.check_expr), 0)),
                            0)::text AS s
              FROM migration_backup.rls_policies_backup AS b
             WHERE b.backup_id = p_backup_id) AS c
$$;

-- ------------------------------------------------------------- backup ----

CREATE OR REPLACE FUNCTION migration_backup.create_comprehensive_backup(
    p_backup_name text DEFAULT 'pre_migration_backup'
) RETURNS TABLE (backup_id text, profiles_count bigint, sessions_count bigint, policies_count integer,
                 status text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- Rows are rendered as text (to_jsonb, ::text) by the session's settings: pinned so that a
-- backup, and the checks that compare rows with it, give the same text in every session
-- (extra_float_digits = 0 rounded 0.1 + 0.2 to 0.3; another TimeZone changed every timestamptz,
-- bytea_output = 'escape' every bytea), and read back as text (xmloption = 'document' refused
-- to read back an xml value that is a content fragment).
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET xmloption = 'content'
-- row_security = off: a role subject to row-level security on the application's tables would
-- see, and so copy, migrate, restore or check, only the rows its policies show, and report
-- success (a backup of 0 of 130 profiles "completed"); with it off such a query fails instead.
SET row_security = off
AS $$
#variable_conflict use_column
DECLARE
    v_backup_id text;
    v_cfg       migration_control.target_config;
    v_target    jsonb;
    v_profiles  bigint;
    v_sessions  bigint;
    v_policies  integer;
    v_profiles_sum text;
    v_sessions_sum text;
    v_policies_sum text;
    v_json_text text;
    v_error     text;
BEGIN
    -- Copies, one INSERT ... SELECT per table, every profile row (all columns, to_jsonb), every
    -- session row and every policy of the migrated tables, and records in backup_log the target
    -- (config, mapping, role CHECK constraints, RLS flags) with counts and checksums. The log
    -- row is written first and outside the inner block: if any copy fails, the copies are
    -- undone, the row is marked 'failed' with the error and returned, not re-raised.
    IF p_backup_name IS NULL OR btrim(p_backup_name) = '' THEN
        RAISE EXCEPTION 'backup name must not be empty (got %)', coalesce(quote_literal(p_backup_name), 'NULL')
            USING DETAIL = 'The name is how an operator recognises a backup in get_backup_summary().',
                  HINT = 'Pass a name, e.g. create_comprehensive_backup(''pre_migration_backup'').';
    END IF;

    v_backup_id := 'bk_' || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
                   || left(replace(gen_random_uuid()::text, '-', ''), 6);
    INSERT INTO migration_backup.backup_log (backup_id, backup_name, status, target)
    VALUES (v_backup_id, p_backup_name, 'in_progress', '{}'::jsonb);

    BEGIN
        SELECT * INTO v_cfg FROM migration_control.target_config AS c;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'migration target is not configured'
                USING DETAIL = 'migration_control.target_config has no row.',
                      HINT = 'Call migration_control.ensure_target_configured() or configure_target().';
        END IF;

        v_target := to_jsonb(v_cfg) || jsonb_build_object(
            'mapping', coalesce((SELECT jsonb_object_agg(m.legacy_role, m.new_role ORDER BY m.legacy_role)
                                   FROM migration_control.role_mapping AS m), '{}'::jsonb),
            'new_roles', coalesce((SELECT jsonb_agg(r.role_name ORDER BY r.position, r.role_name)
                                     FROM migration_control.new_roles AS r), '[]'::jsonb),
            'role_checks', coalesce((SELECT jsonb_agg(jsonb_build_object('name', k.name, 'definition', k.definition)
                                                      ORDER BY k.name)
                                       FROM migration_backup.role_check_constraints(
                                                v_cfg.profiles_schema, v_cfg.profiles_table,
                                                v_cfg.role_column) AS k), '[]'::jsonb),
            'rls_tables', coalesce((SELECT jsonb_agg(jsonb_build_object('schema', t.schema_name,
                                                                        'table', t.table_name,
                                                                        'enabled', t.rls_enabled,
                                                                        'forced', t.rls_forced)
                                                     ORDER BY t.schema_name, t.table_name)
                                      FROM migration_backup.migrated_tables(
                                               v_cfg.profiles_schema, v_cfg.profiles_table,
                                               v_cfg.policy_schemas) AS t), '[]'::jsonb));

        -- json_text: the text of every non-NULL json column (json keeps its text, to_jsonb
        -- normalizes it) and of every jsonb column holding a JSON null (to_jsonb gives null for
        -- it and for SQL NULL alike); other columns round-trip through row_data.
        SELECT 'NULLIF(' || string_agg(
                   format('CASE WHEN %s THEN jsonb_build_object(%L, t.%I::text) ELSE ''{}''::jsonb END',
                          CASE WHEN j.base = 'json'::regtype THEN format('t.%I IS NOT NULL', a.attname)
                               ELSE format('jsonb_typeof(t.%I) = ''null''', a.attname) END,
                          a.attname, a.attname), ' || ' ORDER BY a.attnum) || ', ''{}''::jsonb)'
          INTO v_json_text
          FROM pg_catalog.pg_attribute AS a
          JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
          CROSS JOIN LATERAL (SELECT CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END AS base) AS j
         WHERE a.attrelid = format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table)::regclass
           AND a.attnum > 0 AND NOT a.attisdropped
           AND j.base IN ('json'::regtype, 'jsonb'::regtype);

        -- Count and checksum (the expression of backup_checksums) come from the rows as they
        -- are written, in the same pass: reading the copies back doubled the backup's cost.
        -- Rows go in in primary-key order: each index insertion then lands on the rightmost
        -- leaf instead of a random one (1,000,000 profiles: 7.7 s -> 5.0 s for the copy).
        EXECUTE format(
            'WITH copied AS (
                 INSERT INTO migration_backup.user_profiles_complete_backup (backup_id, user_key, role, row_data, json_text)
                 SELECT $1, t.%1$I::text, t.%2$I::text, to_jsonb(t), %3$s FROM %4$I.%5$I AS t
                 ORDER BY t.%1$I::text
                 RETURNING row_data)
             SELECT count(*), coalesce(sum(hashtextextended(c.row_data::text, 0)), 0)::text FROM copied AS c',
            v_cfg.key_column, v_cfg.role_column, coalesce(v_json_text, 'NULL'),
            v_cfg.profiles_schema, v_cfg.profiles_table)
        INTO v_profiles, v_profiles_sum
        USING v_backup_id;

        -- no sessions table (sessions_table NULL): no session rows, the checksum of none
        v_sessions := 0;
        v_sessions_sum := '0';
        IF v_cfg.sessions_table IS NOT NULL THEN
        EXECUTE format(
            'WITH copied AS (
                 INSERT INTO migration_backup.user_sessions_backup (backup_id, session_key, user_key, row_data)
                 SELECT $1, s.%1$I::text, s.%2$I::text, to_jsonb(s) FROM %3$I.%4$I AS s
                 ORDER BY s.%1$I::text
                 RETURNING row_data)
             SELECT count(*), coalesce(sum(hashtextextended(c.row_data::text, 0)), 0)::text FROM copied AS c',
            v_cfg.sessions_key_column, v_cfg.sessions_user_column, v_cfg.sessions_schema, v_cfg.sessions_table)
        INTO v_sessions, v_sessions_sum
        USING v_backup_id;
        END IF;

        INSERT INTO migration_backup.rls_policies_backup
               (backup_id, schema_name, table_name, policy_name, permissive, command, roles, using_expr, check_expr)
        SELECT v_backup_id, p.schema_name, p.table_name, p.policy_name, p.permissive, p.command, p.roles,
               p.using_expr, p.check_expr
          FROM migration_backup.describe_policies() AS p
          JOIN migration_backup.migrated_tables(v_cfg.profiles_schema, v_cfg.profiles_table,
                                                v_cfg.policy_schemas) AS t
            ON t.schema_name = p.schema_name AND t.table_name = p.table_name;
        GET DIAGNOSTICS v_policies = ROW_COUNT;

        SELECT coalesce(sum(hashtextextended(
                   concat_ws('|', b.schema_name, b.table_name, b.policy_name, b.permissive,
                             b.command, b.roles::text, b.using_expr, b.check_expr), 0)), 0)::text
          INTO v_policies_sum
          FROM migration_backup.rls_policies_backup AS b
         WHERE b.backup_id = v_backup_id;

        UPDATE migration_backup.backup_log AS l
           SET status = 'completed', completed_at = clock_timestamp(), target = v_target,
               profiles_count = v_profiles, sessions_count = v_sessions, policies_count = v_policies,
               profiles_checksum = v_profiles_sum, sessions_checksum = v_sessions_sum,
               policies_checksum = v_policies_sum
         WHERE l.backup_id = v_backup_id;
    EXCEPTION WHEN OTHERS THEN
        v_error := SQLERRM;
        UPDATE migration_backup.backup_log AS l
           SET status = 'failed', completed_at = clock_timestamp(), error = v_error,
               target = coalesce((SELECT to_jsonb(c) FROM migration_control.target_config AS c), '{}'::jsonb)
         WHERE l.backup_id = v_backup_id;
        RAISE WARNING 'backup % failed: %', v_backup_id, v_error
            USING HINT = 'The failed backup is kept in migration_backup.backup_log with its error.';
    END;

    RETURN QUERY
    SELECT l.backup_id, l.profiles_count, l.sessions_count, l.policies_count, l.status
      FROM migration_backup.backup_log AS l
     WHERE l.backup_id = v_backup_id;
END
$$;

-- --------------------------------------------------------- validation ----

CREATE OR REPLACE FUNCTION migration_backup.validate_backup_completeness(p_backup_id text)
RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
-- The settings that decide how rows render as text, pinned as in create_comprehensive_backup.
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET xmloption = 'content'
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
#variable_conflict use_column
DECLARE
    v_log      migration_backup.backup_log;
    v_sums     record;
    v_missing  bigint;
    v_sample   jsonb;
    v_bad_rows bigint;
    v_bad      jsonb;
BEGIN
    -- Proves a backup is complete and untouched: counts and checksums recomputed from the
    -- backup tables must equal what backup_log recorded when the backup was taken; every row's
    -- user_key, role and json_text must agree with its row_data (the checksum only covers
    -- row_data);
    -- and live users missing from the backup are reported (warn: they joined after it).
    SELECT * INTO v_log FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'backup_exists'::text, 'fail'::text,
                            jsonb_build_object('backup_id', p_backup_id,
                                               'error', 'no such backup in migration_backup.backup_log');
        RETURN;
    END IF;
    RETURN QUERY SELECT 'backup_exists'::text, 'pass'::text,
                        jsonb_build_object('backup_id', p_backup_id, 'backup_name', v_log.backup_name,
                                           'created_at', v_log.created_at);
    RETURN QUERY SELECT 'backup_status'::text,
                        CASE WHEN v_log.status = 'completed' THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('status', v_log.status, 'error', v_log.error);

    SELECT * INTO v_sums FROM migration_backup.backup_checksums(p_backup_id);
    RETURN QUERY
    SELECT c.name,
           CASE WHEN c.recorded IS NOT DISTINCT FROM c.actual THEN 'pass' ELSE 'fail' END,
           jsonb_build_object('recorded', c.recorded, 'actual', c.actual)
      FROM (VALUES ('profiles_count', v_log.profiles_count::text, v_sums.profiles_count::text, 1),
                   ('profiles_checksum', v_log.profiles_checksum, v_sums.profiles_checksum, 2),
                   ('sessions_count', v_log.sessions_count::text, v_sums.sessions_count::text, 3),
                   ('sessions_checksum', v_log.sessions_checksum, v_sums.sessions_checksum, 4),
                   ('policies_count', v_log.policies_count::text, v_sums.policies_count::text, 5),
                   ('policies_checksum', v_log.policies_checksum, v_sums.policies_checksum, 6))
           AS c(name, recorded, actual, ord)
     ORDER BY c.ord;

    IF v_log.status = 'completed' THEN
        BEGIN
            SELECT count(*), jsonb_agg(x.user_key) FILTER (WHERE x.rn <= 20)
              INTO v_bad_rows, v_bad
              FROM (SELECT b.user_key, row_number() OVER (ORDER BY b.user_key) AS rn
                      FROM migration_backup.user_profiles_complete_backup AS b
                     WHERE b.backup_id = p_backup_id
                       AND (b.user_key IS DISTINCT FROM b.row_data ->> (v_log.target ->> 'key_column')
                            OR b.role IS DISTINCT FROM b.row_data ->> (v_log.target ->> 'role_column')
                            OR EXISTS (SELECT 1 FROM jsonb_each_text(b.json_text) AS j
                                        WHERE j.value::jsonb IS DISTINCT FROM b.row_data -> j.key))) AS x;
        EXCEPTION WHEN invalid_text_representation THEN  -- a json_text value that is not JSON
            v_bad_rows := NULL;
            v_bad := jsonb_build_array(SQLERRM);
        END;
        RETURN QUERY SELECT 'profiles_keys_consistent'::text,
                            CASE WHEN v_bad_rows = 0 THEN 'pass' ELSE 'fail' END,
                            jsonb_build_object('inconsistent_rows', v_bad_rows,
                                               'sample', coalesce(v_bad, '[]'::jsonb));

        BEGIN
            EXECUTE format(
                'SELECT count(*), jsonb_agg(x.k) FILTER (WHERE x.rn <= 20)
                   FROM (SELECT t.%1$I::text AS k, row_number() OVER (ORDER BY t.%1$I::text) AS rn
                           FROM %2$I.%3$I AS t
                          WHERE NOT EXISTS (SELECT 1 FROM migration_backup.user_profiles_complete_backup AS b
                                             WHERE b.backup_id = $1 AND b.user_key = t.%1$I::text)) AS x',
                v_log.target ->> 'key_column', v_log.target ->> 'profiles_schema',
                v_log.target ->> 'profiles_table')
            INTO v_missing, v_sample
            USING p_backup_id;
            RETURN QUERY SELECT 'covers_live_users'::text,
                                CASE WHEN v_missing = 0 THEN 'pass' ELSE 'warn' END,
                                jsonb_build_object('live_users_missing_from_backup', v_missing,
                                                   'sample', coalesce(v_sample, '[]'::jsonb));
        EXCEPTION WHEN OTHERS THEN
            RETURN QUERY SELECT 'covers_live_users'::text, 'fail'::text,
                                jsonb_build_object('error', SQLERRM,
                                                   'table', format('%I.%I', v_log.target ->> 'profiles_schema',
                                                                   v_log.target ->> 'profiles_table'));
        END;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.get_backup_summary()
RETURNS TABLE (backup_id text, backup_name text, status text, created_at timestamptz,
               profiles_count bigint, sessions_count bigint, policies_count integer, size_bytes bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- Every backup, newest first, with the space its rows take in the backup tables.
    SELECT l.backup_id, l.backup_name, l.status, l.created_at, l.profiles_count, l.sessions_count,
           l.policies_count,
           coalesce((SELECT sum(pg_catalog.pg_column_size(b.*))
                       FROM migration_backup.user_profiles_complete_backup AS b
                      WHERE b.backup_id = l.backup_id), 0)::bigint
         + coalesce((SELECT sum(pg_catalog.pg_column_size(s.*))
                       FROM migration_backup.user_sessions_backup AS s
                      WHERE s.backup_id = l.backup_id), 0)::bigint
         + coalesce((SELECT sum(pg_catalog.pg_column_size(p.*))
                       FROM migration_backup.rls_policies_backup AS p
                      WHERE p.backup_id = l.backup_id), 0)::bigint
      FROM migration_backup.backup_log AS l
     ORDER BY l.created_at DESC, l.backup_id DESC
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_backup FROM PUBLIC;
