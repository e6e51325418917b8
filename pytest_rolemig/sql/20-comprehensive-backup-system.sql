-- Comprehensive backup system: a complete, verifiable copy of everything the role
-- migration touches, taken before it runs.
--
-- Provides (schema migration_backup):
--   * table backup_log: one row per backup, the catalog of what it holds: the target it was
--     taken from, the names of its typed copies, their row counts and checksums;
--   * typed copies: per backup, one table of the profiles and one of the sessions as they are
--     (CREATE TABLE AS, every column in its own type: json text, JSON null vs SQL NULL, float
--     digits and time zones are the values themselves, not a rendering of them), named
--     <backup_id>_profiles and <backup_id>_sessions, dropped with their backup_log row;
--   * views user_profiles_complete_backup (backup_id, user_key, role, row_data, json_text) and
--     user_sessions_backup (backup_id, session_key, user_key, row_data): every backed-up row
--     of every backup, rendered as jsonb for readers (they refuse writes: a backup is changed
--     only by corrupting its copy, which its checksum then reports);
--   * table rls_policies_backup (every policy of the migrated tables, from pg_catalog.pg_policy);
--   * create_comprehensive_backup, validate_backup_completeness, get_backup_summary;
--   * helpers shared with the rollback system: describe_policies, role_check_constraints,
--     migrated_tables, backup_checksums, copy_columns, row_hash_sql;
--   * the upgrade from version 1 (jsonb rows in user_profiles_complete_backup and
--     user_sessions_backup tables): convert_jsonb_backup turns each old backup into typed
--     copies after verifying it against its recorded checksums; the version is recorded in
--     migration_control.infrastructure_version.
-- Checksums: count(*) and sum(hash_record_extended(row, 0)) over a copy (a column whose type
-- has no extended hash function, json for one, is hashed as its text); order-independent,
-- recomputed by validate_backup_completeness and compared with what backup_log recorded.
-- Depends on: migration-logging-system.sql (schemas, migration_control.target_config,
--   migration_control.role_mapping, migration_control.new_roles, infrastructure_version).
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

-- Typed copies (version 2): the names of a backup's copies, NULL for a backup of version 1
-- that could not be converted (see convert_jsonb_backup).
ALTER TABLE migration_backup.backup_log ADD COLUMN IF NOT EXISTS profiles_copy text;
ALTER TABLE migration_backup.backup_log ADD COLUMN IF NOT EXISTS sessions_copy text;
COMMENT ON COLUMN migration_backup.backup_log.profiles_copy IS
    'table of migration_backup holding the backed-up profile rows, typed as the live table was';

-- Version 1 kept every row as jsonb in the tables user_profiles_complete_backup and
-- user_sessions_backup: they are renamed here, converted at the end of this file and dropped
-- once empty; the two names become views over the typed copies.
DO $upgrade$
BEGIN
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c
         WHERE c.oid = pg_catalog.to_regclass('migration_backup.user_profiles_complete_backup')) = 'r' THEN
        ALTER TABLE migration_backup.user_profiles_complete_backup RENAME TO user_profiles_jsonb_backup;
    END IF;
    IF (SELECT c.relkind FROM pg_catalog.pg_class AS c
         WHERE c.oid = pg_catalog.to_regclass('migration_backup.user_sessions_backup')) = 'r' THEN
        ALTER TABLE migration_backup.user_sessions_backup RENAME TO user_sessions_jsonb_backup;
    END IF;
    -- version 1's cascade to those tables (cascade_without_foreign_keys); drop_backup_copies
    -- below takes over
    DROP TRIGGER IF EXISTS cascade_delete ON migration_backup.backup_log;
    DROP TRIGGER IF EXISTS cascade_truncate ON migration_backup.backup_log;
END
$upgrade$;

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
SET jit = off
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
SET jit = off
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
SET jit = off
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

CREATE OR REPLACE FUNCTION migration_backup.copy_name(p_backup_id text, p_kind text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The table name of backup p_backup_id's copy of kind 'profiles' or 'sessions': the backup
    -- id itself when it is a plain short name (every id create_comprehensive_backup makes,
    -- bk_YYYYMMDD_HHMISS_xxxxxx), else bk_ and a hash of it, so that no id can make a name
    -- longer than an identifier or one that collides with another backup's. Always used
    -- through format('%I').
    SELECT CASE WHEN p_backup_id ~ '^[a-z0-9_]{1,48}$' THEN p_backup_id
                ELSE 'bk_' || left(md5(p_backup_id), 24) END || '_' || p_kind
$$;

CREATE OR REPLACE FUNCTION migration_backup.copy_table(p_name text)
RETURNS regclass
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The copy named p_name in migration_backup (a name from backup_log), NULL when there is
    -- none or the name is NULL.
    SELECT pg_catalog.to_regclass('migration_backup.' || pg_catalog.quote_ident(p_name))
$$;

CREATE OR REPLACE FUNCTION migration_backup.hashable_type(p_type oid)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_type oid := p_type;
    v_t    pg_catalog.pg_type;
BEGIN
    -- Whether hash_record_extended can hash a value of type p_type itself: a domain over, or
    -- an array of, such a type, an enum, or a type with a default hash operator class that has
    -- an extended hash function (itself or through a binary-coercible type, as varchar through
    -- text). Composite and range types are answered false (their fields decide; they are
    -- hashed as text instead, which is exact, only slower).
    LOOP
        SELECT * INTO v_t FROM pg_catalog.pg_type AS t WHERE t.oid = v_type;
        IF v_t.typtype = 'd' THEN
            v_type := v_t.typbasetype;
        ELSIF v_t.typcategory = 'A' AND v_t.typelem <> 0 AND v_t.typlen = -1 THEN
            v_type := v_t.typelem;
        ELSE
            EXIT;
        END IF;
    END LOOP;
    IF v_t.typtype = 'e' THEN
        RETURN true;
    ELSIF v_t.typtype <> 'b' THEN
        RETURN false;
    END IF;
    -- as the type cache finds it: the default hash class of the type itself, else the only
    -- one of a type it is binary-coercible to (xml is to text and to bpchar: none)
    RETURN coalesce((
        SELECT bool_and(EXISTS (SELECT 1 FROM pg_catalog.pg_amproc AS p
                                 WHERE p.amprocfamily = x.opcfamily AND p.amprocnum = 2
                                   AND p.amproclefttype = x.opcintype))
               AND (bool_or(x.exact) OR count(*) = 1)
          FROM (SELECT oc.opcfamily, oc.opcintype, oc.opcintype = v_type AS exact,
                       max((oc.opcintype = v_type)::int) OVER () AS any_exact
                  FROM pg_catalog.pg_opclass AS oc
                  JOIN pg_catalog.pg_am AS am ON am.oid = oc.opcmethod AND am.amname = 'hash'
                 WHERE oc.opcdefault
                   AND (oc.opcintype = v_type
                        OR EXISTS (SELECT 1 FROM pg_catalog.pg_cast AS c
                                    WHERE c.castsource = v_type AND c.casttarget = oc.opcintype
                                      AND c.castmethod = 'b'))) AS x
         WHERE x.exact OR x.any_exact = 0), false);
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.row_hash_sql(p_rel regclass, p_alias text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The expression hashing one row of p_rel (alias p_alias) into a bigint, the term the
    -- checksum sums: hash_record_extended(row, 0) when every column's type can be hashed, else
    -- of a ROW() of the columns with each unhashable one (json, xml, point, bit...) as its text.
    -- The same expression for a copy and for the live table it was taken from, column by
    -- column, as long as their columns agree.
    SELECT CASE WHEN bool_and(h.ok) THEN format('pg_catalog.hash_record_extended(%s, 0)', p_alias)
                ELSE format('pg_catalog.hash_record_extended(ROW(%s), 0)',
                            string_agg(CASE WHEN h.ok THEN format('%s.%I', p_alias, a.attname)
                                            ELSE format('%s.%I::text', p_alias, a.attname) END,
                                       ', ' ORDER BY a.attnum)) END
      FROM pg_catalog.pg_attribute AS a
      CROSS JOIN LATERAL (SELECT migration_backup.hashable_type(a.atttypid) AS ok) AS h
     WHERE a.attrelid = p_rel AND a.attnum > 0 AND NOT a.attisdropped
$$;

CREATE OR REPLACE FUNCTION migration_backup.copy_checksum(p_copy regclass, OUT row_count bigint, OUT checksum text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
-- a column hashed as text renders by these settings: pinned as in create_comprehensive_backup
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET xmloption = 'content'
SET row_security = off
AS $$
BEGIN
    -- Count and checksum of one copy, in one pass: count(*) and the sum of row_hash_sql over
    -- it ('0' for no rows, not NULL). NULLs when the copy does not exist (dropped by hand).
    IF p_copy IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT count(*), coalesce(sum(%s), 0)::text FROM %s AS c',
                   migration_backup.row_hash_sql(p_copy, 'c'), p_copy)
    INTO row_count, checksum;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.backup_checksums(p_backup_id text)
RETURNS TABLE (profiles_count bigint, profiles_checksum text, sessions_count bigint,
               sessions_checksum text, policies_count integer, policies_checksum text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Counts and checksums recomputed from the backup's copies (copy_checksum) and its policy
    -- rows. A backup without a sessions copy (no sessions table) has 0 sessions and checksum
    -- '0'; a copy named in backup_log that is missing gives NULLs, which match nothing.
    SELECT p.row_count, p.checksum,
           CASE WHEN l.sessions_copy IS NULL THEN 0 ELSE s.row_count END,
           CASE WHEN l.sessions_copy IS NULL THEN '0' ELSE s.checksum END,
           c.n::integer, c.s
      FROM migration_backup.backup_log AS l
      CROSS JOIN LATERAL migration_backup.copy_checksum(
                     migration_backup.copy_table(l.profiles_copy)) AS p
      CROSS JOIN LATERAL migration_backup.copy_checksum(
                     migration_backup.copy_table(l.sessions_copy)) AS s,
           (SELECT count(*) AS n,
                   coalesce(sum(hashtextextended(
                       concat_ws('|', b.schema_name, b.table_name, b.policy_name, b.permissive,
                                 b.command, b.roles::text, b.using_expr, b.check_expr), 0)),
                            0)::text AS s
              FROM migration_backup.rls_policies_backup AS b
             WHERE b.backup_id = p_backup_id) AS c
     WHERE l.backup_id = p_backup_id AND l.profiles_copy IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION migration_backup.secure_copy(p_copy regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_owner   oid;
    v_grantee text;
BEGIN
    -- A new copy gets what the other backup tables have: the owner of the schema (when the
    -- caller may hand it over: see secure_migration_objects), row level security as
    -- backup_log has it, and no privilege for anybody but its owner, whatever default
    -- privileges the creating role has (a Supabase-style default granting ALL to the API roles).
    SELECT n.nspowner INTO v_owner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'migration_backup';
    IF v_owner <> (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = p_copy)
       AND pg_catalog.pg_has_role(current_user, v_owner, 'USAGE') THEN
        EXECUTE format('ALTER TABLE %s OWNER TO %I', p_copy, pg_catalog.pg_get_userbyid(v_owner));
    END IF;
    FOR v_grantee IN
        SELECT DISTINCT CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE format('%I', pg_catalog.pg_get_userbyid(x.grantee)) END
          FROM pg_catalog.pg_class AS c
          CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS x
         WHERE c.oid = p_copy AND x.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', p_copy, v_grantee);
    END LOOP;
    IF (SELECT c.relrowsecurity FROM pg_catalog.pg_class AS c
         WHERE c.oid = 'migration_backup.backup_log'::regclass) THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', p_copy);
    END IF;
    -- And statistics: a copy is written once, then read by every check and restore that joins
    -- it to the live table. Without them the planner guessed a third of its rows and chose
    -- sorts that spilled to disk (covers_live_users at 1,000,000 users: 0.5 s, 0.3 s with them).
    EXECUTE format('ANALYZE %s', p_copy);
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.refresh_backup_views()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_profiles text;
    v_sessions text;
BEGIN
    -- (Re)defines the views user_profiles_complete_backup and user_sessions_backup as the
    -- union of every existing typed copy, each row rendered as to_jsonb with its key (and role,
    -- or user) as text: the spec's tables, for readers. Called whenever a copy is created or
    -- dropped; the code of this infrastructure reads the copies themselves.
    SELECT string_agg(format('SELECT %L::text, c.%I::text, c.%I::text, pg_catalog.to_jsonb(c), NULL::jsonb '
                             'FROM migration_backup.%I AS c',
                             l.backup_id, l.target ->> 'key_column', l.target ->> 'role_column', l.profiles_copy),
                      ' UNION ALL ' ORDER BY l.backup_id)
      INTO v_profiles
      FROM migration_backup.backup_log AS l
     WHERE migration_backup.copy_table(l.profiles_copy) IS NOT NULL;
    SELECT string_agg(format('SELECT %L::text, c.%I::text, c.%I::text, pg_catalog.to_jsonb(c) '
                             'FROM migration_backup.%I AS c',
                             l.backup_id, l.target ->> 'sessions_key_column', l.target ->> 'sessions_user_column',
                             l.sessions_copy),
                      ' UNION ALL ' ORDER BY l.backup_id)
      INTO v_sessions
      FROM migration_backup.backup_log AS l
     WHERE migration_backup.copy_table(l.sessions_copy) IS NOT NULL;
    EXECUTE 'CREATE OR REPLACE VIEW migration_backup.user_profiles_complete_backup '
            '(backup_id, user_key, role, row_data, json_text) AS '
            || coalesce(v_profiles, 'SELECT NULL::text, NULL::text, NULL::text, NULL::jsonb, NULL::jsonb WHERE false');
    EXECUTE 'CREATE OR REPLACE VIEW migration_backup.user_sessions_backup '
            '(backup_id, session_key, user_key, row_data) AS '
            || coalesce(v_sessions, 'SELECT NULL::text, NULL::text, NULL::text, NULL::jsonb WHERE false');
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.refuse_backup_row_writes()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- INSTEAD OF trigger of the two views: a backup's rows are its typed copies, written once.
    RAISE EXCEPTION '% is a view over the typed backup copies; it cannot be written', TG_TABLE_NAME
        USING DETAIL = format('%s on migration_backup.%I was refused.', TG_OP, TG_TABLE_NAME),
              HINT = 'Take a new backup with migration_backup.create_comprehensive_backup(); delete a '
                     'backup (and its copies) by deleting its migration_backup.backup_log row.';
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.drop_backup_copies()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_copy regclass;
BEGIN
    -- Statement trigger on backup_log: the copies of deleted backups (all of them on
    -- TRUNCATE) are dropped, after the views stop naming them. What a foreign key with ON
    -- DELETE CASCADE gave the rows of version 1, which are deleted too while any are left.
    PERFORM migration_backup.refresh_backup_views();
    IF TG_OP = 'TRUNCATE' THEN
        FOR v_copy IN
            SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
             WHERE c.relnamespace = 'migration_backup'::regnamespace AND c.relkind = 'r'
               AND c.relname ~ '_(profiles|sessions)$'
               AND NOT EXISTS (SELECT 1 FROM migration_backup.backup_log AS l
                                WHERE c.relname IN (l.profiles_copy, l.sessions_copy))
               AND c.relname ~ '^bk_'
        LOOP
            EXECUTE format('DROP TABLE %s', v_copy);
        END LOOP;
        IF pg_catalog.to_regclass('migration_backup.user_profiles_jsonb_backup') IS NOT NULL THEN
            TRUNCATE migration_backup.user_profiles_jsonb_backup;
        END IF;
        IF pg_catalog.to_regclass('migration_backup.user_sessions_jsonb_backup') IS NOT NULL THEN
            TRUNCATE migration_backup.user_sessions_jsonb_backup;
        END IF;
    ELSE
        FOR v_copy IN
            SELECT migration_backup.copy_table(x.name)
              FROM gone AS g CROSS JOIN LATERAL (VALUES (g.profiles_copy), (g.sessions_copy)) AS x(name)
             WHERE migration_backup.copy_table(x.name) IS NOT NULL
        LOOP
            EXECUTE format('DROP TABLE %s', v_copy);
        END LOOP;
        IF pg_catalog.to_regclass('migration_backup.user_profiles_jsonb_backup') IS NOT NULL THEN
            EXECUTE 'DELETE FROM migration_backup.user_profiles_jsonb_backup AS b USING gone AS g
                      WHERE b.backup_id = g.backup_id';
        END IF;
        IF pg_catalog.to_regclass('migration_backup.user_sessions_jsonb_backup') IS NOT NULL THEN
            EXECUTE 'DELETE FROM migration_backup.user_sessions_jsonb_backup AS b USING gone AS g
                      WHERE b.backup_id = g.backup_id';
        END IF;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS drop_copies_delete ON migration_backup.backup_log;
CREATE TRIGGER drop_copies_delete AFTER DELETE ON migration_backup.backup_log
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION migration_backup.drop_backup_copies();
DROP TRIGGER IF EXISTS drop_copies_truncate ON migration_backup.backup_log;
CREATE TRIGGER drop_copies_truncate AFTER TRUNCATE ON migration_backup.backup_log
    FOR EACH STATEMENT EXECUTE FUNCTION migration_backup.drop_backup_copies();

SELECT migration_backup.refresh_backup_views();
DROP TRIGGER IF EXISTS refuse_writes ON migration_backup.user_profiles_complete_backup;
CREATE TRIGGER refuse_writes INSTEAD OF INSERT OR UPDATE OR DELETE ON migration_backup.user_profiles_complete_backup
    FOR EACH ROW EXECUTE FUNCTION migration_backup.refuse_backup_row_writes();
DROP TRIGGER IF EXISTS refuse_writes ON migration_backup.user_sessions_backup;
CREATE TRIGGER refuse_writes INSTEAD OF INSERT OR UPDATE OR DELETE ON migration_backup.user_sessions_backup
    FOR EACH ROW EXECUTE FUNCTION migration_backup.refuse_backup_row_writes();

-- ------------------------------------------------------------- backup ----

CREATE OR REPLACE FUNCTION migration_backup.create_comprehensive_backup(
    p_backup_name text DEFAULT 'pre_migration_backup'
) RETURNS TABLE (backup_id text, profiles_count bigint, sessions_count bigint, policies_count integer,
                 status text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
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
    v_profiles_copy text;
    v_sessions_copy text;
    v_error     text;
BEGIN
    -- Copies the profiles and sessions tables as they are (one typed copy each, see the file
    -- header) and every policy of the migrated tables, and records in backup_log the target
    -- (config, mapping, role CHECK constraints, RLS flags), the copies' names, counts and
    -- checksums. The log row is written first and outside the inner block: if any copy fails,
    -- the copies are undone, the row is marked 'failed' with the error and returned, not re-raised.
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

        -- The typed copies: CREATE TABLE AS, each row read and written once in its own format
        -- (rendering every row as jsonb cost 8-10x the copy itself), then count and checksum in
        -- one pass over each copy (copy_checksum), which validate_backup_completeness repeats.
        v_profiles_copy := migration_backup.copy_name(v_backup_id, 'profiles');
        EXECUTE format('CREATE TABLE migration_backup.%I AS SELECT * FROM %I.%I',
                       v_profiles_copy, v_cfg.profiles_schema, v_cfg.profiles_table);
        PERFORM migration_backup.secure_copy(format('migration_backup.%I', v_profiles_copy)::regclass);
        SELECT c.row_count, c.checksum INTO v_profiles, v_profiles_sum
          FROM migration_backup.copy_checksum(format('migration_backup.%I', v_profiles_copy)::regclass) AS c;

        -- no sessions table (sessions_table NULL): no sessions copy, no session rows, the checksum of none
        v_sessions := 0;
        v_sessions_sum := '0';
        IF v_cfg.sessions_table IS NOT NULL THEN
            v_sessions_copy := migration_backup.copy_name(v_backup_id, 'sessions');
            EXECUTE format('CREATE TABLE migration_backup.%I AS SELECT * FROM %I.%I',
                           v_sessions_copy, v_cfg.sessions_schema, v_cfg.sessions_table);
            PERFORM migration_backup.secure_copy(format('migration_backup.%I', v_sessions_copy)::regclass);
            SELECT c.row_count, c.checksum INTO v_sessions, v_sessions_sum
              FROM migration_backup.copy_checksum(format('migration_backup.%I', v_sessions_copy)::regclass) AS c;
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
               policies_checksum = v_policies_sum, profiles_copy = v_profiles_copy,
               sessions_copy = v_sessions_copy
         WHERE l.backup_id = v_backup_id;
        PERFORM migration_backup.refresh_backup_views();
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

CREATE OR REPLACE FUNCTION migration_backup.key_match_sql(
    p_copy regclass, p_live regclass, p_key text, p_copy_alias text, p_live_alias text
) RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The join condition "copy row = live row" on key column p_key: the columns compared as
    -- they are when the copy's key has the live key's type (an index or a hash join on it),
    -- else as text (the column's type changed after the backup). NULL when either side lacks
    -- the column.
    SELECT CASE WHEN c.atttypid = t.atttypid AND c.atttypmod = t.atttypmod
                THEN format('%s.%I = %s.%I', p_live_alias, p_key, p_copy_alias, p_key)
                ELSE format('%s.%I::text = %s.%I::text', p_live_alias, p_key, p_copy_alias, p_key) END
      FROM pg_catalog.pg_attribute AS c, pg_catalog.pg_attribute AS t
     WHERE c.attrelid = p_copy AND c.attname = p_key AND NOT c.attisdropped AND c.attnum > 0
       AND t.attrelid = p_live AND t.attname = p_key AND NOT t.attisdropped AND t.attnum > 0
$$;

CREATE OR REPLACE FUNCTION migration_backup.backup_integrity(p_backup_id text)
RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
#variable_conflict use_column
DECLARE
    v_log     migration_backup.backup_log;
    v_sums    record;
    v_copy    regclass;
    v_lacking text[];
BEGIN
    -- What a restore needs of a backup, from the backup alone: it exists, is completed, its
    -- copies still give the counts and checksums backup_log recorded (one pass over each), and
    -- its profiles copy has the key and role columns the restore joins and writes by. Every
    -- check of validate_backup_completeness but covers_live_users, which reads live data.
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
        v_copy := migration_backup.copy_table(v_log.profiles_copy);
        SELECT array_agg(w.col ORDER BY w.col) INTO v_lacking
          FROM unnest(ARRAY[v_log.target ->> 'key_column', v_log.target ->> 'role_column']) AS w(col)
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                            WHERE a.attrelid = v_copy AND a.attname = w.col AND a.attnum > 0
                              AND NOT a.attisdropped);
        RETURN QUERY SELECT 'profiles_keys_consistent'::text,
                            CASE WHEN v_copy IS NOT NULL AND v_lacking IS NULL THEN 'pass' ELSE 'fail' END,
                            jsonb_build_object('copy', v_log.profiles_copy, 'copy_exists', v_copy IS NOT NULL,
                                               'columns_missing', coalesce(to_jsonb(v_lacking), '[]'::jsonb))
                            || CASE WHEN v_log.profiles_copy IS NULL
                                    THEN jsonb_build_object('error', 'a backup of version 1 that was not converted '
                                                                     'to typed copies (see convert_jsonb_backup)')
                                    ELSE '{}'::jsonb END;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_backup_completeness(p_backup_id text)
RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
#variable_conflict use_column
DECLARE
    v_target  jsonb;     -- the target the backup was taken of
    v_copy    regclass;
    v_live    regclass;
    v_match   text;
    v_missing bigint;
    v_sample  jsonb;
BEGIN
    -- Proves a backup is complete and untouched (backup_integrity: counts and checksums
    -- recomputed from the copies equal what backup_log recorded, the copy has its key and role
    -- columns), and reports live users missing from the backup (warn: they joined after it).
    RETURN QUERY SELECT i.check_name, i.status, i.details FROM migration_backup.backup_integrity(p_backup_id) AS i;
    SELECT l.target, migration_backup.copy_table(l.profiles_copy) INTO v_target, v_copy
      FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id AND l.status = 'completed';
    IF NOT FOUND THEN
        RETURN;  -- backup_integrity said why
    END IF;

    BEGIN
        v_live := format('%I.%I', v_target ->> 'profiles_schema', v_target ->> 'profiles_table')::regclass;
        v_match := migration_backup.key_match_sql(v_copy, v_live, v_target ->> 'key_column', 'c', 't');
        IF v_match IS NULL THEN
            RAISE EXCEPTION 'no key column % in both the copy % and the live table %',
                            v_target ->> 'key_column', v_copy, v_live;
        END IF;
        EXECUTE format(
            'SELECT count(*), jsonb_agg(x.k) FILTER (WHERE x.rn <= 20)
               FROM (SELECT t.%1$I::text AS k, row_number() OVER (ORDER BY t.%1$I::text) AS rn
                       FROM %2$s AS t
                      WHERE NOT EXISTS (SELECT 1 FROM %3$s AS c WHERE %4$s)) AS x',
            v_target ->> 'key_column', v_live, v_copy, v_match)
        INTO v_missing, v_sample;
        RETURN QUERY SELECT 'covers_live_users'::text,
                            CASE WHEN v_missing = 0 THEN 'pass' ELSE 'warn' END,
                            jsonb_build_object('live_users_missing_from_backup', v_missing,
                                               'sample', coalesce(v_sample, '[]'::jsonb));
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'covers_live_users'::text, 'fail'::text,
                            jsonb_build_object('error', SQLERRM,
                                               'table', format('%I.%I', v_target ->> 'profiles_schema',
                                                               v_target ->> 'profiles_table'));
    END;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.get_backup_summary()
RETURNS TABLE (backup_id text, backup_name text, status text, created_at timestamptz,
               profiles_count bigint, sessions_count bigint, policies_count integer, size_bytes bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Every backup, newest first, with the space it takes: its copies (with their TOAST) and
    -- its policy rows.
    SELECT l.backup_id, l.backup_name, l.status, l.created_at, l.profiles_count, l.sessions_count,
           l.policies_count,
           coalesce(pg_catalog.pg_total_relation_size(
                        migration_backup.copy_table(l.profiles_copy)), 0)
         + coalesce(pg_catalog.pg_total_relation_size(
                        migration_backup.copy_table(l.sessions_copy)), 0)
         + coalesce((SELECT sum(pg_catalog.pg_column_size(p.*))
                       FROM migration_backup.rls_policies_backup AS p
                      WHERE p.backup_id = l.backup_id), 0)::bigint
      FROM migration_backup.backup_log AS l
     ORDER BY l.created_at DESC, l.backup_id DESC
$$;

-- ------------------------------------------------ upgrade from version 1 ----

CREATE OR REPLACE FUNCTION migration_backup.convert_jsonb_backup(p_backup_id text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
-- row_data was rendered, and json_text is read back, with these settings (version 1 pinned them)
SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET xmloption = 'content'
SET row_security = off
AS $$
DECLARE
    v_log      migration_backup.backup_log;
    v_old      record;
    v_kind     text;
    v_legacy   text;
    v_live     regclass;
    v_copy     text;
    v_cols     text;
    v_n        bigint;
    v_sum      text;
    v_sums     jsonb := '{}';
BEGIN
    -- Turns backup p_backup_id of version 1 (jsonb rows in user_profiles_jsonb_backup and
    -- user_sessions_jsonb_backup) into typed copies, so the code of version 2 restores it.
    -- First the rows are verified against the counts and checksums version 1 recorded: a
    -- backup that no longer matches is left as it is (and stays unrestorable: its copies are
    -- missing) rather than given fresh checksums that would vouch for it. Each copy has the
    -- live table's type for every column the backed-up rows have (what version 1's restore
    -- wrote back: jsonb_populate_record of the live row type, json columns from json_text);
    -- columns added to the live table since are not in the copy. Returns 'converted', or why not.
    SELECT * INTO v_log FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    IF NOT FOUND OR v_log.profiles_copy IS NOT NULL THEN
        RETURN 'nothing to convert';
    END IF;
    IF v_log.status <> 'completed' THEN
        RETURN 'not completed';
    END IF;

    SELECT (SELECT count(*) FROM migration_backup.user_profiles_jsonb_backup AS b WHERE b.backup_id = p_backup_id) AS pn,
           (SELECT coalesce(sum(hashtextextended(b.row_data::text, 0)), 0)::text
              FROM migration_backup.user_profiles_jsonb_backup AS b WHERE b.backup_id = p_backup_id) AS ps,
           (SELECT count(*) FROM migration_backup.user_sessions_jsonb_backup AS b WHERE b.backup_id = p_backup_id) AS sn,
           (SELECT coalesce(sum(hashtextextended(b.row_data::text, 0)), 0)::text
              FROM migration_backup.user_sessions_jsonb_backup AS b WHERE b.backup_id = p_backup_id) AS ss
      INTO v_old;
    IF (v_old.pn, v_old.ps, v_old.sn, v_old.ss)
       IS DISTINCT FROM (v_log.profiles_count, v_log.profiles_checksum, v_log.sessions_count, v_log.sessions_checksum) THEN
        RAISE WARNING 'backup % of version 1 does not match its recorded checksums; not converted', p_backup_id
            USING DETAIL = format('recorded %s profiles (%s), %s sessions (%s); found %s (%s), %s (%s)',
                                  v_log.profiles_count, v_log.profiles_checksum, v_log.sessions_count,
                                  v_log.sessions_checksum, v_old.pn, v_old.ps, v_old.sn, v_old.ss),
                  HINT = 'It stays listed, not restorable; take a new backup.';
        RETURN 'checksum mismatch';
    END IF;

    FOREACH v_kind IN ARRAY ARRAY['profiles', 'sessions'] LOOP
        CONTINUE WHEN v_kind = 'sessions' AND v_log.target ->> 'sessions_table' IS NULL;
        v_legacy := CASE v_kind WHEN 'profiles' THEN 'migration_backup.user_profiles_jsonb_backup'
                                ELSE 'migration_backup.user_sessions_jsonb_backup' END;
        v_live := pg_catalog.to_regclass(CASE v_kind
            WHEN 'profiles' THEN format('%I.%I', v_log.target ->> 'profiles_schema', v_log.target ->> 'profiles_table')
            ELSE format('%I.%I', v_log.target ->> 'sessions_schema', v_log.target ->> 'sessions_table') END);
        IF v_live IS NULL THEN
            RAISE WARNING 'backup % of version 1: the % table it was taken from is gone; not converted',
                          p_backup_id, v_kind
                USING HINT = 'It stays listed, not restorable.';
            RETURN 'table gone';
        END IF;
        -- each column of the live table that the backed-up rows have, typed as the live column
        EXECUTE format(
            'SELECT string_agg(CASE WHEN j.base IN (''json''::regtype, ''jsonb''::regtype) AND %2$L = ''profiles''
                                    THEN pg_catalog.format(''CASE WHEN src.j ? %%1$L::text THEN (src.j ->> %%1$L::text)::%%2$s ELSE (src.r).%%1$I END AS %%1$I'',
                                                           a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod))
                                    ELSE pg_catalog.format(''(src.r).%%1$I AS %%1$I'', a.attname) END,
                               '', '' ORDER BY a.attnum)
               FROM pg_catalog.pg_attribute AS a
               JOIN pg_catalog.pg_type AS ty ON ty.oid = a.atttypid
               CROSS JOIN LATERAL (SELECT CASE WHEN ty.typtype = ''d'' THEN ty.typbasetype ELSE ty.oid END AS base) AS j
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                AND EXISTS (SELECT 1 FROM %1$s AS b WHERE b.backup_id = $2 AND b.row_data ? a.attname::text)',
            v_legacy, v_kind)
        INTO v_cols USING v_live, p_backup_id;
        v_copy := migration_backup.copy_name(p_backup_id, v_kind);
        EXECUTE format('CREATE TABLE migration_backup.%I AS SELECT %s FROM (SELECT pg_catalog.jsonb_populate_record(NULL::%s, b.row_data) AS r, %s AS j FROM %s AS b WHERE b.backup_id = %L) AS src',
                       v_copy, coalesce(v_cols, '1 AS no_column'), v_live,
                       CASE v_kind WHEN 'profiles' THEN 'b.json_text' ELSE 'NULL::jsonb' END, v_legacy, p_backup_id);
        PERFORM migration_backup.secure_copy(format('migration_backup.%I', v_copy)::regclass);
        SELECT c.row_count, c.checksum INTO v_n, v_sum
          FROM migration_backup.copy_checksum(format('migration_backup.%I', v_copy)::regclass) AS c;
        v_sums := v_sums || jsonb_build_object(v_kind, jsonb_build_array(v_copy, v_n, v_sum));
    END LOOP;

    UPDATE migration_backup.backup_log AS l
       SET profiles_copy = v_sums -> 'profiles' ->> 0,
           profiles_checksum = v_sums -> 'profiles' ->> 2,
           sessions_copy = v_sums -> 'sessions' ->> 0,
           sessions_checksum = coalesce(v_sums -> 'sessions' ->> 2, '0'),
           target = l.target || jsonb_build_object('converted_from_version', 1)
     WHERE l.backup_id = p_backup_id;
    DELETE FROM migration_backup.user_profiles_jsonb_backup AS b WHERE b.backup_id = p_backup_id;
    DELETE FROM migration_backup.user_sessions_jsonb_backup AS b WHERE b.backup_id = p_backup_id;
    RETURN 'converted';
END
$$;

-- The upgrade itself: every backup of version 1 converted (or left, with a warning saying
-- why), the old tables dropped once nothing is left in them, the views naming the new copies.
DO $upgrade$
DECLARE
    v_backup text;
    v_result text;
BEGIN
    IF pg_catalog.to_regclass('migration_backup.user_profiles_jsonb_backup') IS NOT NULL THEN
        IF pg_catalog.to_regclass('migration_backup.user_sessions_jsonb_backup') IS NULL THEN
            CREATE TABLE migration_backup.user_sessions_jsonb_backup (
                backup_id text NOT NULL, session_key text NOT NULL, user_key text, row_data jsonb NOT NULL);
        END IF;
        FOR v_backup IN SELECT l.backup_id FROM migration_backup.backup_log AS l
                         WHERE l.profiles_copy IS NULL ORDER BY l.created_at LOOP
            v_result := migration_backup.convert_jsonb_backup(v_backup);
            RAISE NOTICE 'backup % of version 1: %', v_backup, v_result;
        END LOOP;
        IF NOT EXISTS (SELECT 1 FROM migration_backup.user_profiles_jsonb_backup)
           AND NOT EXISTS (SELECT 1 FROM migration_backup.user_sessions_jsonb_backup) THEN
            DROP TABLE migration_backup.user_profiles_jsonb_backup;
            DROP TABLE migration_backup.user_sessions_jsonb_backup;
        END IF;
        PERFORM migration_backup.refresh_backup_views();
    END IF;
    INSERT INTO migration_control.infrastructure_version AS v (singleton, version, backup_format)
    VALUES (true, 2, 'typed')
    ON CONFLICT (singleton) DO UPDATE SET version = excluded.version, backup_format = excluded.backup_format,
                                          upgraded_at = clock_timestamp()
     WHERE v.version IS DISTINCT FROM excluded.version;
END
$upgrade$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_backup FROM PUBLIC;
