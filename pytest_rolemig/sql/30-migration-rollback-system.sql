-- Migration rollback system: puts the database back the way a backup found it.
--
-- Provides (schema migration_backup):
--   * table rollback_log (one row per rollback attempt, kept even when it fails);
--   * execute_rollback   -- revert mode: undoes what the migration changed and nothing else
--                           (role compare-and-swap, role CHECK constraints, policies, RLS flags);
--   * emergency_rollback -- full restore from the backup alone (every column of every
--                           backed-up profile, constraints, policies; never sessions), for a
--                           half-done migration or broken tracking tables;
--   * validate_rollback_success (its checks in validate_rollback_roles, _rows, _sessions,
--     _ddl), list_available_backups;
--   * helpers: backup_intact, column_pairs, schema_changes, column_list, role_conflicts,
--     lock_restore_tables, restore_role_checks, restore_policies, restore_source, restore_write,
--     restore_revert_roles, restore_emergency_rows, reinsert_missing_rows, perform_rollback,
--     missing_from_live.
-- Profile and session rows are read from the backup's typed copies (backup_log.profiles_copy,
-- sessions_copy), joined to the live tables by key; values are compared by their binary image
-- (record_image_eq: exact, and possible for json, which has no equality operator). A column
-- added, dropped or retyped since the backup is reported (rollback_log.schema_changes, the
-- profiles_content check), not a crash.
-- Depends on: migration-logging-system.sql (schemas, target_config, role_mapping, tracking
--   tables) and comprehensive-backup-system.sql (backup_log and the copies, describe_policies,
--   role_check_constraints, copy_table, key_match_sql, backup_integrity,
--   validate_backup_completeness); at run time on migration_control.online_backoff
--   (online-migration.sql) for the lock retries.
-- The target table and columns are read from the backup's own copy of
-- migration_control.target_config (backup_log.target), so a restore goes back into the table
-- the backup was taken from.
-- Idempotent: safe to run twice; contains no psql meta-commands.

CREATE TABLE IF NOT EXISTS migration_backup.rollback_log (
    rollback_id       text PRIMARY KEY,
    backup_id         text NOT NULL,
    reason            text,
    mode              text NOT NULL CHECK (mode IN ('revert', 'emergency')),
    status            text NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz,
    profiles_restored bigint,
    sessions_restored bigint,
    policies_restored integer,
    conflicts         jsonb NOT NULL DEFAULT '[]',
    error             text
);
CREATE INDEX IF NOT EXISTS rollback_log_backup_idx ON migration_backup.rollback_log (backup_id);
-- columns added, dropped or retyped in the live table since the backup (schema_changes); {} when none
ALTER TABLE migration_backup.rollback_log ADD COLUMN IF NOT EXISTS schema_changes jsonb NOT NULL DEFAULT '{}';

-- ------------------------------------------------------------ helpers ----

CREATE OR REPLACE FUNCTION migration_backup.backup_intact(p_backup_id text)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- True when the backup is completed and its copies still match the counts and checksums
    -- recorded when it was taken (backup_integrity): the minimum a restore needs. Live data is
    -- not looked at.
    SELECT coalesce(bool_and(v.status <> 'fail'), false)
      FROM migration_backup.backup_integrity(p_backup_id) AS v
$$;

CREATE OR REPLACE FUNCTION migration_backup.column_pairs(p_copy regclass, p_live regclass)
RETURNS TABLE (column_name text, in_copy boolean, in_live boolean, same_type boolean, generated boolean,
               identity_always boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The columns of a backup copy and of the live table it was taken from, matched by name,
    -- in the live table's order (columns only the copy has last): whether each side has it,
    -- whether the types (with modifiers) agree, and what the live column is (generated,
    -- identity GENERATED ALWAYS). A restore writes the columns both have with the same type.
    SELECT coalesce(t.attname, c.attname)::text, c.attname IS NOT NULL, t.attname IS NOT NULL,
           coalesce(c.atttypid = t.atttypid AND c.atttypmod = t.atttypmod, false),
           coalesce(t.attgenerated <> '', false), coalesce(t.attidentity = 'a', false)
      FROM (SELECT a.* FROM pg_catalog.pg_attribute AS a
             WHERE a.attrelid = p_copy AND a.attnum > 0 AND NOT a.attisdropped) AS c
      FULL JOIN (SELECT a.* FROM pg_catalog.pg_attribute AS a
                  WHERE a.attrelid = p_live AND a.attnum > 0 AND NOT a.attisdropped) AS t
        ON t.attname = c.attname
     ORDER BY t.attnum NULLS LAST, c.attnum
$$;

CREATE OR REPLACE FUNCTION migration_backup.schema_changes(p_copy regclass, p_live regclass)
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- How the live table's columns changed since the backup: added (kept as they are by a
    -- restore), dropped (their backed-up values cannot go back), type changed (not restored).
    -- {} when the columns agree.
    SELECT jsonb_strip_nulls(jsonb_build_object(
               'added_after_backup', jsonb_agg(p.column_name) FILTER (WHERE p.in_live AND NOT p.in_copy),
               'dropped_after_backup', jsonb_agg(p.column_name) FILTER (WHERE p.in_copy AND NOT p.in_live),
               'type_changed', jsonb_agg(p.column_name) FILTER (WHERE p.in_copy AND p.in_live AND NOT p.same_type)))
      FROM migration_backup.column_pairs(p_copy, p_live) AS p
$$;

CREATE OR REPLACE FUNCTION migration_backup.column_list(p_columns text[], p_alias text DEFAULT NULL)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Columns p_columns as the comma-separated list of quoted names the restore and its checks
    -- build their statements from, each qualified by alias p_alias when given (t.a, t.b), in
    -- the array's order; NULL for none.
    SELECT string_agg(CASE WHEN p_alias IS NULL THEN format('%I', x) ELSE format('%s.%I', p_alias, x) END, ', ')
      FROM unnest(p_columns) AS x
$$;

CREATE OR REPLACE FUNCTION migration_backup.migration_base(
    OUT backup_id text, OUT run_id text, OUT first_moved_at timestamptz)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The migration a rollback undoes: the first committed batch that moved users since the
    -- newest completed rollback, with the backup that batch ran on (recorded in its details)
    -- and when it started. A backup taken after first_moved_at already holds migrated roles:
    -- restoring it cannot undo the migration. All NULL when no such batch exists.
    SELECT b.details ->> 'backup_id', b.run_id, b.started_at
      FROM migration_tracking.migration_batch AS b
     WHERE b.status = 'completed' AND b.details ->> 'phase' = 'migrate'
       AND coalesce((b.details ->> 'migrated')::bigint, 0) > 0
       AND b.started_at > (SELECT coalesce(max(r.started_at), '-infinity')
                             FROM migration_backup.rollback_log AS r WHERE r.status = 'completed')
     ORDER BY b.started_at, b.batch_id
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION migration_backup.refuse_backup_after_migration(p_backup_id text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_base    record;
    v_created timestamptz;
BEGIN
    -- Raises when backup p_backup_id was taken after the migration (migration_base) started
    -- moving users: it holds their migrated roles, so restoring it cannot undo the migration,
    -- and a rollback to it would report success while users keep their new roles.
    SELECT * INTO v_base FROM migration_backup.migration_base();
    SELECT l.created_at INTO v_created FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    IF v_created > v_base.first_moved_at THEN
        RAISE EXCEPTION 'backup % was taken after the migration started moving users; a rollback to it would not undo the migration',
                        p_backup_id
            USING DETAIL = format('Migration run %s started moving users at %s from backup %s; backup %s was '
                                  'taken at %s and holds their migrated roles. Nothing was changed.',
                                  v_base.run_id, v_base.first_moved_at, v_base.backup_id, p_backup_id, v_created),
                  HINT = format('roll back to backup %s, the one the migration started from', v_base.backup_id);
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.role_conflicts(p_backup_id text, p_include_deleted boolean)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_t      jsonb;
    v_copy   regclass;
    v_rel    regclass;
    v_result jsonb;
BEGIN
    -- Backed-up users whose current role is neither their backed-up role nor what the migration
    -- writes for it (the mapping now, or the mapping stored with the backup): somebody else
    -- changed them after the backup. Optionally also the backed-up users that no longer exist
    -- (but for the rows the migration merged away: their latest log entry is 'merged').
    SELECT l.target, migration_backup.copy_table(l.profiles_copy)
      INTO v_t, v_copy
      FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    v_rel := format('%I.%I', v_t ->> 'profiles_schema', v_t ->> 'profiles_table')::regclass;

    EXECUTE format(
        'SELECT coalesce(jsonb_agg(jsonb_build_object(
                    ''user_key'', c.%1$I::text, ''backup_role'', c.%2$I::text, ''current_role'', t.%2$I::text,
                    ''reason'', CASE WHEN t.%1$I IS NULL THEN ''deleted after backup''
                                     ELSE ''role changed after backup'' END) ORDER BY c.%1$I::text), ''[]'')
           FROM %3$s AS c
           LEFT JOIN %4$s AS t ON %5$s
           -- what the migration writes for the backed-up role: the mapping stored with the
           -- backup or the mapping now; hashed once, not looked up per row
           LEFT JOIN (SELECT e.key AS legacy, e.value AS migrated
                        FROM pg_catalog.jsonb_each_text($1 -> ''mapping''::text) AS e
                      UNION
                      SELECT m.legacy_role, m.new_role FROM migration_control.role_mapping AS m) AS o
             ON o.legacy = c.%2$I::text AND o.migrated = t.%2$I::text
          WHERE CASE WHEN t.%1$I IS NULL THEN $2 AND c.%1$I::text NOT IN (
                                 SELECT g.user_key
                                   FROM (SELECT DISTINCT ON (m.user_key) m.user_key, m.status
                                           FROM migration_tracking.migration_log AS m
                                          WHERE m.user_key IN (SELECT d.user_key FROM migration_tracking.migration_log AS d
                                                                WHERE d.status = ''merged'')
                                          ORDER BY m.user_key, m.log_id DESC) AS g
                                  WHERE g.status = ''merged'')
                     ELSE t.%2$I::text IS DISTINCT FROM c.%2$I::text AND o.legacy IS NULL END',
        v_t ->> 'key_column', v_t ->> 'role_column', v_copy, v_rel,
        migration_backup.key_match_sql(v_copy, v_rel, v_t ->> 'key_column', 'c', 't'))
    INTO v_result
    USING v_t, p_include_deleted;
    RETURN v_result;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.restore_role_checks(p_backup_id text, p_phase text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_t       jsonb;
    v_con     record;
    v_expr    text;
    v_extra   text[];
    v_changes integer := 0;
BEGIN
    -- Puts the CHECK constraints on the role column back to their backed-up definitions, in two
    -- phases around the data restore: 'drop' removes every current role check that is not in
    -- the backup with the same name and definition (e.g. the widened or narrowed one), so the
    -- restored roles are not rejected; 'add' re-creates the backed-up ones that are missing.
    -- A backed-up check that rows changed by the application after the backup now violate (the
    -- rollback's conflicts, which it leaves as they are) is added accepting the roles those rows
    -- hold as well, named in a WARNING: added NOT VALID instead, it rejected every later write
    -- to those rows, whatever column the application changed. Only when even that fails is it
    -- added NOT VALID.
    IF p_phase NOT IN ('drop', 'add') THEN
        RAISE EXCEPTION 'unknown phase % for restore_role_checks', quote_literal(p_phase)
            USING DETAIL = format('backup %s', p_backup_id), HINT = 'Use ''drop'' or ''add''.';
    END IF;
    SELECT l.target INTO v_t FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;

    IF p_phase = 'drop' THEN
        FOR v_con IN
            SELECT c.name
              FROM migration_backup.role_check_constraints(v_t ->> 'profiles_schema', v_t ->> 'profiles_table',
                                                           v_t ->> 'role_column') AS c
             WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(v_t -> 'role_checks') AS k(j)
                                WHERE k.j ->> 'name' = c.name AND k.j ->> 'definition' = c.definition)
        LOOP
            EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I',
                           v_t ->> 'profiles_schema', v_t ->> 'profiles_table', v_con.name);
            v_changes := v_changes + 1;
        END LOOP;
    ELSE
        FOR v_con IN
            SELECT k.j ->> 'name' AS name, k.j ->> 'definition' AS definition
              FROM jsonb_array_elements(v_t -> 'role_checks') AS k(j)
             WHERE NOT EXISTS (SELECT 1
                                 FROM migration_backup.role_check_constraints(
                                          v_t ->> 'profiles_schema', v_t ->> 'profiles_table',
                                          v_t ->> 'role_column') AS c
                                WHERE c.name = k.j ->> 'name')
        LOOP
            BEGIN
                EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s',
                               v_t ->> 'profiles_schema', v_t ->> 'profiles_table', v_con.name, v_con.definition);
            EXCEPTION WHEN check_violation THEN
                v_expr := substring(v_con.definition FROM '^CHECK \((.*)\)( NOT VALID)?$');
                EXECUTE format('SELECT array_agg(DISTINCT t.%1$I::text ORDER BY t.%1$I::text) FROM %2$I.%3$I AS t
                                 WHERE NOT (%4$s)',
                               v_t ->> 'role_column', v_t ->> 'profiles_schema', v_t ->> 'profiles_table', v_expr)
                INTO v_extra;
                BEGIN
                    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK ((%s) OR (%I)::text = ANY (%L::text[]))',
                                   v_t ->> 'profiles_schema', v_t ->> 'profiles_table', v_con.name, v_expr,
                                   v_t ->> 'role_column', v_extra);
                    RAISE WARNING 'role constraint % restored accepting also %: rows changed after backup % hold them',
                                  v_con.name, array_to_string(v_extra, ', '), p_backup_id
                        USING HINT = 'See the conflicts of the rollback; put the backed-up definition back once they are fixed.';
                EXCEPTION WHEN check_violation OR syntax_error OR undefined_column OR undefined_function THEN
                    EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s NOT VALID',
                                   v_t ->> 'profiles_schema', v_t ->> 'profiles_table', v_con.name, v_con.definition);
                    RAISE WARNING 'role constraint % restored NOT VALID: rows changed after backup % violate it',
                                  v_con.name, p_backup_id
                        USING HINT = 'See the conflicts of the rollback; VALIDATE CONSTRAINT once they are fixed.';
                END;
            END;
            v_changes := v_changes + 1;
        END LOOP;
    END IF;
    RETURN v_changes;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.restore_policies(p_backup_id text, p_rollback_id text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_t       jsonb;
    v_created timestamptz;
    v_p       record;
    v_roles   text;
    v_changes integer := 0;
BEGIN
    -- Restores the row-level security of the migrated tables as backed up: each backed-up
    -- policy that differs is altered back (ALTER POLICY for roles / USING / WITH CHECK; drop and
    -- re-create when the command, permissiveness or a removed clause cannot be altered) or
    -- re-created when missing; policies the migration created after the backup (logged as
    -- 'create') are dropped; RLS enabled/forced flags are reset. Every policy change is logged
    -- in migration_tracking.rls_policy_changes under the rollback id. Loops over policies only.
    SELECT l.target, l.created_at INTO v_t, v_created
      FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;

    FOR v_p IN
        SELECT b.schema_name, b.table_name, b.policy_name, b.permissive, b.command, b.roles,
               b.using_expr, b.check_expr, c.policy_name AS cur_name, c.permissive AS cur_permissive,
               c.command AS cur_command, c.using_expr AS cur_using, c.check_expr AS cur_check
          FROM migration_backup.rls_policies_backup AS b
          LEFT JOIN migration_backup.describe_policies() AS c
            ON c.schema_name = b.schema_name AND c.table_name = b.table_name AND c.policy_name = b.policy_name
         WHERE b.backup_id = p_backup_id
           AND (c.policy_name IS NULL OR c.permissive <> b.permissive OR c.command <> b.command
                OR c.roles <> b.roles OR c.using_expr IS DISTINCT FROM b.using_expr
                OR c.check_expr IS DISTINCT FROM b.check_expr)
         ORDER BY b.schema_name, b.table_name, b.policy_name
    LOOP
        SELECT string_agg(CASE WHEN r = 'public' THEN 'PUBLIC' ELSE format('%I', r) END, ', ')
          INTO v_roles FROM unnest(v_p.roles) AS r;
        IF v_p.cur_name IS NOT NULL
           AND v_p.cur_permissive = v_p.permissive AND v_p.cur_command = v_p.command
           AND NOT (v_p.using_expr IS NULL AND v_p.cur_using IS NOT NULL)
           AND NOT (v_p.check_expr IS NULL AND v_p.cur_check IS NOT NULL) THEN
            EXECUTE format('ALTER POLICY %I ON %I.%I TO %s', v_p.policy_name, v_p.schema_name, v_p.table_name,
                           v_roles)
                    || CASE WHEN v_p.using_expr IS NOT NULL THEN format(' USING (%s)', v_p.using_expr) ELSE '' END
                    || CASE WHEN v_p.check_expr IS NOT NULL THEN format(' WITH CHECK (%s)', v_p.check_expr) ELSE '' END;
        ELSE
            IF v_p.cur_name IS NOT NULL THEN
                EXECUTE format('DROP POLICY %I ON %I.%I', v_p.policy_name, v_p.schema_name, v_p.table_name);
            END IF;
            EXECUTE format('CREATE POLICY %I ON %I.%I AS %s FOR %s TO %s', v_p.policy_name, v_p.schema_name,
                           v_p.table_name, v_p.permissive, v_p.command, v_roles)
                    || CASE WHEN v_p.using_expr IS NOT NULL THEN format(' USING (%s)', v_p.using_expr) ELSE '' END
                    || CASE WHEN v_p.check_expr IS NOT NULL THEN format(' WITH CHECK (%s)', v_p.check_expr) ELSE '' END;
        END IF;
        INSERT INTO migration_tracking.rls_policy_changes
               (run_id, schema_name, table_name, policy_name, change_type, old_using, new_using, old_check, new_check)
        VALUES (p_rollback_id, v_p.schema_name, v_p.table_name, v_p.policy_name, 'restore',
                v_p.cur_using, v_p.using_expr, v_p.cur_check, v_p.check_expr);
        v_changes := v_changes + 1;
    END LOOP;

    FOR v_p IN
        SELECT DISTINCT c.schema_name, c.table_name, c.policy_name, c.using_expr, c.check_expr
          FROM migration_tracking.rls_policy_changes AS ch
          JOIN migration_backup.describe_policies() AS c
            ON c.schema_name = ch.schema_name AND c.table_name = ch.table_name AND c.policy_name = ch.policy_name
         WHERE ch.change_type = 'create' AND ch.changed_at >= v_created
           AND NOT EXISTS (SELECT 1 FROM migration_backup.rls_policies_backup AS b
                            WHERE b.backup_id = p_backup_id AND b.schema_name = c.schema_name
                              AND b.table_name = c.table_name AND b.policy_name = c.policy_name)
         ORDER BY 1, 2, 3
    LOOP
        EXECUTE format('DROP POLICY %I ON %I.%I', v_p.policy_name, v_p.schema_name, v_p.table_name);
        INSERT INTO migration_tracking.rls_policy_changes
               (run_id, schema_name, table_name, policy_name, change_type, old_using, new_using, old_check, new_check)
        VALUES (p_rollback_id, v_p.schema_name, v_p.table_name, v_p.policy_name, 'drop',
                v_p.using_expr, NULL, v_p.check_expr, NULL);
        v_changes := v_changes + 1;
    END LOOP;

    FOR v_p IN
        SELECT r.j ->> 'schema' AS schema_name, r.j ->> 'table' AS table_name,
               (r.j ->> 'enabled')::boolean AS enabled, (r.j ->> 'forced')::boolean AS forced,
               c.relrowsecurity, c.relforcerowsecurity
          FROM jsonb_array_elements(v_t -> 'rls_tables') AS r(j)
          JOIN pg_catalog.pg_namespace AS n ON n.nspname = r.j ->> 'schema'
          JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = r.j ->> 'table'
         WHERE c.relrowsecurity IS DISTINCT FROM (r.j ->> 'enabled')::boolean
            OR c.relforcerowsecurity IS DISTINCT FROM (r.j ->> 'forced')::boolean
    LOOP
        EXECUTE format('ALTER TABLE %I.%I %s ROW LEVEL SECURITY, %s ROW LEVEL SECURITY',
                       v_p.schema_name, v_p.table_name,
                       CASE WHEN v_p.enabled THEN 'ENABLE' ELSE 'DISABLE' END,
                       CASE WHEN v_p.forced THEN 'FORCE' ELSE 'NO FORCE' END);
    END LOOP;

    RETURN v_changes;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.lock_restore_tables(
    p_backup_id text,
    p_lock_timeout_ms integer DEFAULT 100,
    p_max_retries integer DEFAULT 50
) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_t        jsonb;
    v_created  timestamptz;
    v_tables   text[];
    v_list     text;
    v_deadlock integer;
    v_timeout  integer;
    v_saved    text := current_setting('lock_timeout');
    v_attempt  integer := 0;
    v_busy     text;
BEGIN
    -- Takes, in one LOCK TABLE statement, the ACCESS EXCLUSIVE locks that the restore's DDL
    -- needs: every table whose role CHECK constraints, policies or RLS flags differ from the
    -- backup (or that has a policy the migration created), plus the profiles table, whose rows
    -- the restore then writes without waiting for a row lock. Taking them one DDL statement at
    -- a time deadlocks with the application (the restore holds the profiles table and waits
    -- for support_tickets, where an INSERT holds ROW EXCLUSIVE and checks its foreign key /
    -- policy against the profiles table). So the statement runs in a subtransaction under a
    -- lock_timeout short enough that every wait it makes while already holding a lock ends
    -- before any other session's deadlock_timeout; on lock_not_available the subtransaction
    -- releases what it took, and it is retried after migration_control.online_backoff.
    -- Tables in (schema, table) order. Returns the number of retries; after p_max_retries
    -- raises lock_not_available naming the tables and the sessions that held them.
    SELECT l.target, l.created_at INTO v_t, v_created
      FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;

    WITH ddl (schema_name, table_name) AS (
        SELECT v_t ->> 'profiles_schema', v_t ->> 'profiles_table'   -- role CHECKs to drop or add
         WHERE EXISTS ((SELECT c.name, c.definition
                          FROM migration_backup.role_check_constraints(v_t ->> 'profiles_schema',
                                   v_t ->> 'profiles_table', v_t ->> 'role_column') AS c
                        EXCEPT
                        SELECT w.j ->> 'name', w.j ->> 'definition'
                          FROM jsonb_array_elements(v_t -> 'role_checks') AS w(j))
                       UNION ALL
                       (SELECT w.j ->> 'name', w.j ->> 'definition'
                          FROM jsonb_array_elements(v_t -> 'role_checks') AS w(j)
                        EXCEPT
                        SELECT c.name, c.definition
                          FROM migration_backup.role_check_constraints(v_t ->> 'profiles_schema',
                                   v_t ->> 'profiles_table', v_t ->> 'role_column') AS c))
        UNION
        SELECT d.schema_name, d.table_name                          -- backed-up policies missing or changed
          FROM (SELECT b.schema_name, b.table_name, b.policy_name, b.permissive, b.command, b.roles,
                       b.using_expr, b.check_expr
                  FROM migration_backup.rls_policies_backup AS b
                 WHERE b.backup_id = p_backup_id
                EXCEPT
                SELECT c.schema_name, c.table_name, c.policy_name, c.permissive, c.command, c.roles,
                       c.using_expr, c.check_expr
                  FROM migration_backup.describe_policies() AS c) AS d
        UNION
        SELECT ch.schema_name, ch.table_name    -- policies created since the backup (a superset of
          FROM migration_tracking.rls_policy_changes AS ch   -- what restore_policies drops)
         WHERE ch.change_type = 'create' AND ch.changed_at >= v_created
        UNION
        SELECT r.j ->> 'schema', r.j ->> 'table'                    -- RLS flags
          FROM jsonb_array_elements(v_t -> 'rls_tables') AS r(j)
          JOIN pg_catalog.pg_namespace AS n ON n.nspname = r.j ->> 'schema'
          JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = r.j ->> 'table'
         WHERE c.relrowsecurity IS DISTINCT FROM (r.j ->> 'enabled')::boolean
            OR c.relforcerowsecurity IS DISTINCT FROM (r.j ->> 'forced')::boolean)
    SELECT array_agg(format('%I.%I', x.schema_name, x.table_name) ORDER BY x.schema_name, x.table_name)
      INTO v_tables
      FROM (SELECT ddl.schema_name, ddl.table_name FROM ddl
            UNION  -- and the profiles table whenever there is DDL: its rows are written under the locks
            SELECT v_t ->> 'profiles_schema', v_t ->> 'profiles_table' WHERE EXISTS (SELECT 1 FROM ddl)) AS x
     WHERE to_regclass(format('%I.%I', x.schema_name, x.table_name)) IS NOT NULL;  -- a missing one fails
                                                                                 -- in its own DDL step
    IF v_tables IS NULL THEN
        RETURN 0;  -- no DDL to do: only row-level work, which takes no table lock
    END IF;
    v_list := array_to_string(v_tables, ', ');

    -- lock_timeout applies to each table the statement waits for: (n - 1) waits while holding a
    -- lock must stay under half the deadlock_timeout of the sessions that queue behind it.
    SELECT s.setting::integer INTO v_deadlock FROM pg_catalog.pg_settings AS s WHERE s.name = 'deadlock_timeout';
    v_timeout := greatest(1, least(p_lock_timeout_ms, v_deadlock / (2 * cardinality(v_tables))));
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', v_timeout || 'ms', true);
            EXECUTE 'LOCK TABLE ' || v_list || ' IN ACCESS EXCLUSIVE MODE';
            PERFORM set_config('lock_timeout', v_saved, true);
            RETURN v_attempt;
        EXCEPTION WHEN lock_not_available THEN
            v_attempt := v_attempt + 1;
        END;
        IF v_attempt > p_max_retries THEN
            SELECT string_agg(DISTINCT format('%s (pid %s, %s)', l.relation::regclass, l.pid, l.mode), ', ')
              INTO v_busy
              FROM pg_catalog.pg_locks AS l
             WHERE l.granted AND l.pid <> pg_backend_pid() AND l.locktype = 'relation'
               AND l.relation = ANY (v_tables::regclass[]);
            RAISE EXCEPTION 'could not lock % for the rollback of backup % after % lock timeouts of % ms',
                            v_list, p_backup_id, v_attempt, v_timeout
                USING ERRCODE = 'lock_not_available',
                      DETAIL = format('Busy: %s. Nothing was changed.', coalesce(v_busy, 'no lock held any more')),
                      HINT = 'Retry when the application is quieter, or end the sessions holding these tables.';
        END IF;
        RAISE NOTICE 'rollback of backup %: lock timeout (% ms) on %, retry %', p_backup_id, v_timeout, v_list, v_attempt;
        PERFORM migration_control.online_backoff(v_attempt);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.restore_source(
    p_backup_id text, p_rollback_id text, p_target jsonb, p_copy_name text,
    OUT live_rel regclass, OUT copy_rel regclass, OUT role_type text, OUT key_match text,
    OUT changes jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_key  text := p_target ->> 'key_column';
    v_role text := p_target ->> 'role_column';
BEGIN
    -- What a restore of backup p_backup_id (rollback p_rollback_id) reads and writes, checked
    -- before anything is written: the live table (target p_target), the typed copy p_copy_name,
    -- the live role column's type, the key join "copy row = live row" (aliases c and t) and the
    -- columns changed since the backup (schema_changes, also raised as a WARNING). Raises when
    -- the copy, the key or the role column is gone: perform_rollback's inner block records it.
    live_rel := format('%I.%I', p_target ->> 'profiles_schema', p_target ->> 'profiles_table')::regclass;
    copy_rel := migration_backup.copy_table(p_copy_name);
    IF copy_rel IS NULL THEN
        RAISE EXCEPTION 'backup % has no profiles copy', p_backup_id
            USING DETAIL = format('migration_backup.%I is missing.', coalesce(p_copy_name, '(none)')),
                  HINT = 'Restore from another backup (list_available_backups() shows which are restorable).';
    END IF;
    SELECT format_type(a.atttypid, a.atttypmod) INTO role_type
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = live_rel AND a.attname = v_role AND a.attnum > 0 AND NOT a.attisdropped;
    key_match := migration_backup.key_match_sql(copy_rel, live_rel, v_key, 'c', 't');
    IF key_match IS NULL OR role_type IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                       WHERE a.attrelid = copy_rel AND a.attname = v_role AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'table % has no column % or %', live_rel, v_key, v_role
            USING DETAIL = format('Backup %s was taken with key column %s and role column %s.',
                                  p_backup_id, v_key, v_role),
                  HINT = 'Restore the table definition first; a rollback restores data, not columns.';
    END IF;
    changes := migration_backup.schema_changes(copy_rel, live_rel);
    IF changes <> '{}' THEN
        RAISE WARNING 'rollback %: the columns of % changed since backup %: %', p_rollback_id, live_rel,
                      p_backup_id, changes
            USING DETAIL = 'Added columns keep their values; dropped or retyped ones are not restored.',
                  HINT = 'See migration_backup.rollback_log.schema_changes.';
    END IF;
END
$$;

DROP FUNCTION IF EXISTS migration_backup.restore_write(text, text, text, text, jsonb);
CREATE OR REPLACE FUNCTION migration_backup.restore_write(
    p_ctes text, p_app_path text, p_backup_id text, p_rollback_id text, p_message text, p_target jsonb DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_count bigint;
    v_sql   text;
    -- the last CTE of each restore statement: a 'rolled_back' migration_log row for every
    -- user in CTE "changed" (user_key, old_role, new_role) whose role the statement changed,
    -- filed under the rollback that wrote it (batch_id = $4, the rollback_log id); $2 = the
    -- message. Straight from the statement's RETURNING: no look at the rest of the log. (Each
    -- row used to go into the batch of the user's latest entry: finding it was a hashed pass
    -- over the whole log, a third of a rollback's time at 1,000,000 users.)
    v_log_changed text := 'logged AS (
         INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status, message)
         SELECT $4, c.user_key, c.old_role, c.new_role, ''rolled_back'', $2
           FROM changed AS c
          WHERE c.old_role IS DISTINCT FROM c.new_role
         RETURNING 1)';
BEGIN
    -- Runs one statement of a restore that writes the profiles and returns how many rows it
    -- wrote: the CTEs p_ctes, the last of them "changed" (the rows written), then the log of
    -- the changed roles; $1 = p_backup_id, $2 = p_message (the log message), $3 = p_target,
    -- $4 = p_rollback_id.
    -- It fires the application's triggers, which resolve names through the current
    -- search_path: so it runs under the application's (p_app_path, see
    -- migration_tracking.application_search_path), set just before it and pinned back right
    -- after; an error rolls back the caller's subtransaction, which restores the pinned path
    -- too. Its text is built under the pinned path (regclass names come out qualified) and
    -- must not depend on the other: tables and functions are schema-qualified; types and
    -- operators, applied to operands of exact built-in types (a bare literal next to jsonb
    -- would be read as jsonb and find an application's jsonb operator: hence the ::text),
    -- resolve in pg_catalog first, since a path that does not name pg_catalog searches it
    -- first (a path naming it after the application's schemas is the application's choice).
    v_sql := format('WITH %s,
                     %s
                     SELECT pg_catalog.count(*) FROM changed', p_ctes, v_log_changed);
    PERFORM pg_catalog.set_config('search_path', p_app_path, true);
    EXECUTE v_sql INTO v_count USING p_backup_id, p_message, p_target, p_rollback_id;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    RETURN v_count;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.restore_revert_roles(
    p_backup_id text, p_rollback_id text, p_target jsonb, p_rel regclass, p_copy regclass,
    p_role_type text, p_match text, p_app_path text
) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The revert's role write, one statement (restore_write): a compare-and-swap of the role
    -- column of every live row p_rel (joined to copy p_copy by p_match) whose role is what the
    -- migration writes for its backed-up role (the mapping stored with the backup in p_target,
    -- or the mapping now: o, a few rows) back to the backed-up role. Returns how many rows it
    -- changed. One join of copy and live table, which the planner can hash: the role the row
    -- held (the log's old_role) is the o.migrated it matched, so the UPDATE needs no second
    -- look at the live row (a candidate list joined back by key cost an index probe per user).
    SELECT migration_backup.restore_write(format(
        'changed AS (
             UPDATE %5$s AS t SET %2$I = c.%2$I::text::%3$s
               FROM %4$s AS c
               JOIN (SELECT e.key AS legacy, e.value AS migrated
                       FROM pg_catalog.jsonb_each_text($3 -> ''mapping''::text) AS e
                     UNION
                     SELECT m.legacy_role, m.new_role FROM migration_control.role_mapping AS m) AS o
                 ON o.legacy = c.%2$I::text
              WHERE %6$s AND t.%2$I::text = o.migrated AND t.%2$I::text IS DISTINCT FROM c.%2$I::text
             RETURNING c.%1$I::text AS user_key, o.migrated AS old_role, c.%2$I::text AS new_role)',
        p_target ->> 'key_column', p_target ->> 'role_column', p_role_type, p_copy, p_rel, p_match),
        p_app_path, p_backup_id, p_rollback_id, 'rollback ' || p_rollback_id, p_target)
$$;

CREATE OR REPLACE FUNCTION migration_backup.restore_emergency_rows(
    p_backup_id text, p_rollback_id text, p_target jsonb, p_rel regclass, p_copy regclass,
    p_match text, p_cols text[], p_set_cols text[], p_app_path text
) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The emergency's row write, one statement (restore_write): every live row p_rel whose
    -- restorable columns p_cols differ from copy p_copy (binary images) gets columns
    -- p_set_cols back as the copy has them. Returns how many rows it changed.
    SELECT migration_backup.restore_write(format(
        'changed AS (
             UPDATE %1$s AS t SET (%2$s) = ROW(%3$s)
               FROM %4$s AS c
               JOIN %1$s AS cur ON %5$s
              WHERE %6$s AND NOT pg_catalog.record_image_eq(ROW(%7$s), ROW(%8$s))
             RETURNING t.%9$I::text AS user_key, cur.%10$I::text AS old_role, t.%10$I::text AS new_role)',
        p_rel,
        migration_backup.column_list(p_set_cols),
        migration_backup.column_list(p_set_cols, 'c'),
        p_copy,
        migration_backup.key_match_sql(p_copy, p_rel, p_target ->> 'key_column', 'c', 'cur'),
        p_match,
        migration_backup.column_list(p_cols, 't'),
        migration_backup.column_list(p_cols, 'c'),
        p_target ->> 'key_column', p_target ->> 'role_column'),
        p_app_path, p_backup_id, p_rollback_id, 'emergency rollback ' || p_rollback_id)
$$;

CREATE OR REPLACE FUNCTION migration_backup.reinsert_missing_rows(
    p_backup_id text, p_rollback_id text, p_mode text, p_target jsonb, p_rel regclass, p_copy regclass,
    p_match text, p_cols text[], p_app_path text
) RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Backed-up rows missing from the live table go back in, as the copy has them (columns
    -- p_cols), in one statement (restore_write), the mode choosing the predicate: in an
    -- emergency every one; in a revert only those the migration deleted as merged duplicates
    -- (their latest log entry is 'merged', see migrate_batch), which the caller runs after the
    -- role UPDATE gave their kept twin its backed-up role back (else the unique index would
    -- collide). Returns how many rows it inserted.
    SELECT migration_backup.restore_write(format(
        'missing AS (
             SELECT c.* FROM %1$s AS c WHERE NOT EXISTS (SELECT 1 FROM %2$s AS t WHERE %3$s)),
         changed AS (
             INSERT INTO %2$s (%4$s) OVERRIDING SYSTEM VALUE
             SELECT %5$s FROM missing AS c
              WHERE %6$s
             RETURNING %7$I::text AS user_key, NULL::text AS old_role, %8$I::text AS new_role)',
        p_copy, p_rel, p_match,
        migration_backup.column_list(p_cols),
        migration_backup.column_list(p_cols, 'c'),
        CASE p_mode
            WHEN 'emergency' THEN 'true'
            ELSE format('c.%I::text IN (SELECT g.user_key
                             FROM (SELECT DISTINCT ON (m.user_key) m.user_key, m.status
                                     FROM migration_tracking.migration_log AS m
                                    WHERE m.user_key IN (SELECT x.%1$I::text FROM missing AS x)
                                    ORDER BY m.user_key, m.log_id DESC) AS g
                            WHERE g.status = ''merged'')', p_target ->> 'key_column') END,
        p_target ->> 'key_column', p_target ->> 'role_column'),
        p_app_path, p_backup_id, p_rollback_id,
        CASE p_mode WHEN 'emergency' THEN 'emergency rollback ' ELSE 'rollback ' END || p_rollback_id)
$$;

CREATE OR REPLACE FUNCTION migration_backup.perform_rollback(p_backup_id text, p_mode text, p_reason text)
RETURNS TABLE (rollback_id text, status text, profiles_restored bigint, sessions_restored bigint,
               policies_restored integer, conflicts bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
-- The restore copies typed values (no text in between); only the live roles are compared as
-- text, which does not depend on these settings, pinned as in create_comprehensive_backup but
-- TimeZone (the application's triggers fired by the restore keep the caller's zone).
SET DateStyle = 'ISO, YMD'
SET IntervalStyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
SET xmloption = 'content'
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
-- the restore hashes the backup's copy against the live table and each restored user against
-- the log: at the default 4MB those hashes spilled to disk in batches (3.6 s of 32 s at
-- 1,000,000 users); a rollback runs once, so it may take what a VACUUM would (64MB each)
SET work_mem = '64MB'
AS $$
#variable_conflict use_column
DECLARE
    v_rollback_id text;
    v_log         migration_backup.backup_log;
    v_t           jsonb;
    v_rel         regclass;
    v_copy        regclass;
    v_key         text;
    v_role_type   text;
    v_match       text;
    v_cols        text[];
    v_set_cols    text[];
    v_changes     jsonb := '{}';
    v_conflicts   jsonb;
    v_profiles    bigint := 0;
    v_sessions    bigint := 0;
    v_policies    integer := 0;
    v_error       text;
    v_app_path    text := migration_tracking.application_search_path();
BEGIN
    -- The restore shared by execute_rollback ('revert') and emergency_rollback ('emergency');
    -- the callers have already refused what must be refused. A rollback_log row is written
    -- first; all data and schema changes happen in an inner block, so an error undoes every
    -- change of the attempt while the log row survives with status 'failed' and the error.
    -- The profile rows come from the backup's typed copy, joined to the live table by key:
    -- revert:    role column compare-and-swap only (current = mapped(backup role) -> backup role),
    --            plus the rows the migration deleted as merged duplicates;
    -- emergency: every backed-up column of every backed-up profile (UPDATE where different,
    --            INSERT where missing); sessions are left as they are.
    -- A column added, dropped or retyped since the backup is not written; the difference is
    -- recorded in rollback_log.schema_changes and raised as a WARNING (schema_changes).
    -- Both: first the table locks of all the DDL in one go (lock_restore_tables: short
    -- lock_timeout, retried with backoff, so the application is never deadlocked), then
    -- role CHECK constraints, policies, RLS flags; running batches -> 'rolled_back';
    -- a 'rolled_back' log row for every user whose role the rollback changed (re-inserted
    -- users included), whatever changed the role before, filed under the rollback's id:
    -- the latest log entry of a user always names the role the user holds.
    -- The statements that write the profiles fire the application's triggers: each runs under
    -- the application's search_path (v_app_path), set and pinned back around it (restore_write).
    SELECT * INTO v_log FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    v_t := v_log.target;
    v_key := v_t ->> 'key_column';
    v_rollback_id := 'rb_' || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
                     || left(replace(gen_random_uuid()::text, '-', ''), 6);
    INSERT INTO migration_backup.rollback_log (rollback_id, backup_id, reason, mode, status)
    VALUES (v_rollback_id, p_backup_id, p_reason, p_mode, 'running');

    BEGIN
        SELECT s.live_rel, s.copy_rel, s.role_type, s.key_match, s.changes
          INTO v_rel, v_copy, v_role_type, v_match, v_changes
          FROM migration_backup.restore_source(p_backup_id, v_rollback_id, v_t, v_log.profiles_copy) AS s;

        v_conflicts := migration_backup.role_conflicts(p_backup_id, p_mode = 'revert');
        -- every table lock the rest needs, at once and never waiting while holding one (the
        -- CHECK drop must precede the role writes, so the locks cannot wait until after them)
        PERFORM migration_backup.lock_restore_tables(p_backup_id);
        PERFORM migration_backup.restore_role_checks(p_backup_id, 'drop');

        -- Columns restorable from the copy: in both with the same type, not generated in the
        -- live table; identity GENERATED ALWAYS columns and the key are not SET.
        SELECT array_agg(p.column_name),
               array_agg(p.column_name) FILTER (WHERE NOT p.identity_always AND p.column_name <> v_key)
          INTO v_cols, v_set_cols
          FROM migration_backup.column_pairs(v_copy, v_rel) AS p
         WHERE p.in_copy AND p.in_live AND p.same_type AND NOT p.generated;

        IF p_mode = 'revert' THEN
            v_profiles := migration_backup.restore_revert_roles(p_backup_id, v_rollback_id, v_t, v_rel, v_copy,
                                                                v_role_type, v_match, v_app_path);
        ELSIF v_set_cols IS NOT NULL THEN
            v_profiles := migration_backup.restore_emergency_rows(p_backup_id, v_rollback_id, v_t, v_rel, v_copy,
                                                                  v_match, v_cols, v_set_cols, v_app_path);
        END IF;
        -- the rows missing from the live table, after the role write (see reinsert_missing_rows)
        IF v_cols IS NOT NULL
           AND (p_mode = 'emergency'
                OR EXISTS (SELECT 1 FROM migration_tracking.migration_log AS m WHERE m.status = 'merged')) THEN
            v_profiles := v_profiles
                          + migration_backup.reinsert_missing_rows(p_backup_id, v_rollback_id, p_mode, v_t, v_rel,
                                                                   v_copy, v_match, v_cols, v_app_path);
        END IF;
        -- Sessions are not written: the migration never touches them, and rewriting them
        -- would revive sessions revoked or expired after the backup and undo refreshes.

        PERFORM migration_backup.restore_role_checks(p_backup_id, 'add');
        v_policies := migration_backup.restore_policies(p_backup_id, v_rollback_id);

        UPDATE migration_tracking.migration_batch AS b
           SET status = 'rolled_back', completed_at = coalesce(b.completed_at, clock_timestamp()),
               error = coalesce(b.error, format('left running; rolled back by %s', v_rollback_id))
         WHERE b.status = 'running';

        UPDATE migration_backup.rollback_log AS r
           SET status = 'completed', completed_at = clock_timestamp(), profiles_restored = v_profiles,
               sessions_restored = v_sessions, policies_restored = v_policies, conflicts = v_conflicts,
               schema_changes = v_changes
         WHERE r.rollback_id = v_rollback_id;
    EXCEPTION WHEN OTHERS THEN
        v_error := SQLERRM;
        UPDATE migration_backup.rollback_log AS r
           SET status = 'failed', completed_at = clock_timestamp(), error = v_error,
               profiles_restored = 0, sessions_restored = 0, policies_restored = 0
         WHERE r.rollback_id = v_rollback_id;
        RAISE WARNING 'rollback % of backup % failed, nothing was changed: %', v_rollback_id, p_backup_id, v_error
            USING HINT = 'The error is kept in migration_backup.rollback_log; emergency_rollback() restores from the backup alone.';
    END;

    RETURN QUERY
    SELECT r.rollback_id, r.status, r.profiles_restored, r.sessions_restored, r.policies_restored,
           jsonb_array_length(r.conflicts)::bigint
      FROM migration_backup.rollback_log AS r
     WHERE r.rollback_id = v_rollback_id;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.live_table_error(p_backup_id text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_t jsonb;
BEGIN
    -- Why the live table backup p_backup_id was taken from cannot be read whole by the caller
    -- (it is gone, or row level security would show only part of it), NULL when it can. A
    -- plan-time check, no row is read: what the restore needs of live data before it starts.
    SELECT l.target INTO v_t FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    EXECUTE format('SELECT 1 FROM %I.%I LIMIT 0', v_t ->> 'profiles_schema', v_t ->> 'profiles_table');
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    RETURN SQLERRM;
END
$$;

-- ---------------------------------------------------------- rollbacks ----

CREATE OR REPLACE FUNCTION migration_backup.execute_rollback(
    p_backup_id text,
    p_reason text DEFAULT 'manual rollback'
) RETURNS TABLE (rollback_id text, status text, profiles_restored bigint, sessions_restored bigint,
                 policies_restored integer, conflicts bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_failed    jsonb;
    v_backup_id text := p_backup_id;
BEGIN
    -- Reverts what the migration changed and nothing else (see perform_rollback, mode 'revert').
    -- NULL picks the backup the migration started from (migration_base), else the newest
    -- restorable one. Refuses, by raising before anything is written, an unknown backup, a
    -- backup taken after the migration started moving users (its roles are already migrated,
    -- so a revert to it would leave them so), a backup that fails backup_integrity (counts,
    -- checksums), a live table the caller cannot read whole (live_table_error), and a
    -- rollback while a migration holds the migration lock.
    IF v_backup_id IS NULL THEN
        v_backup_id := coalesce((SELECT b.backup_id FROM migration_backup.migration_base() AS b),
                                (SELECT l.backup_id FROM migration_backup.list_available_backups() AS l
                                  WHERE l.restorable LIMIT 1));
    END IF;
    PERFORM migration_backup.refuse_backup_after_migration(v_backup_id);
    IF NOT EXISTS (SELECT 1 FROM migration_backup.backup_log AS l WHERE l.backup_id = v_backup_id) THEN
        RAISE EXCEPTION 'backup % does not exist', coalesce(quote_literal(v_backup_id), 'NULL')
            USING DETAIL = 'No row in migration_backup.backup_log has this backup_id; nothing was changed.',
                  HINT = 'List restorable backups with migration_backup.list_available_backups().';
    END IF;

    SELECT jsonb_agg(jsonb_build_object('check', v.check_name, 'details', v.details))
      INTO v_failed
      FROM (SELECT i.check_name, i.details FROM migration_backup.backup_integrity(v_backup_id) AS i
             WHERE i.status = 'fail'
            UNION ALL
            SELECT 'live_table_readable', jsonb_build_object('error', r.error)
              FROM migration_backup.live_table_error(v_backup_id) AS r(error)
             WHERE r.error IS NOT NULL) AS v;
    IF v_failed IS NOT NULL THEN
        RAISE EXCEPTION 'backup % failed validation; refusing to roll back from it', v_backup_id
            USING DETAIL = format('Failed checks: %s. Nothing was changed.', v_failed),
                  HINT = 'Pick another backup from list_available_backups(), or use emergency_rollback() '
                         'if only live-data checks fail.';
    END IF;

    IF NOT pg_try_advisory_xact_lock(hashtext('pytest_rolemig.migration')) THEN
        RAISE EXCEPTION 'another role migration is running; refusing to roll back backup %', v_backup_id
            USING DETAIL = 'The migration advisory lock is held by another session. Nothing was changed.',
                  HINT = 'Wait for it to finish (or terminate it), then roll back.';
    END IF;

    RETURN QUERY
    SELECT r.rollback_id, r.status, r.profiles_restored, r.sessions_restored, r.policies_restored, r.conflicts
      FROM migration_backup.perform_rollback(v_backup_id, 'revert', p_reason) AS r;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.emergency_rollback(p_backup_id text DEFAULT NULL)
RETURNS TABLE (rollback_id text, status text, profiles_restored bigint, sessions_restored bigint,
               policies_restored integer, conflicts bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_backup_id text := p_backup_id;
BEGIN
    -- Full restore that trusts only the backup tables (see perform_rollback, mode
    -- 'emergency'): works when the tracking tables are inconsistent or a migration stopped
    -- half way. NULL picks the backup the migration started from (migration_base) if it is
    -- intact, else the newest intact one; a backup taken after users moved is refused, as in
    -- execute_rollback. The only validation required is the backup's own: completed, counts
    -- and checksums as recorded.
    IF v_backup_id IS NULL THEN
        -- the backup the migration started from, when it is intact; else the newest intact one
        SELECT l.backup_id INTO v_backup_id
          FROM migration_backup.backup_log AS l
         WHERE l.status = 'completed' AND migration_backup.backup_intact(l.backup_id)
         ORDER BY l.backup_id IS NOT DISTINCT FROM (SELECT b.backup_id FROM migration_backup.migration_base() AS b) DESC,
                  l.created_at DESC, l.backup_id DESC
         LIMIT 1;
        IF v_backup_id IS NULL THEN
            RAISE EXCEPTION 'no intact completed backup to restore from'
                USING DETAIL = 'migration_backup.backup_log has no completed backup whose checksums match.',
                      HINT = 'See migration_backup.list_available_backups().';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM migration_backup.backup_log AS l WHERE l.backup_id = v_backup_id) THEN
        RAISE EXCEPTION 'backup % does not exist', quote_literal(v_backup_id)
            USING DETAIL = 'No row in migration_backup.backup_log has this backup_id; nothing was changed.',
                  HINT = 'Call emergency_rollback() without argument to use the newest intact backup.';
    ELSIF NOT migration_backup.backup_intact(v_backup_id) THEN
        RAISE EXCEPTION 'backup % is not intact; refusing to restore from it', v_backup_id
            USING DETAIL = format('Failed checks: %s. Nothing was changed.',
                                  (SELECT jsonb_agg(v.check_name)
                                     FROM migration_backup.backup_integrity(v_backup_id) AS v
                                    WHERE v.status = 'fail')),
                  HINT = 'Restore from another backup (list_available_backups() shows which are restorable).';
    END IF;

    PERFORM migration_backup.refuse_backup_after_migration(v_backup_id);

    IF NOT pg_try_advisory_xact_lock(hashtext('pytest_rolemig.migration')) THEN
        RAISE EXCEPTION 'another role migration is running; refusing emergency rollback of backup %', v_backup_id
            USING DETAIL = 'The migration advisory lock is held by another session. Nothing was changed.',
                  HINT = 'Terminate that session (pg_terminate_backend), then run emergency_rollback() again.';
    END IF;

    RETURN QUERY
    SELECT r.rollback_id, r.status, r.profiles_restored, r.sessions_restored, r.policies_restored, r.conflicts
      FROM migration_backup.perform_rollback(v_backup_id, 'emergency', 'emergency rollback') AS r;
END
$$;

-- --------------------------------------------------------- validation ----

DROP FUNCTION IF EXISTS migration_backup.missing_from_live(regclass, text, text, regclass, text, text);
CREATE OR REPLACE FUNCTION migration_backup.missing_from_live(p_copy regclass, p_live regclass, p_key text)
RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_sample jsonb;
BEGIN
    -- The first 20 keys (as text, in that order) of the rows of backup copy p_copy that the
    -- live table p_live no longer has, matched on key column p_key: the sample
    -- validate_rollback_success reports for profiles and sessions.
    EXECUTE format(
        'SELECT jsonb_agg(x.k) FROM (
             SELECT c.%1$I::text AS k FROM %2$s AS c
              WHERE NOT EXISTS (SELECT 1 FROM %3$s AS t WHERE %4$s)
              ORDER BY 1 LIMIT 20) AS x',
        p_key, p_copy, p_live, migration_backup.key_match_sql(p_copy, p_live, p_key, 'c', 't'))
    INTO v_sample;
    RETURN v_sample;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_rollback_roles(
    p_target jsonb, p_rel regclass, p_copy regclass, p_match text, p_mode text,
    p_rollback_started timestamptz, p_conflict_keys text[]
) RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_n      bigint;
    v_sample jsonb;
BEGIN
    -- validate_rollback_success's role checks of live table p_rel (target p_target) against
    -- copy p_copy (joined by p_match), but for the users in p_conflict_keys:
    -- profiles_roles_restored, every user back on the backed-up role; migration_undone, nobody
    -- still on the role the migration wrote for them, judged as of the rollback that started
    -- at p_rollback_started (NULL: the state now).
    EXECUTE format(
        'SELECT count(*), jsonb_agg(x.j) FILTER (WHERE x.rn <= 20)
           FROM (SELECT jsonb_build_object(''user_key'', c.%1$I::text, ''backup_role'', c.%2$I::text,
                                           ''current_role'', t.%2$I::text) AS j,
                        row_number() OVER (ORDER BY c.%1$I::text) AS rn
                   FROM %4$s AS c
                   JOIN %3$s AS t ON %5$s
                  WHERE t.%2$I::text IS DISTINCT FROM c.%2$I::text
                    AND NOT (c.%1$I::text = ANY ($1))) AS x',
        p_target ->> 'key_column', p_target ->> 'role_column', p_rel, p_copy, p_match)
    INTO v_n, v_sample USING p_conflict_keys;
    RETURN QUERY SELECT 'profiles_roles_restored'::text, CASE WHEN v_n = 0 THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('users_not_restored', v_n, 'conflicts_excluded',
                                           cardinality(p_conflict_keys), 'sample', coalesce(v_sample, '[]'));

    -- the migration undone: nobody still holds the role the migration wrote for them (their
    -- latest log entry before the rollback is 'migrated' and their role is its new_role).
    -- Joined by the key's own type (an index probe or a hash on it): joined as text, the
    -- planner took a nested loop over the whole table per log row (hours at 1,000,000).
    -- Comparing with the backup alone cannot see this when the backup was taken after users
    -- had moved. Without a rollback on record, the state now is judged.
    EXECUTE format(
        'SELECT count(*), jsonb_agg(x.j) FILTER (WHERE x.rn <= 20)
           FROM (SELECT jsonb_build_object(''user_key'', l.user_key, ''legacy_role'', l.old_role,
                                           ''current_role'', l.new_role, ''batch_id'', l.batch_id) AS j,
                        row_number() OVER (ORDER BY l.user_key) AS rn
                   FROM (SELECT DISTINCT ON (m.user_key) m.user_key, m.batch_id, m.status, m.old_role, m.new_role
                           FROM migration_tracking.migration_log AS m
                          WHERE m.logged_at < $1 AND m.logged_at > $2
                          ORDER BY m.user_key, m.log_id DESC) AS l
                   JOIN %3$s AS t ON t.%1$I = l.user_key::%4$s
                  WHERE l.status = ''migrated'' AND l.old_role IS DISTINCT FROM l.new_role
                    AND t.%2$I::text = l.new_role AND NOT (l.user_key = ANY ($3))) AS x',
        p_target ->> 'key_column', p_target ->> 'role_column', p_rel,
        (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute AS a
          WHERE a.attrelid = p_rel AND a.attname = p_target ->> 'key_column' AND NOT a.attisdropped))
    INTO v_n, v_sample
    USING coalesce(p_rollback_started, clock_timestamp()),
          (SELECT coalesce(max(r.started_at), '-infinity') FROM migration_backup.rollback_log AS r
            WHERE r.status = 'completed' AND r.started_at < coalesce(p_rollback_started, clock_timestamp())),
          p_conflict_keys;
    RETURN QUERY SELECT 'migration_undone'::text,
                        CASE WHEN v_n = 0 THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('users_on_migrated_roles', v_n, 'mode', p_mode,
                                           'sample', coalesce(v_sample, '[]'));
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_rollback_rows(
    p_target jsonb, p_rel regclass, p_copy regclass, p_match text, p_mode text, p_backup_count bigint,
    p_conflict_keys text[]
) RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_skip    text[];
    v_changes jsonb;
    v_cols    text[];
    v_n       bigint;
    v_n2      bigint;
    v_n3      bigint;
    v_sample  jsonb;
BEGIN
    -- validate_rollback_success's row checks of live table p_rel (target p_target) against
    -- copy p_copy (joined by p_match; p_backup_count rows when backed up): profiles_content,
    -- every row as backed up (a difference fails after an emergency rollback, which restores
    -- every column, and warns after a revert); profiles_count, no backed-up row missing but
    -- the users in p_conflict_keys.

    -- full content, compared column by column (binary images: exact, and possible for
    -- json, which has no equality) on the columns copy and table share with the same type,
    -- except those a BEFORE UPDATE trigger of the application sets on every write (an
    -- updated_at): the rollback's own write changes them
    v_skip := ARRAY(SELECT w.column_name FROM migration_validation.trigger_written_columns() AS w);
    v_changes := migration_backup.schema_changes(p_copy, p_rel);
    SELECT array_agg(p.column_name) INTO v_cols
      FROM migration_backup.column_pairs(p_copy, p_rel) AS p
     WHERE p.in_copy AND p.in_live AND p.same_type AND NOT (p.column_name = ANY (v_skip));
    EXECUTE format(
        'SELECT count(*), jsonb_agg(x.j) FILTER (WHERE x.rn <= 20)
           FROM (SELECT jsonb_build_object(''user_key'', c.%1$I::text, ''columns'',
                            to_jsonb(array_remove(ARRAY[%5$s], NULL))) AS j,
                        row_number() OVER (ORDER BY c.%1$I::text) AS rn
                   FROM %3$s AS c
                   JOIN %2$s AS t ON %4$s
                  WHERE NOT pg_catalog.record_image_eq(ROW(%6$s), ROW(%7$s))) AS x',
        p_target ->> 'key_column', p_rel, p_copy, p_match,
        (SELECT string_agg(format('CASE WHEN NOT pg_catalog.record_image_eq(ROW(t.%1$I), ROW(c.%1$I)) '
                                  'THEN %1$L END', x), ', ' ORDER BY x) FROM unnest(v_cols) AS x),
        migration_backup.column_list(v_cols, 't'),
        migration_backup.column_list(v_cols, 'c'))
    INTO v_n, v_sample;
    RETURN QUERY SELECT 'profiles_content'::text,
                        CASE WHEN v_n = 0 THEN 'pass' WHEN p_mode = 'emergency' THEN 'fail' ELSE 'warn' END,
                        jsonb_build_object('rows_differing', v_n, 'mode', p_mode,
                                           'sample', coalesce(v_sample, '[]'))
                        || CASE WHEN cardinality(v_skip) > 0
                                THEN jsonb_build_object('not_compared', to_jsonb(v_skip),
                                                        'why', 'set by a BEFORE UPDATE trigger on every write')
                                ELSE '{}' END
                        || CASE WHEN v_changes <> '{}' THEN jsonb_build_object('schema_changes', v_changes)
                                ELSE '{}' END;

    -- counts: backed-up users missing, live users not in the backup; the sample of the
    -- missing ones is a second pass, taken only when there are some (as for sessions)
    EXECUTE format(
        'SELECT (SELECT count(*) FROM %2$s AS c WHERE NOT EXISTS (SELECT 1 FROM %1$s AS t WHERE %3$s)),
                (SELECT count(*) FROM %1$s AS t WHERE NOT EXISTS (SELECT 1 FROM %2$s AS c WHERE %3$s)),
                (SELECT count(*) FROM %1$s)',
        p_rel, p_copy, p_match)
    INTO v_n, v_n2, v_n3;
    v_sample := NULL;
    IF v_n > 0 THEN
        v_sample := migration_backup.missing_from_live(p_copy, p_rel, p_target ->> 'key_column');
    END IF;
    RETURN QUERY SELECT 'profiles_count'::text,
                        CASE WHEN v_n > 0 AND EXISTS (
                                      SELECT 1 FROM jsonb_array_elements_text(coalesce(v_sample, '[]')) AS m(k)
                                       WHERE NOT (m.k = ANY (p_conflict_keys))) THEN 'fail'
                             WHEN v_n > 0 OR v_n2 > 0 THEN 'warn' ELSE 'pass' END,
                        jsonb_build_object('backup_count', p_backup_count, 'live_count', v_n3,
                                           'missing_from_live', v_n, 'not_in_backup', v_n2,
                                           'sample', coalesce(v_sample, '[]'));
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_rollback_sessions(
    p_target jsonb, p_copy_name text, p_backup_count bigint
) RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_srel    regclass;
    v_scopy   regclass;
    v_smatch  text;
    v_cols    text[];
    v_differs text;
    v_n       bigint;
    v_n2      bigint;
    v_sample  jsonb;
    v_sample2 jsonb;
BEGIN
    -- validate_rollback_success's sessions_intact: the live sessions table of target p_target
    -- against its copy p_copy_name (p_backup_count rows when backed up). A rollback does not
    -- write sessions, so sessions revoked or changed since the backup only warn; none to check
    -- when the backed-up target has no sessions table.
    IF p_target ->> 'sessions_table' IS NOT NULL THEN
        v_srel := to_regclass(format('%I.%I', p_target ->> 'sessions_schema', p_target ->> 'sessions_table'));
        v_scopy := migration_backup.copy_table(p_copy_name);
        v_smatch := migration_backup.key_match_sql(v_scopy, v_srel, p_target ->> 'sessions_key_column', 'c', 't');
    END IF;
    IF p_target ->> 'sessions_table' IS NULL THEN
        RETURN QUERY SELECT 'sessions_intact'::text, 'pass'::text,
                            jsonb_build_object('note', 'no sessions table');
    ELSIF v_smatch IS NULL THEN
        RETURN QUERY SELECT 'sessions_intact'::text, 'fail'::text,
                            jsonb_build_object('error', 'sessions table, its backup copy or their key column missing',
                                               'table', format('%I.%I', p_target ->> 'sessions_schema',
                                                               p_target ->> 'sessions_table'),
                                               'copy', p_copy_name);
    ELSE
        -- One pass counts the revoked and the changed sessions (binary images of the columns
        -- both sides have with the same type); each sample is another pass, taken only when
        -- its count is not 0.
        SELECT array_agg(p.column_name) INTO v_cols
          FROM migration_backup.column_pairs(v_scopy, v_srel) AS p
         WHERE p.in_copy AND p.in_live AND p.same_type;
        v_differs := format('NOT pg_catalog.record_image_eq(ROW(%s), ROW(%s))',
                            migration_backup.column_list(v_cols, 't'), migration_backup.column_list(v_cols, 'c'));
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE t.%1$I IS NULL),
                    count(*) FILTER (WHERE t.%1$I IS NOT NULL AND %5$s)
               FROM %3$s AS c
               LEFT JOIN %2$s AS t ON %4$s',
            p_target ->> 'sessions_key_column', v_srel, v_scopy, v_smatch, v_differs)
        INTO v_n, v_n2;
        IF v_n > 0 THEN
            v_sample := migration_backup.missing_from_live(v_scopy, v_srel, p_target ->> 'sessions_key_column');
        END IF;
        IF v_n2 > 0 THEN
            EXECUTE format(
                'SELECT jsonb_agg(x.k) FROM (
                     SELECT c.%1$I::text AS k FROM %3$s AS c JOIN %2$s AS t ON %4$s
                      WHERE %5$s ORDER BY 1 LIMIT 20) AS x',
                p_target ->> 'sessions_key_column', v_srel, v_scopy, v_smatch, v_differs)
            INTO v_sample2;
        END IF;
        RETURN QUERY SELECT 'sessions_intact'::text,
                            CASE WHEN v_n2 > 0 OR v_n > 0 THEN 'warn' ELSE 'pass' END,
                            jsonb_build_object('backup_count', p_backup_count,
                                               'revoked_after_backup', v_n, 'revoked_sample', coalesce(v_sample, '[]'),
                                               'content_differs', v_n2, 'differs_sample', coalesce(v_sample2, '[]'));
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_rollback_ddl(
    p_backup_id text, p_target jsonb, p_backup_created timestamptz, p_backup_count integer
) RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_n       bigint;
    v_n2      bigint;
    v_n3      bigint;
    v_sample  jsonb;
    v_sample2 jsonb;
BEGIN
    -- validate_rollback_success's checks of what the restore's DDL puts back, for backup
    -- p_backup_id (taken at p_backup_created with p_backup_count policies, target p_target):
    -- policies_restored, every backed-up policy identical and none left that the migration
    -- created; rls_flags_restored, the RLS enabled/forced flags of the migrated tables as
    -- backed up; role_constraints_restored, the role column's CHECK constraints the backed-up
    -- set (one that restore_role_checks had to widen for conflicting rows, or add NOT VALID,
    -- only warns).
    SELECT count(*), jsonb_agg(x.j) FILTER (WHERE x.rn <= 20)
      INTO v_n, v_sample
      FROM (SELECT jsonb_build_object('schema', b.schema_name, 'table', b.table_name, 'policy', b.policy_name,
                                      'problem', CASE WHEN c.policy_name IS NULL THEN 'missing' ELSE 'differs' END,
                                      'want', jsonb_build_object('permissive', b.permissive, 'command', b.command,
                                                                 'roles', b.roles, 'using', b.using_expr,
                                                                 'check', b.check_expr),
                                      'have', CASE WHEN c.policy_name IS NOT NULL THEN
                                                  jsonb_build_object('permissive', c.permissive, 'command', c.command,
                                                                     'roles', c.roles, 'using', c.using_expr,
                                                                     'check', c.check_expr) END) AS j,
                   row_number() OVER (ORDER BY b.schema_name, b.table_name, b.policy_name) AS rn
              FROM migration_backup.rls_policies_backup AS b
              LEFT JOIN migration_backup.describe_policies() AS c
                ON c.schema_name = b.schema_name AND c.table_name = b.table_name AND c.policy_name = b.policy_name
             WHERE b.backup_id = p_backup_id
               AND (c.policy_name IS NULL OR c.permissive <> b.permissive OR c.command <> b.command
                    OR c.roles <> b.roles OR c.using_expr IS DISTINCT FROM b.using_expr
                    OR c.check_expr IS DISTINCT FROM b.check_expr)) AS x;
    SELECT count(*), jsonb_agg(DISTINCT jsonb_build_object('schema', c.schema_name, 'table', c.table_name,
                                                           'policy', c.policy_name))
      INTO v_n2, v_sample2
      FROM migration_tracking.rls_policy_changes AS ch
      JOIN migration_backup.describe_policies() AS c
        ON c.schema_name = ch.schema_name AND c.table_name = ch.table_name AND c.policy_name = ch.policy_name
     WHERE ch.change_type = 'create' AND ch.changed_at >= p_backup_created
       AND NOT EXISTS (SELECT 1 FROM migration_backup.rls_policies_backup AS b
                        WHERE b.backup_id = p_backup_id AND b.schema_name = c.schema_name
                          AND b.table_name = c.table_name AND b.policy_name = c.policy_name);
    RETURN QUERY SELECT 'policies_restored'::text, CASE WHEN v_n + v_n2 = 0 THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('backup_count', p_backup_count, 'not_restored', v_n,
                                           'sample', coalesce(v_sample, '[]'),
                                           'created_by_migration_still_present', coalesce(v_sample2, '[]'));

    SELECT count(*), jsonb_agg(r.j)
      INTO v_n, v_sample
      FROM jsonb_array_elements(p_target -> 'rls_tables') AS r(j)
      LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = r.j ->> 'schema'
      LEFT JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = r.j ->> 'table'
     WHERE c.relrowsecurity IS DISTINCT FROM (r.j ->> 'enabled')::boolean
        OR c.relforcerowsecurity IS DISTINCT FROM (r.j ->> 'forced')::boolean;
    RETURN QUERY SELECT 'rls_flags_restored'::text, CASE WHEN v_n = 0 THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('tables', jsonb_array_length(coalesce(p_target -> 'rls_tables', '[]')),
                                           'differing', coalesce(v_sample, '[]'));

    -- role CHECK constraints: the backed-up set, same names and definitions; one that
    -- restore_role_checks added NOT VALID, or accepting the roles of conflicting rows as well
    -- ('CHECK ((<backed-up expression> OR ...'), only warns
    SELECT count(*) FILTER (WHERE coalesce(w.name, h.name) IS NOT NULL
                              AND h.definition IS DISTINCT FROM w.definition
                              AND h.definition IS DISTINCT FROM w.definition || ' NOT VALID'
                              AND NOT coalesce(pg_catalog.starts_with(h.definition, 'CHECK ((' || w.expr || ' OR '), false)),
           count(*) FILTER (WHERE h.definition = w.definition || ' NOT VALID'),
           count(*) FILTER (WHERE pg_catalog.starts_with(h.definition, 'CHECK ((' || w.expr || ' OR ')),
           jsonb_agg(jsonb_build_object('name', coalesce(w.name, h.name), 'want', w.definition, 'have', h.definition))
               FILTER (WHERE h.definition IS DISTINCT FROM w.definition)
      INTO v_n, v_n2, v_n3, v_sample
      FROM (SELECT k.j ->> 'name' AS name, k.j ->> 'definition' AS definition,
                   substring(k.j ->> 'definition' FROM '^CHECK \((.*)\)( NOT VALID)?$') AS expr
              FROM jsonb_array_elements(coalesce(p_target -> 'role_checks', '[]')) AS k(j)) AS w
      FULL JOIN migration_backup.role_check_constraints(p_target ->> 'profiles_schema', p_target ->> 'profiles_table',
                                                        p_target ->> 'role_column') AS h
        ON h.name = w.name;
    RETURN QUERY SELECT 'role_constraints_restored'::text,
                        CASE WHEN v_n > 0 THEN 'fail' WHEN v_n2 + v_n3 > 0 THEN 'warn' ELSE 'pass' END,
                        jsonb_build_object('backup_count', jsonb_array_length(coalesce(p_target -> 'role_checks', '[]')),
                                           'differing', coalesce(v_sample, '[]'), 'not_valid', v_n2,
                                           'widened_for_conflicts', v_n3);
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.validate_rollback_success(
    p_backup_id text,
    p_rollback_id text DEFAULT NULL
) RETURNS TABLE (check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
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
    v_log       migration_backup.backup_log;
    v_rb        migration_backup.rollback_log;
    v_mode      text;
    v_t         jsonb;
    v_rel       regclass;
    v_copy      regclass;
    v_match     text;
    v_conflict_keys text[];
BEGIN
    -- Compares the live database with the backup, content not counts: roles, full profile rows,
    -- sessions, policies, RLS flags and role CHECK constraints, plus the rollback's own record.
    -- Strictness follows the rollback mode: an emergency rollback restores every column, so any
    -- difference fails; a revert restores roles only, so other differences (and conflicts it
    -- deliberately left alone) are warnings. Without a rollback id the newest one of the backup.
    -- The checks run in the validate_rollback_* helpers, under these settings.
    SELECT * INTO v_log FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'rollback_recorded'::text, 'fail'::text,
                            jsonb_build_object('backup_id', p_backup_id, 'error', 'backup does not exist');
        RETURN;
    END IF;
    v_t := v_log.target;

    SELECT * INTO v_rb FROM migration_backup.rollback_log AS r
     WHERE (p_rollback_id IS NULL AND r.backup_id = p_backup_id) OR r.rollback_id = p_rollback_id
     ORDER BY r.started_at DESC, r.rollback_id DESC
     LIMIT 1;
    v_mode := coalesce(v_rb.mode, 'revert');
    RETURN QUERY SELECT 'rollback_recorded'::text,
                        CASE WHEN v_rb.rollback_id IS NOT NULL AND v_rb.backup_id = p_backup_id
                                  AND v_rb.status = 'completed' THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('rollback_id', coalesce(v_rb.rollback_id, p_rollback_id),
                                           'found', v_rb.rollback_id IS NOT NULL,
                                           'rollback_backup_id', v_rb.backup_id, 'backup_id', p_backup_id,
                                           'mode', v_rb.mode, 'status', v_rb.status, 'error', v_rb.error);
    SELECT coalesce(array_agg(c.j ->> 'user_key'), '{}') INTO v_conflict_keys
      FROM jsonb_array_elements(CASE WHEN v_mode = 'revert' THEN coalesce(v_rb.conflicts, '[]') ELSE '[]' END) AS c(j);

    v_rel := to_regclass(format('%I.%I', v_t ->> 'profiles_schema', v_t ->> 'profiles_table'));
    v_copy := migration_backup.copy_table(v_log.profiles_copy);
    v_match := migration_backup.key_match_sql(v_copy, v_rel, v_t ->> 'key_column', 'c', 't');
    IF v_match IS NULL THEN
        RETURN QUERY SELECT 'profiles_count'::text, 'fail'::text,
                            jsonb_build_object('error', 'profiles table, its backup copy or their key column missing',
                                               'table', format('%I.%I', v_t ->> 'profiles_schema', v_t ->> 'profiles_table'),
                                               'copy', v_log.profiles_copy, 'key_column', v_t ->> 'key_column');
    ELSE
        RETURN QUERY SELECT * FROM migration_backup.validate_rollback_roles(v_t, v_rel, v_copy, v_match, v_mode,
                                                                             v_rb.started_at, v_conflict_keys);
        RETURN QUERY SELECT * FROM migration_backup.validate_rollback_rows(v_t, v_rel, v_copy, v_match, v_mode,
                                                                            v_log.profiles_count, v_conflict_keys);
    END IF;
    RETURN QUERY SELECT * FROM migration_backup.validate_rollback_sessions(v_t, v_log.sessions_copy,
                                                                            v_log.sessions_count);
    RETURN QUERY SELECT * FROM migration_backup.validate_rollback_ddl(p_backup_id, v_t, v_log.created_at,
                                                                       v_log.policies_count);
END
$$;

CREATE OR REPLACE FUNCTION migration_backup.list_available_backups()
RETURNS TABLE (backup_id text, backup_name text, created_at timestamptz, status text, profiles_count bigint,
               sessions_count bigint, policies_count integer, restorable boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Every backup, newest first; restorable = completed and its rows still match the recorded
    -- counts and checksums (migration_backup.backup_intact).
    SELECT l.backup_id, l.backup_name, l.created_at, l.status, l.profiles_count, l.sessions_count,
           l.policies_count, l.status = 'completed' AND migration_backup.backup_intact(l.backup_id)
      FROM migration_backup.backup_log AS l
     ORDER BY l.created_at DESC, l.backup_id DESC
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_backup FROM PUBLIC;
