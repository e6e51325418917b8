-- Migration logging system: the first component of the migration infrastructure.
--
-- Provides:
--   * the four schemas migration_tracking, migration_backup, migration_validation,
--     migration_control (every later file relies on them);
--   * migration_control.infrastructure_version (the version installed, see the backup system);
--   * the configuration tables migration_control.target_config (one row: which table,
--     columns and schemas the migration works on), migration_control.new_roles and
--     migration_control.role_mapping (filled by migration_control.load_role_mapping);
--   * the tracking tables migration_tracking.migration_batch, migration_log and
--     rls_policy_changes;
--   * migration_tracking.start_migration_batch, log_user_migration,
--     complete_migration_batch and get_migration_status;
--   * migration_tracking.application_search_path (the path the statements that write the
--     application's tables run under, so that its triggers resolve names as they do for it).
-- Depends on: PostgreSQL 13+ (gen_random_uuid is built in). Nothing else.
-- Idempotent: safe to run twice; contains no psql meta-commands.

CREATE SCHEMA IF NOT EXISTS migration_tracking;
CREATE SCHEMA IF NOT EXISTS migration_backup;
CREATE SCHEMA IF NOT EXISTS migration_validation;
CREATE SCHEMA IF NOT EXISTS migration_control;

COMMENT ON SCHEMA migration_tracking IS 'Role migration: batches, per-user log, RLS policy changes';
COMMENT ON SCHEMA migration_backup IS 'Role migration: backups and rollbacks';
COMMENT ON SCHEMA migration_validation IS 'Role migration: validation checks and their results';
COMMENT ON SCHEMA migration_control IS 'Role migration: configuration and orchestration';

-- ------------------------------------------------------------ version ----

-- The version of the infrastructure installed: 1 (no row; backups as jsonb rows) or 2 (typed
-- backup copies). Written by comprehensive-backup-system.sql once the backups of an older
-- version are converted, so a re-install or an upgrade always ends with the current one.
CREATE TABLE IF NOT EXISTS migration_control.infrastructure_version (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version       integer NOT NULL,
    backup_format text NOT NULL,
    installed_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    upgraded_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE migration_control.infrastructure_version IS
    'One row: the version of the migration infrastructure installed and the format of its backups';

-- ------------------------------------------------------ configuration ----

CREATE TABLE IF NOT EXISTS migration_control.target_config (
    singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    profiles_schema      text NOT NULL DEFAULT 'public',
    profiles_table       text NOT NULL DEFAULT 'user_profiles',
    key_column           text NOT NULL DEFAULT 'id',
    role_column          text NOT NULL DEFAULT 'role',
    sessions_schema      text NOT NULL DEFAULT 'auth',
    sessions_table       text NOT NULL DEFAULT 'sessions',
    sessions_key_column  text NOT NULL DEFAULT 'id',
    sessions_user_column text NOT NULL DEFAULT 'user_id',
    policy_schemas       text[] NOT NULL DEFAULT ARRAY['public', 'auth'],
    batch_size           integer NOT NULL DEFAULT 1000 CHECK (batch_size > 0),
    auth_role            text NOT NULL DEFAULT 'authenticated',
    role_claim           text NOT NULL DEFAULT 'user_role',
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- user_column: the column of the profiles (role) table holding the user's id, the value the
-- JWT claims carry ('sub'); NULL means the key column (one row per user). A roles table with
-- one row per user and role keys its rows by their own id and names the user in user_id.
ALTER TABLE migration_control.target_config ADD COLUMN IF NOT EXISTS user_column text;
-- Requests as PostgREST makes them (#18): anon_role is the role of a request without a JWT;
-- jwt_claims the claims template ({user} and {role} replaced by the user's id and app role;
-- NULL: the Supabase claims sub, role, role_claim); pre_request the function PostgREST's
-- db-pre-request names, called after the claims are set and the role switched (NULL: none).
-- No sessions table: sessions_schema, sessions_table and sessions_key_column are NULL.
ALTER TABLE migration_control.target_config ADD COLUMN IF NOT EXISTS anon_role text NOT NULL DEFAULT 'anon';
ALTER TABLE migration_control.target_config ADD COLUMN IF NOT EXISTS jwt_claims jsonb;
ALTER TABLE migration_control.target_config ADD COLUMN IF NOT EXISTS pre_request text;
ALTER TABLE migration_control.target_config ALTER COLUMN sessions_schema DROP NOT NULL,
                                            ALTER COLUMN sessions_table DROP NOT NULL,
                                            ALTER COLUMN sessions_key_column DROP NOT NULL;
COMMENT ON TABLE migration_control.target_config IS
    'The one row saying where the application keeps profiles, roles and sessions (identifiers unquoted)';

CREATE TABLE IF NOT EXISTS migration_control.new_roles (
    role_name text PRIMARY KEY,
    position  integer NOT NULL
);

CREATE TABLE IF NOT EXISTS migration_control.role_mapping (
    legacy_role text PRIMARY KEY,
    new_role    text NOT NULL REFERENCES migration_control.new_roles
);

-- ----------------------------------------------------------- tracking ----

CREATE TABLE IF NOT EXISTS migration_tracking.migration_batch (
    batch_id        text PRIMARY KEY,
    run_id          text,
    migration_name  text NOT NULL,
    batch_number    integer,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'completed', 'failed', 'rolled_back')),
    batch_size      integer,
    first_key       text,
    last_key        text,
    processed_users integer NOT NULL DEFAULT 0,
    failed_users    integer NOT NULL DEFAULT 0,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at    timestamptz,
    error           text,
    details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS migration_batch_run_idx ON migration_tracking.migration_batch (run_id);
CREATE INDEX IF NOT EXISTS migration_batch_status_idx ON migration_tracking.migration_batch (status);

CREATE TABLE IF NOT EXISTS migration_tracking.migration_log (
    log_id    bigint GENERATED ALWAYS AS IDENTITY,
    batch_id  text NOT NULL,
    user_key  text NOT NULL,
    old_role  text,
    new_role  text,
    status    text NOT NULL CHECK (status IN ('migrated', 'unchanged', 'merged', 'failed', 'rolled_back')),
    message   text,
    logged_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- 'merged': a row the migration deleted because another row of the same user ends on the same
-- new role under a unique index (see migrate_batch); rollback inserts it back from the backup.
-- Installed before 'merged' existed: the CHECK is replaced, so a reinstall upgrades it.
ALTER TABLE migration_tracking.migration_log DROP CONSTRAINT IF EXISTS migration_log_status_check;
ALTER TABLE migration_tracking.migration_log ADD CONSTRAINT migration_log_status_check
    CHECK (status IN ('migrated', 'unchanged', 'merged', 'failed', 'rolled_back'));
-- The log has one row per user a batch moved (identity-mapped users, 'admin' -> 'admin', are
-- never pending and get none) and two partial indexes. revisited: the row's new_role is
-- also a legacy role the mapping moves on (a chain: a -> b, b -> c). Only such a user can be on
-- a moving legacy role after the migration moved them, so only for them does
-- pending_users_sql ask the log "already moved?", through migration_log_revisited_idx:
-- partial, so a mapping without chains writes no index entry at all. The indexes the log had,
-- (user_key, log_id) and batch_id, cost a migration of 1,000,000 users a third of its time in
-- index inserts at random keys; the queries that used them are set-based now (rollback,
-- validation) or are told the counts (a batch's processed_users, migration_control.record_batch).
ALTER TABLE migration_tracking.migration_log ADD COLUMN IF NOT EXISTS revisited boolean NOT NULL DEFAULT false;
-- log_id orders a user's entries (the latest one wins in rollback and validation, which sort
-- the rows they read); no query looks a row up by it, so it has no index: the primary key an
-- older install has cost a migration of 1,000,000 users a ninth of its time.
ALTER TABLE migration_tracking.migration_log DROP CONSTRAINT IF EXISTS migration_log_pkey;
DROP INDEX IF EXISTS migration_tracking.migration_log_user_key_idx;
DROP INDEX IF EXISTS migration_tracking.migration_log_batch_id_idx;
DROP INDEX IF EXISTS migration_tracking.migration_log_user_latest_idx;
CREATE INDEX IF NOT EXISTS migration_log_revisited_idx ON migration_tracking.migration_log (user_key)
    WHERE revisited;
-- merged rows (see migrate_batch): rare, and rollback asks whether there are any, which without
-- an index was a pass over the whole log (90 ms at 1,000,000 users); a log without merges
-- writes no entry here
CREATE INDEX IF NOT EXISTS migration_log_merged_idx ON migration_tracking.migration_log (user_key)
    WHERE status = 'merged';
-- an upgrade in the middle of a migration: rows logged before the column existed
UPDATE migration_tracking.migration_log l SET revisited = true
 WHERE NOT l.revisited AND l.status IN ('migrated', 'unchanged')
   AND l.new_role IN (SELECT m.legacy_role FROM migration_control.role_mapping m WHERE m.new_role <> m.legacy_role);

-- ------------------------------------------- cascades without foreign keys ----
-- Log and copy tables that only this infrastructure writes, always after their parent row,
-- carry no foreign key to that parent: its per-row check (a lookup and a KEY SHARE lock on the
-- parent row for every child row) took 44% of a logged migration of 300,000 users and a
-- quarter of a backup. Statement triggers on the parent keep what the foreign key gave:
-- deleting parent rows deletes their children, TRUNCATE empties the children.

CREATE OR REPLACE FUNCTION migration_tracking.delete_child_rows()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_child text;
BEGIN
    -- The cascade set up by cascade_without_foreign_keys: TG_ARGV[0] is the key column shared
    -- by parent and children, the other arguments are the child tables.
    FOREACH v_child IN ARRAY TG_ARGV[1:] LOOP
        IF TG_OP = 'TRUNCATE' THEN
            EXECUTE format('TRUNCATE %s', v_child::regclass);
        ELSE
            EXECUTE format('DELETE FROM %s AS c USING gone AS g WHERE c.%2$I = g.%2$I',
                           v_child::regclass, TG_ARGV[0]);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION migration_tracking.cascade_without_foreign_keys(
    p_parent regclass, p_key text, p_children regclass[]
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_fk   record;
    v_args text := (SELECT string_agg(pg_catalog.quote_literal(c::text), ', ') FROM pg_catalog.unnest(p_children) c);
BEGIN
    -- Drops the foreign keys from p_children to p_parent (those of an older install too) and
    -- (re)creates the statement triggers on p_parent that cascade to them. Idempotent.
    FOR v_fk IN
        SELECT k.conrelid::regclass AS rel, k.conname
          FROM pg_catalog.pg_constraint k
         WHERE k.contype = 'f' AND k.confrelid = p_parent AND k.conrelid = ANY (p_children)
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', v_fk.rel, v_fk.conname);
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS cascade_delete ON %s', p_parent);
    EXECUTE format('CREATE TRIGGER cascade_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS gone '
                   'FOR EACH STATEMENT EXECUTE FUNCTION migration_tracking.delete_child_rows(%L, %s)',
                   p_parent, p_key, v_args);
    EXECUTE format('DROP TRIGGER IF EXISTS cascade_truncate ON %s', p_parent);
    EXECUTE format('CREATE TRIGGER cascade_truncate AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION migration_tracking.delete_child_rows(%L, %s)',
                   p_parent, p_key, v_args);
END
$$;

SELECT migration_tracking.cascade_without_foreign_keys(
    'migration_tracking.migration_batch', 'batch_id', ARRAY['migration_tracking.migration_log']::regclass[]);

CREATE TABLE IF NOT EXISTS migration_tracking.rls_policy_changes (
    change_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text,
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    policy_name text NOT NULL,
    change_type text NOT NULL CHECK (change_type IN ('rewrite', 'restore', 'create', 'drop')),
    old_using   text,
    new_using   text,
    old_check   text,
    new_check   text,
    changed_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS rls_policy_changes_run_idx ON migration_tracking.rls_policy_changes (run_id);

-- ---------------------------------------------------------- functions ----

CREATE OR REPLACE FUNCTION migration_tracking.start_migration_batch(
    p_migration_name text DEFAULT 'role_system_migration',
    p_batch_size integer DEFAULT NULL,
    p_run_id text DEFAULT NULL,
    p_details jsonb DEFAULT '{}'
) RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_batch_id     text;
    v_batch_number integer;
    v_batch_size   integer;
BEGIN
    -- Opens a batch in status 'running' and returns its readable id. Within a run the batch
    -- number is the next free one (an advisory lock on the run id keeps two callers from
    -- taking the same number); a batch without a run is batch 1 of its own. The batch size
    -- defaults to the configured one so the batch row always says how big it was meant to be.
    IF p_migration_name IS NULL OR btrim(p_migration_name) = '' THEN
        RAISE EXCEPTION 'migration name must not be empty (got %)', coalesce(quote_literal(p_migration_name), 'NULL')
            USING DETAIL = 'Every batch is recorded under the name of the migration it belongs to.',
                  HINT = 'Pass a name, e.g. start_migration_batch(''role_system_migration'').';
    END IF;
    IF p_batch_size IS NOT NULL AND p_batch_size <= 0 THEN
        RAISE EXCEPTION 'batch size must be positive (got %)', p_batch_size
            USING DETAIL = 'A batch processes at most batch_size users.',
                  HINT = 'Pass a positive number, or NULL for the configured batch size.';
    END IF;

    v_batch_size := coalesce(p_batch_size,
                             (SELECT c.batch_size FROM migration_control.target_config AS c));

    IF p_run_id IS NULL THEN
        v_batch_number := 1;
    ELSE
        PERFORM pg_advisory_xact_lock(hashtext('pytest_rolemig.batch_number:' || p_run_id));
        SELECT coalesce(max(b.batch_number), 0) + 1
          INTO v_batch_number
          FROM migration_tracking.migration_batch AS b
         WHERE b.run_id = p_run_id;
    END IF;

    -- 48 random bits after the second: a million users make a thousand batches, tens of
    -- them within one second, and 24 bits collided once in such a run (duplicate batch_id)
    v_batch_id := 'batch_' || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
                  || left(replace(gen_random_uuid()::text, '-', ''), 12);

    INSERT INTO migration_tracking.migration_batch
           (batch_id, run_id, migration_name, batch_number, status, batch_size, details)
    VALUES (v_batch_id, p_run_id, p_migration_name, v_batch_number, 'running', v_batch_size,
            coalesce(p_details, '{}'::jsonb));

    RETURN v_batch_id;
END
$$;

CREATE OR REPLACE FUNCTION migration_tracking.log_user_migration(
    p_batch_id text,
    p_user_id text,
    p_old_role text,
    p_new_role text,
    p_status text DEFAULT 'migrated',
    p_message text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_batch_status text;
    v_log_id       bigint;
BEGIN
    -- Records what happened to one user in a running batch and bumps the batch counters
    -- (processed_users for 'migrated'/'unchanged', failed_users for 'failed'). The batch row
    -- is locked first, so a batch that another session completes meanwhile is refused rather
    -- than silently logged into after the fact.
    IF p_status IS NULL OR p_status NOT IN ('migrated', 'unchanged', 'failed', 'rolled_back') THEN
        RAISE EXCEPTION 'invalid user migration status %', coalesce(quote_literal(p_status), 'NULL')
            USING DETAIL = format('batch %s, user %s', p_batch_id, p_user_id),
                  HINT = 'Use one of: migrated, unchanged, failed, rolled_back.';
    END IF;
    IF p_user_id IS NULL THEN
        RAISE EXCEPTION 'user key must not be NULL (batch %)', p_batch_id
            USING DETAIL = 'Every log row names the user it is about.',
                  HINT = 'Pass the key column value of the user as text.';
    END IF;

    SELECT b.status INTO v_batch_status
      FROM migration_tracking.migration_batch AS b
     WHERE b.batch_id = p_batch_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'migration batch % does not exist', coalesce(quote_literal(p_batch_id), 'NULL')
            USING DETAIL = format('Cannot log user %s (%s -> %s).', p_user_id, p_old_role, p_new_role),
                  HINT = 'Start a batch with migration_tracking.start_migration_batch() and log into its id.';
    END IF;
    IF v_batch_status <> 'running' THEN
        RAISE EXCEPTION 'migration batch % is already %', p_batch_id, v_batch_status
            USING DETAIL = format('Cannot log user %s (%s -> %s) into a finished batch.',
                                  p_user_id, p_old_role, p_new_role),
                  HINT = 'Start a new batch for further users.';
    END IF;

    INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status, message)
    VALUES (p_batch_id, p_user_id, p_old_role, p_new_role, p_status, p_message)
    RETURNING log_id INTO v_log_id;

    UPDATE migration_tracking.migration_batch AS b
       SET processed_users = b.processed_users
                             + CASE WHEN p_status IN ('migrated', 'unchanged') THEN 1 ELSE 0 END,
           failed_users    = b.failed_users + CASE WHEN p_status = 'failed' THEN 1 ELSE 0 END
     WHERE b.batch_id = p_batch_id;

    RETURN v_log_id;
END
$$;

CREATE OR REPLACE FUNCTION migration_tracking.complete_migration_batch(
    p_batch_id text,
    p_status text DEFAULT 'completed',
    p_error text DEFAULT NULL
) RETURNS TABLE (batch_id text, status text, processed_users integer, failed_users integer,
                 duration interval)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_current text;
BEGIN
    -- Finishes a running batch. The counters are recomputed from migration_log (set-based,
    -- whoever wrote the log rows), so a batch filled by one INSERT ... SELECT and a batch
    -- filled by log_user_migration end up counted the same way.
    IF p_status IS NULL OR p_status NOT IN ('completed', 'failed', 'rolled_back') THEN
        RAISE EXCEPTION 'invalid final batch status %', coalesce(quote_literal(p_status), 'NULL')
            USING DETAIL = format('batch %s', p_batch_id),
                  HINT = 'Use one of: completed, failed, rolled_back.';
    END IF;

    SELECT b.status INTO v_current
      FROM migration_tracking.migration_batch AS b
     WHERE b.batch_id = p_batch_id
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'migration batch % does not exist', coalesce(quote_literal(p_batch_id), 'NULL')
            USING DETAIL = 'Only a batch returned by start_migration_batch() can be completed.',
                  HINT = 'List batches with migration_tracking.get_migration_status().';
    END IF;
    IF v_current <> 'running' THEN
        RAISE EXCEPTION 'migration batch % is already %', p_batch_id, v_current
            USING DETAIL = format('Requested final status: %s.', p_status),
                  HINT = 'A batch is completed once; start a new batch instead.';
    END IF;

    RETURN QUERY
    UPDATE migration_tracking.migration_batch AS b
       SET status          = p_status,
           completed_at    = clock_timestamp(),
           error           = coalesce(p_error, b.error),
           processed_users = c.processed,
           failed_users    = c.failed
      FROM (SELECT count(*) FILTER (WHERE l.status IN ('migrated', 'unchanged', 'merged'))::integer AS processed,
                   count(*) FILTER (WHERE l.status = 'failed')::integer AS failed
              FROM migration_tracking.migration_log AS l
             WHERE l.batch_id = p_batch_id) AS c
     WHERE b.batch_id = p_batch_id
    RETURNING b.batch_id, b.status, b.processed_users, b.failed_users, b.completed_at - b.started_at;
END
$$;

CREATE OR REPLACE FUNCTION migration_tracking.get_migration_status(p_batch_id text DEFAULT NULL)
RETURNS TABLE (batch_id text, run_id text, migration_name text, batch_number integer, status text,
               processed_users integer, failed_users integer, started_at timestamptz,
               completed_at timestamptz, error text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    -- One batch by id, or every batch newest first when the id is NULL. An unknown id raises:
    -- an empty answer would look like "nothing happened" to a monitoring script.
    IF p_batch_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM migration_tracking.migration_batch AS b WHERE b.batch_id = p_batch_id
    ) THEN
        RAISE EXCEPTION 'migration batch % does not exist', quote_literal(p_batch_id)
            USING DETAIL = 'No row in migration_tracking.migration_batch has this batch_id.',
                  HINT = 'Call get_migration_status() without argument to list every batch.';
    END IF;

    RETURN QUERY
    SELECT b.batch_id, b.run_id, b.migration_name, b.batch_number, b.status,
           b.processed_users, b.failed_users, b.started_at, b.completed_at, b.error
      FROM migration_tracking.migration_batch AS b
     WHERE p_batch_id IS NULL OR b.batch_id = p_batch_id
     ORDER BY b.started_at DESC, b.batch_id DESC;
END
$$;

-- ------------------------------------------- the application's search_path ----

CREATE OR REPLACE FUNCTION migration_tracking.application_search_path()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The search_path the application's own sessions get: the role/database/server default
    -- (reset_val; neither a function's SET clause nor the caller's SET changes it), with pg_temp
    -- appended unless it is named already, so temporary objects are searched last instead of
    -- first. The statements that write the application's tables (the migration's role UPDATE,
    -- the restores) run under it, set with set_config(..., true) just around the statement and
    -- pinned back right after: the application's triggers usually do not pin a search_path and
    -- resolve their names through the current one, which in our functions is pg_catalog, pg_temp
    -- (issue #17: "function current_user_data(unknown) does not exist"). An application that sets its
    -- search_path per transaction (PostgREST's db-schemas) is not seen here: give such an
    -- application's role a default (ALTER ROLE ... SET search_path) or pin its trigger functions.
    SELECT CASE WHEN s.reset_val ~* '(^|,)\s*pg_temp\s*(,|$)' OR s.reset_val ~ '(^|,)\s*"pg_temp"\s*(,|$)'
                THEN s.reset_val
                ELSE s.reset_val || ', pg_temp' END
      FROM pg_catalog.pg_settings AS s
     WHERE s.name = 'search_path'
$$;

-- ------------------------------------------------- where an error came from ----

CREATE OR REPLACE FUNCTION migration_tracking.error_origin(
    p_context text, p_schema text DEFAULT NULL, p_table text DEFAULT NULL, p_constraint text DEFAULT NULL)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- What the message of a failed write does not say: which of the application's objects
    -- raised it. From PG_EXCEPTION_CONTEXT, the innermost frame of a function outside the
    -- infrastructure, with the triggers that run that function; from the diagnostics, the
    -- constraint and its table. '' when neither is known. Appended to the error a batch
    -- records, so a trigger that refuses role changes is named, not only quoted.
    WITH frame AS (
        SELECT l.line, (pg_catalog.regexp_match(l.line, 'function ([^(]+)\('))[1] AS fn
          FROM pg_catalog.regexp_split_to_table(coalesce(p_context, ''), '\n') WITH ORDINALITY AS l(line, n)
         WHERE l.line ~ '^(PL/pgSQL|SQL) function '
           AND l.line !~ '^(PL/pgSQL|SQL) function migration_(tracking|backup|validation|control)\.'
         ORDER BY l.n
         LIMIT 1
    ), triggers AS (
        SELECT pg_catalog.string_agg(pg_catalog.format('trigger %I on %I.%I', g.tgname, n.nspname, c.relname),
                                     ', ' ORDER BY g.tgname) AS list
          FROM frame f
          JOIN pg_catalog.pg_proc p ON p.proname = pg_catalog.split_part(f.fn, '.', -1)
           AND (f.fn NOT LIKE '%.%' OR p.pronamespace::regnamespace::text = pg_catalog.split_part(f.fn, '.', 1))
          JOIN pg_catalog.pg_trigger g ON g.tgfoid = p.oid AND NOT g.tgisinternal
          JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    )
    SELECT concat(
        (SELECT pg_catalog.format(' [raised in %s%s]',
                    CASE WHEN t.list IS NOT NULL THEN t.list || ': ' ELSE '' END, f.line)
           FROM frame f CROSS JOIN triggers t),
        CASE WHEN coalesce(p_constraint, '') <> '' THEN
            pg_catalog.format(' [constraint %I on %I.%I]', p_constraint, p_schema, p_table) END)
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_tracking FROM PUBLIC;
