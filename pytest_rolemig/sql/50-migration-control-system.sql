-- Migration control system: configuration of the target and the role mapping,
-- discovery of legacy roles, and the master control functions.
--
-- Provides (schema migration_control):
--   configure_target(...)                 store the application's tables/columns, checked
--   ensure_target_configured()            default row if none, then re-check the stored target
--   verify_target(...)                    the check both of them use (raises on a missing object)
--   token_fields(text), request_claims(text, text)
--                                         the JWT claims of a user's request, as the platform builds them
--   load_role_mapping(jsonb, text[])      replace new_roles and role_mapping (refused mid-migration)
--   users_moved_since_rollback()          users the migration moved that no completed rollback undid
--   discover_legacy_roles()               roles the target allows or holds, with their source
--   initialize_migration_infrastructure() exercise every component in a rolled-back subtransaction
--   prepare_for_migration(text)           backup + backup validation + pre-migration validation
--   migration_runs(integer)               migration runs and rollbacks, newest first
--   users_on_legacy_roles()               users on a legacy role the mapping moves, counted in the table
--   migration_lock_holders()              backends holding the migration lock in this database
--   migration_state()                     not migrated / migrating / migrated / rolled back, and why
--   get_infrastructure_status()           what is installed, configured, backed up, running
--
-- Depends on: migration-logging-system.sql (schemas, target_config, new_roles, role_mapping,
-- migration_tracking.*), comprehensive-backup-system.sql (migration_backup.backup_log,
-- create_comprehensive_backup, validate_backup_completeness), migration-rollback-system.sql
-- (rollback_log) and migration-validation-functions.sql. PL/pgSQL binds late: only the tables must exist at
-- install time, and none is touched here at install time.

CREATE SCHEMA IF NOT EXISTS migration_control;

-- ------------------------------------------------------------------ helpers ----

CREATE OR REPLACE FUNCTION migration_control.verify_target(
    p_profiles_schema text, p_profiles_table text, p_key_column text, p_role_column text,
    p_sessions_schema text, p_sessions_table text, p_sessions_user_column text,
    p_policy_schemas text[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_profiles_oid oid;
    v_sessions_oid oid;
    v_missing      text;
    v_key_unique   boolean;
    v_role_type    oid;
    v_sessions_key text[];
BEGIN
    -- Checks that the target objects exist and fit the migration: both tables, their
    -- columns, a unique key column for keyset batching, a text-like or enum role column,
    -- a single-column primary key on the sessions table (returned), and the policy schemas.
    -- No sessions table (p_sessions_table NULL): the sessions checks are skipped, NULL returned.
    SELECT c.oid INTO v_profiles_oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_profiles_schema AND c.relname = p_profiles_table AND c.relkind IN ('r', 'p');
    IF v_profiles_oid IS NULL THEN
        RAISE EXCEPTION 'target table %.% does not exist', p_profiles_schema, p_profiles_table
            USING DETAIL = format('The profiles table is configured as %I.%I.', p_profiles_schema, p_profiles_table),
                  HINT = 'load the application schema first, or call migration_control.configure_target(p_profiles_table => ''schema.table'')';
    END IF;
    SELECT c.oid INTO v_sessions_oid
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = p_sessions_schema AND c.relname = p_sessions_table AND c.relkind IN ('r', 'p');
    IF v_sessions_oid IS NULL AND p_sessions_table IS NOT NULL THEN
        RAISE EXCEPTION 'target table %.% does not exist', p_sessions_schema, p_sessions_table
            USING DETAIL = format('The sessions table is configured as %I.%I.', p_sessions_schema, p_sessions_table),
                  HINT = 'load the application schema first, or call migration_control.configure_target(p_sessions_table => ''schema.table''), '
                         'or p_sessions_table => ''none'' when the application has no sessions table';
    END IF;

    SELECT string_agg(format('%s.%s.%s', w.sch, w.tab, w.col), ', ') INTO v_missing
    FROM (VALUES (v_profiles_oid, p_profiles_schema, p_profiles_table, p_key_column),
                 (v_profiles_oid, p_profiles_schema, p_profiles_table, p_role_column),
                 (v_sessions_oid, p_sessions_schema, p_sessions_table, p_sessions_user_column)) AS w(rel, sch, tab, col)
    WHERE w.rel IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = w.rel AND a.attname = w.col AND a.attnum > 0 AND NOT a.attisdropped);
    IF v_missing IS NOT NULL THEN
        RAISE EXCEPTION 'target column % does not exist', v_missing
            USING DETAIL = format('Configured key column %L, role column %L, sessions user column %L.',
                                  p_key_column, p_role_column, p_sessions_user_column),
                  HINT = 'call migration_control.configure_target with p_key_column, p_role_column or p_sessions_user_column naming existing columns';
    END IF;

    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid = v_profiles_oid AND i.indisunique AND i.indnkeyatts = 1
          AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = p_key_column)
    INTO v_key_unique;
    IF NOT v_key_unique THEN
        RAISE EXCEPTION 'key column %.%.% is not unique', p_profiles_schema, p_profiles_table, p_key_column
            USING DETAIL = 'The migration walks the users in batches by key (keyset pagination); that needs a single-column primary key or unique index.',
                  HINT = 'configure the primary key of the profiles table as p_key_column';
    END IF;

    SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END INTO v_role_type
    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = v_profiles_oid AND a.attname = p_role_column;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t WHERE t.oid = v_role_type
                   AND (t.typtype = 'e' OR t.oid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'name'::regtype))) THEN
        RAISE EXCEPTION 'role column %.%.% has type %, not text, varchar or an enum',
                p_profiles_schema, p_profiles_table, p_role_column, pg_catalog.format_type(v_role_type, NULL)
            USING DETAIL = 'Roles are compared as text and assigned by name.',
                  HINT = 'point p_role_column at the column holding the role name';
    END IF;

    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO v_sessions_key
    FROM pg_catalog.pg_constraint c
    JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
    WHERE c.conrelid = v_sessions_oid AND c.contype = 'p';
    IF v_sessions_oid IS NOT NULL AND (v_sessions_key IS NULL OR cardinality(v_sessions_key) <> 1) THEN
        RAISE EXCEPTION 'sessions table %.% has no single-column primary key', p_sessions_schema, p_sessions_table
            USING DETAIL = format('Primary key columns found: %s.', coalesce(array_to_string(v_sessions_key, ', '), 'none')),
                  HINT = 'the backup keys session rows by the primary key; add one or configure another sessions table';
    END IF;

    SELECT string_agg(s, ', ') INTO v_missing
    FROM unnest(p_policy_schemas) AS s
    WHERE s IS NULL OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = s);
    IF v_missing IS NOT NULL OR cardinality(p_policy_schemas) IS NULL THEN
        RAISE EXCEPTION 'policy schema(s) % do not exist', coalesce(v_missing, '(empty list)')
            USING DETAIL = format('p_policy_schemas = %L', p_policy_schemas),
                  HINT = 'list the schemas whose RLS policies name application roles, e.g. ARRAY[''public'',''auth'']';
    END IF;
    RETURN v_sessions_key[1];
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.migration_lock_holders()
RETURNS SETOF integer
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The backends holding the migration lock (the advisory lock on
    -- hashtext('pytest_rolemig.migration'), for a session or a transaction) in this database.
    -- Advisory locks belong to a database: a migration of another database of the same server
    -- (another application, a staging copy) neither blocks nor is reported here.
    SELECT l.pid
      FROM pg_catalog.pg_locks AS l
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                          WHERE d.datname = pg_catalog.current_database())
       AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtext('pytest_rolemig.migration')::bigint
$$;

-- ------------------------------------------------------------ configuration ----

DROP FUNCTION IF EXISTS migration_control.configure_target(text, text, text, text, text, text[], integer);

CREATE OR REPLACE FUNCTION migration_control.configure_target(
    p_profiles_table text DEFAULT 'public.user_profiles',
    p_key_column text DEFAULT 'id',
    p_role_column text DEFAULT 'role',
    p_sessions_table text DEFAULT 'auth.sessions',
    p_sessions_user_column text DEFAULT 'user_id',
    p_policy_schemas text[] DEFAULT ARRAY['public', 'auth'],
    p_batch_size integer DEFAULT 1000,
    p_user_column text DEFAULT NULL)
RETURNS TABLE(setting text, value text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_profiles     text[];
    v_sessions     text[];
    v_sessions_key text;
BEGIN
    -- Stores where the application keeps users, roles and sessions. Table names come as
    -- 'schema.table' (parse_ident, so quoted names work) and are stored as pairs; every
    -- object is checked before the singleton row is upserted, so a bad target never lands.
    -- p_sessions_table NULL, '' or 'none': the application has no sessions table.
    BEGIN
        v_profiles := pg_catalog.parse_ident(p_profiles_table);
        v_sessions := CASE WHEN coalesce(btrim(p_sessions_table), '') IN ('', 'none') THEN ARRAY[NULL, NULL]::text[]
                           ELSE pg_catalog.parse_ident(p_sessions_table) END;
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'cannot parse table name % / %', p_profiles_table, p_sessions_table
            USING DETAIL = SQLERRM, HINT = 'write tables as schema.table, e.g. public.user_profiles';
    END;
    IF cardinality(v_profiles) <> 2 OR cardinality(v_sessions) <> 2 THEN
        RAISE EXCEPTION 'table names must be schema-qualified: got % and %', p_profiles_table, p_sessions_table
            USING DETAIL = 'The target is stored as (schema, table) pairs.',
                  HINT = 'write tables as schema.table, e.g. public.user_profiles';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', p_batch_size
            USING DETAIL = 'p_batch_size is the number of users updated per batch.', HINT = 'use e.g. 1000';
    END IF;

    v_sessions_key := migration_control.verify_target(v_profiles[1], v_profiles[2], p_key_column, p_role_column,
                                                       v_sessions[1], v_sessions[2], p_sessions_user_column,
                                                       p_policy_schemas);
    IF p_user_column IS NOT NULL AND NOT EXISTS (
           SELECT 1 FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = pg_catalog.to_regclass(format('%I.%I', v_profiles[1], v_profiles[2]))
              AND a.attname = p_user_column AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'target column %.%.% does not exist', v_profiles[1], v_profiles[2], p_user_column
            USING DETAIL = format('Configured user column %L: the column holding the user''s id (the JWT sub).',
                                  p_user_column),
                  HINT = 'call migration_control.configure_target with p_user_column naming an existing column, '
                         'or NULL for the key column';
    END IF;

    INSERT INTO migration_control.target_config AS t
        (singleton, profiles_schema, profiles_table, key_column, role_column, sessions_schema,
         sessions_table, sessions_key_column, sessions_user_column, policy_schemas, batch_size, updated_at,
         user_column)
    VALUES (true, v_profiles[1], v_profiles[2], p_key_column, p_role_column, v_sessions[1],
            v_sessions[2], v_sessions_key, p_sessions_user_column, p_policy_schemas, p_batch_size, now(),
            nullif(p_user_column, p_key_column))
    ON CONFLICT (singleton) DO UPDATE
    SET profiles_schema = EXCLUDED.profiles_schema, profiles_table = EXCLUDED.profiles_table,
        key_column = EXCLUDED.key_column, role_column = EXCLUDED.role_column,
        user_column = EXCLUDED.user_column,
        sessions_schema = EXCLUDED.sessions_schema, sessions_table = EXCLUDED.sessions_table,
        sessions_key_column = EXCLUDED.sessions_key_column,
        sessions_user_column = EXCLUDED.sessions_user_column,
        policy_schemas = EXCLUDED.policy_schemas, batch_size = EXCLUDED.batch_size,
        updated_at = EXCLUDED.updated_at;

    RETURN QUERY
    SELECT s.k, s.v
    FROM migration_control.target_config t,
         LATERAL (VALUES ('profiles_table', format('%I.%I', t.profiles_schema, t.profiles_table)),
                         ('key_column', t.key_column), ('role_column', t.role_column),
                         ('user_column', coalesce(t.user_column, t.key_column)),
                         ('sessions_table', CASE WHEN t.sessions_table IS NULL THEN 'none' ELSE format('%I.%I', t.sessions_schema, t.sessions_table) END),
                         ('sessions_key_column', t.sessions_key_column),
                         ('sessions_user_column', t.sessions_user_column),
                         ('policy_schemas', array_to_string(t.policy_schemas, ',')),
                         ('batch_size', t.batch_size::text), ('auth_role', t.auth_role),
                         ('role_claim', t.role_claim)) AS s(k, v);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.configure_requests(
    p_auth_role text DEFAULT 'authenticated',
    p_anon_role text DEFAULT 'anon',
    p_jwt_claims jsonb DEFAULT NULL,
    p_pre_request text DEFAULT NULL)
RETURNS TABLE(setting text, value text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_proc text;
BEGIN
    -- Stores how a request becomes a user, as PostgREST does it: the API role requests switch
    -- to, the anonymous role, the JWT claims template ({user} / {role} replaced by the user's
    -- id and app role; NULL: Supabase's sub, role and the role claim) and the db-pre-request
    -- function, stored schema-qualified as the catalog names it. Run after configure_target.
    IF p_jwt_claims IS NOT NULL AND pg_catalog.jsonb_typeof(p_jwt_claims) <> 'object' THEN
        RAISE EXCEPTION 'JWT claims template must be a JSON object, got %', p_jwt_claims
            USING DETAIL = 'p_jwt_claims: the claims a request of a user carries ({user}, {role} are replaced).',
                  HINT = 'pass an object such as {"sub": "{user}", "app_role": "{role}"} '
                         '(--rolemig-jwt-claims / rolemig_jwt_claims, rolemig install --jwt-claims)';
    END IF;
    IF nullif(btrim(p_pre_request), '') IS NOT NULL THEN
        BEGIN
            SELECT format('%I.%I', n.nspname, f.proname) INTO v_proc
              FROM pg_catalog.pg_proc AS f JOIN pg_catalog.pg_namespace AS n ON n.oid = f.pronamespace
             WHERE f.oid = pg_catalog.to_regprocedure(p_pre_request || '()');
        EXCEPTION WHEN OTHERS THEN
            v_proc := NULL;
        END;
        IF v_proc IS NULL THEN
            RAISE EXCEPTION 'pre-request function %() does not exist', p_pre_request
                USING DETAIL = 'p_pre_request names the function called after the claims are set and the role '
                               'switched, as PostgREST''s db-pre-request (a function without arguments).',
                      HINT = 'create it or fix the name: --rolemig-pre-request / rolemig_pre_request, '
                             'rolemig install --pre-request';
        END IF;
    END IF;
    UPDATE migration_control.target_config AS t
       SET auth_role = coalesce(p_auth_role, 'authenticated'), anon_role = coalesce(p_anon_role, 'anon'),
           jwt_claims = p_jwt_claims, pre_request = v_proc, updated_at = now();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no target is configured'
            USING DETAIL = 'migration_control.target_config has no row.',
                  HINT = 'call migration_control.configure_target() first';
    END IF;
    RETURN QUERY
    SELECT s.k, s.v
    FROM migration_control.target_config t,
         LATERAL (VALUES ('auth_role', t.auth_role), ('anon_role', t.anon_role),
                         ('jwt_claims', coalesce(t.jwt_claims::text, 'default')),
                         ('pre_request', coalesce(t.pre_request, 'none'))) AS s(k, v);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.token_fields(p_user text)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_fields text;
    v_id_type text;
    v_result jsonb;
BEGIN
    -- What Supabase Auth copies from the user's auth.users row into every token it issues:
    -- email, phone, app_metadata (raw_app_meta_data), user_metadata (raw_user_meta_data) and
    -- is_anonymous, those of them the table has; SQL NULL columns are left out. A policy that
    -- reads auth.jwt() -> 'app_metadata' is measured with what the user's token really holds.
    -- '{}' without an auth.users table with an id column (a plain PostgREST application).
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO v_id_type
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = pg_catalog.to_regclass('auth.users') AND a.attname = 'id' AND NOT a.attisdropped;
    IF v_id_type IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    SELECT pg_catalog.string_agg(pg_catalog.format('(%L, pg_catalog.to_jsonb(u.%I))', f.claim, f.col), ', ' ORDER BY f.claim)
      INTO v_fields
      FROM (VALUES ('email', 'email'), ('phone', 'phone'), ('app_metadata', 'raw_app_meta_data'),
                   ('user_metadata', 'raw_user_meta_data'), ('is_anonymous', 'is_anonymous')) AS f(claim, col)
      JOIN pg_catalog.pg_attribute AS a
        ON a.attrelid = pg_catalog.to_regclass('auth.users') AND a.attname = f.col AND NOT a.attisdropped;
    IF v_fields IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT coalesce(pg_catalog.jsonb_object_agg(f.claim, f.value) FILTER (WHERE f.value IS NOT NULL), ''{}'')
           FROM auth.users AS u, LATERAL (VALUES %s) AS f(claim, value)
          WHERE u.id = $1::%s', v_fields, v_id_type)
      INTO v_result USING p_user;
    RETURN coalesce(v_result, '{}'::jsonb);
EXCEPTION WHEN invalid_text_representation OR cannot_coerce OR datatype_mismatch THEN
    RETURN '{}'::jsonb;  -- a user key that is no auth.users id: no such user, no token fields
END;
$$;
COMMENT ON FUNCTION migration_control.token_fields(text) IS
    'The claims Supabase Auth copies from auth.users into a user''s token (app_metadata, user_metadata, ...)';

CREATE OR REPLACE FUNCTION migration_control.request_claims(p_user text, p_role text)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The JWT claims of a request by user p_user holding app role p_role, as the platform
    -- builds them. No template (Supabase): sub, role (the API role), the role claim, and what
    -- Supabase Auth copies from auth.users (token_fields: app_metadata, user_metadata, email).
    -- A template: a value that is exactly "{user}" / "{role}" / "{app_metadata}" /
    -- "{user_metadata}" / "{email}" is replaced by the id / role / field (as JSON), and
    -- {user} / {role} inside a longer string by their text. Replacing in the canonical jsonb
    -- text is safe: JSON itself never spells {user} outside a string.
    SELECT CASE
        WHEN t.jwt_claims IS NULL
        THEN tf.j || pg_catalog.jsonb_build_object('sub', p_user, 'role', t.auth_role, t.role_claim, p_role)
        ELSE pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                 pg_catalog.replace(pg_catalog.replace(t.jwt_claims::text,
                 '"{user}"', pg_catalog.to_jsonb(p_user)::text),
                 '"{role}"', coalesce(pg_catalog.to_jsonb(p_role)::text, 'null')),
                 '"{app_metadata}"', coalesce((tf.j -> 'app_metadata')::text, 'null')),
                 '"{user_metadata}"', coalesce((tf.j -> 'user_metadata')::text, 'null')),
                 '"{email}"', coalesce((tf.j -> 'email')::text, 'null')),
                 '{user}', coalesce(pg_catalog.substr(u.j, 2, pg_catalog.length(u.j) - 2), '')),
                 '{role}', coalesce(pg_catalog.substr(r.j, 2, pg_catalog.length(r.j) - 2), ''))::jsonb
    END
    FROM migration_control.target_config AS t,
         LATERAL (SELECT pg_catalog.to_jsonb(p_user)::text) AS u(j),
         LATERAL (SELECT pg_catalog.to_jsonb(p_role)::text) AS r(j),
         LATERAL (SELECT CASE WHEN p_user IS NULL THEN '{}'::jsonb
                              ELSE migration_control.token_fields(p_user) END) AS tf(j)
$$;

CREATE OR REPLACE FUNCTION migration_control.ensure_target_configured()
RETURNS TABLE(setting text, value text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg migration_control.target_config;
BEGIN
    -- Makes sure a target row exists (the defaults describe a Supabase-style application)
    -- and that what it names is really there; run by the master setup script so an install
    -- on a database without the application fails with a clear message.
    INSERT INTO migration_control.target_config DEFAULT VALUES ON CONFLICT (singleton) DO NOTHING;
    SELECT * INTO v_cfg FROM migration_control.target_config;
    PERFORM migration_control.verify_target(v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.key_column,
                                            v_cfg.role_column, v_cfg.sessions_schema, v_cfg.sessions_table,
                                            v_cfg.sessions_user_column, v_cfg.policy_schemas);
    RETURN QUERY
    SELECT s.k, s.v
    FROM (VALUES ('profiles_table', format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table)),
                 ('key_column', v_cfg.key_column), ('role_column', v_cfg.role_column),
                 ('sessions_table', CASE WHEN v_cfg.sessions_table IS NULL THEN 'none' ELSE format('%I.%I', v_cfg.sessions_schema, v_cfg.sessions_table) END),
                 ('sessions_key_column', v_cfg.sessions_key_column),
                 ('sessions_user_column', v_cfg.sessions_user_column),
                 ('policy_schemas', array_to_string(v_cfg.policy_schemas, ',')),
                 ('batch_size', v_cfg.batch_size::text), ('auth_role', v_cfg.auth_role),
                 ('role_claim', v_cfg.role_claim)) AS s(k, v);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.users_moved_since_rollback()
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rolled_back_at timestamptz;
BEGIN
    -- Users whose role the migration changed after the newest completed rollback (any mode);
    -- 0 when none: then no migration is under way or in effect, and the mapping may change.
    -- rollback_log comes with a later install file (migration-rollback-system.sql): without
    -- it, no rollback ever ran.
    IF pg_catalog.to_regclass('migration_backup.rollback_log') IS NOT NULL THEN
        SELECT max(r.started_at) INTO v_rolled_back_at
          FROM migration_backup.rollback_log AS r
         WHERE r.status = 'completed';
    END IF;
    RETURN (SELECT count(DISTINCT l.user_key)
              FROM migration_tracking.migration_log AS l
             WHERE l.status = 'migrated' AND l.old_role IS DISTINCT FROM l.new_role
               AND (v_rolled_back_at IS NULL OR l.logged_at > v_rolled_back_at));
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.load_role_mapping(p_mapping jsonb, p_new_roles text[])
RETURNS TABLE(legacy_role text, new_role text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_bad     text;
    v_changed text;
    v_moved   bigint;
BEGIN
    -- Replaces the new roles and the legacy -> new mapping in one go, after checking the
    -- whole document: an object of non-empty names to non-empty strings, every target one
    -- of p_new_roles, p_new_roles non-empty and without duplicates. A different mapping is
    -- refused while a migration is under way or done and not rolled back: users already
    -- moved keep the old target, the rest would get the new one, and a legacy role's users
    -- would end up split between two new roles. Loading the same mapping again is allowed.
    IF p_new_roles IS NULL OR cardinality(p_new_roles) = 0 THEN
        RAISE EXCEPTION 'new roles list is empty'
            USING DETAIL = format('p_new_roles = %L', p_new_roles), HINT = 'pass the new role names, e.g. ARRAY[''owner'',''admin'']';
    END IF;
    SELECT string_agg(coalesce(quote_literal(r), 'NULL'), ', ') INTO v_bad
    FROM unnest(p_new_roles) AS r WHERE r IS NULL OR btrim(r) = '';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'new roles list contains empty names: %', v_bad
            USING DETAIL = format('p_new_roles = %L', p_new_roles), HINT = 'every new role needs a non-empty name';
    END IF;
    SELECT string_agg(r, ', ') INTO v_bad
    FROM (SELECT r FROM unnest(p_new_roles) AS r GROUP BY r HAVING count(*) > 1) d;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'new role(s) listed twice: %', v_bad
            USING DETAIL = format('p_new_roles = %L', p_new_roles), HINT = 'list each new role once';
    END IF;
    IF p_mapping IS NULL OR jsonb_typeof(p_mapping) <> 'object' OR p_mapping = '{}'::jsonb THEN
        RAISE EXCEPTION 'role mapping must be a non-empty JSON object, got %', coalesce(p_mapping::text, 'NULL')
            USING DETAIL = 'Expected {"legacy_role": "new_role", ...}.', HINT = 'pass one key per legacy role';
    END IF;
    SELECT string_agg(format('%s -> %s', quote_literal(e.key), e.value::text), ', ') INTO v_bad
    FROM jsonb_each(p_mapping) AS e
    WHERE btrim(e.key) = '' OR jsonb_typeof(e.value) <> 'string' OR btrim(e.value #>> '{}') = '';
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'role mapping has empty names or non-string values: %', v_bad
            USING DETAIL = 'Each legacy role maps to exactly one new role name (a string).',
                  HINT = 'fix these entries of the mapping';
    END IF;
    SELECT string_agg(format('%s -> %s', e.key, e.value), ', ' ORDER BY e.key) INTO v_bad
    FROM jsonb_each_text(p_mapping) AS e
    WHERE e.value <> ALL (p_new_roles);
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'role mapping targets outside the new roles: %', v_bad
            USING DETAIL = format('new roles: %s', array_to_string(p_new_roles, ', ')),
                  HINT = 'map every legacy role to one of the new roles, or add the target to the new roles';
    END IF;

    SELECT concat_ws('; ',
               (SELECT string_agg(format('%s: %s -> %s', coalesce(o.legacy_role, n.key),
                                         coalesce(o.new_role, 'unmapped'), coalesce(n.value, 'unmapped')),
                                  ', ' ORDER BY coalesce(o.legacy_role, n.key))
                  FROM migration_control.role_mapping AS o
                  FULL JOIN pg_catalog.jsonb_each_text(p_mapping) AS n ON n.key = o.legacy_role
                 WHERE o.new_role IS DISTINCT FROM n.value),
               (SELECT 'new roles ' || string_agg(CASE WHEN o.role_name IS NULL THEN '+' ELSE '-' END
                                                  || coalesce(o.role_name, n.r), ', '
                                                  ORDER BY coalesce(o.role_name, n.r))
                  FROM migration_control.new_roles AS o
                  FULL JOIN pg_catalog.unnest(p_new_roles) AS n(r) ON n.r = o.role_name
                 WHERE o.role_name IS NULL OR n.r IS NULL))
      INTO v_changed;
    IF v_changed <> '' THEN
        v_moved := migration_control.users_moved_since_rollback();
        IF v_moved > 0 THEN
            RAISE EXCEPTION 'cannot change the role mapping while a migration is in effect: %', v_changed
                USING DETAIL = format('%s users were moved under the loaded mapping and no rollback undid it; '
                                      'a new target would split a legacy role''s users between two new roles. '
                                      'Nothing was changed.', v_moved),
                      HINT = 'roll back first (migration_backup.execute_rollback), or finish the migration '
                             'with the mapping it started with';
        END IF;
    END IF;

    DELETE FROM migration_control.role_mapping;
    DELETE FROM migration_control.new_roles;
    INSERT INTO migration_control.new_roles (role_name, position)
    SELECT r, n::integer FROM unnest(p_new_roles) WITH ORDINALITY AS u(r, n);
    INSERT INTO migration_control.role_mapping (legacy_role, new_role)
    SELECT e.key, e.value FROM jsonb_each_text(p_mapping) AS e;

    RETURN QUERY
    SELECT m.legacy_role, m.new_role FROM migration_control.role_mapping m ORDER BY m.legacy_role;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.roles_in_data(OUT roles text[], OUT has_null boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg     migration_control.target_config;
    v_rel     oid;
    v_indexed boolean;
BEGIN
    -- The distinct roles the users of the profiles table hold (sorted, NULL left out) and
    -- whether any user has none. With a valid, non-partial btree index led by the role
    -- column: a loose index scan, one probe for "the next role after the last one found", so
    -- the answer costs about as many probes as there are roles; execute_role_migration asks on
    -- every call and `rolemig migrate` calls it once per batch (a pass over a million users
    -- is about 0.2 s, twice per call). Without such an index: one pass over the table.
    v_cfg := migration_validation.target();
    v_rel := to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table));
    SELECT EXISTS (
        SELECT 1
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
          JOIN pg_catalog.pg_am am ON am.oid = ic.relam
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = v_rel AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL
           AND a.attname = v_cfg.role_column AND i.indcollation[0] = a.attcollation)
      INTO v_indexed;
    IF v_indexed THEN
        EXECUTE format(
            'WITH RECURSIVE r(v) AS (
                 (SELECT t.%1$I FROM %2$I.%3$I AS t WHERE t.%1$I IS NOT NULL ORDER BY t.%1$I LIMIT 1)
                 UNION ALL
                 SELECT (SELECT t.%1$I FROM %2$I.%3$I AS t WHERE t.%1$I > r.v ORDER BY t.%1$I LIMIT 1)
                   FROM r WHERE r.v IS NOT NULL)
             SELECT coalesce(array_agg(r.v::text ORDER BY r.v), ''{}''),
                    EXISTS (SELECT 1 FROM %2$I.%3$I AS t WHERE t.%1$I IS NULL)
               FROM r WHERE r.v IS NOT NULL',
            v_cfg.role_column, v_cfg.profiles_schema, v_cfg.profiles_table)
        INTO roles, has_null;
    ELSE
        EXECUTE format(
            'SELECT coalesce(array_agg(DISTINCT t.%1$I::text) FILTER (WHERE t.%1$I IS NOT NULL), ''{}''),
                    coalesce(bool_or(t.%1$I IS NULL), false)
               FROM %2$I.%3$I AS t',
            v_cfg.role_column, v_cfg.profiles_schema, v_cfg.profiles_table)
        INTO roles, has_null;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.unknown_roles()
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg migration_control.target_config;
    v_bad text;
BEGIN
    -- The roles users hold that are neither legacy roles of the mapping nor new roles (NULL
    -- included), each with its number of users, e.g. 'intern' (3 users); NULL when there are
    -- none. Asked of the distinct roles first (roles_in_data: a few index probes); users are
    -- counted, with a pass over the table, only when some role is unknown. Both migration
    -- paths refuse to start on it.
    IF NOT EXISTS (SELECT 1 FROM migration_control.roles_in_data() AS d
                    WHERE d.has_null
                       OR EXISTS (SELECT 1 FROM unnest(d.roles) AS u(role)
                                   WHERE NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m
                                                      WHERE m.legacy_role = u.role)
                                     AND NOT EXISTS (SELECT 1 FROM migration_control.new_roles r
                                                      WHERE r.role_name = u.role))) THEN
        RETURN NULL;
    END IF;
    v_cfg := migration_validation.target();
    EXECUTE format(
        'SELECT string_agg(coalesce(quote_literal(s.r), ''NULL'') || '' ('' || s.n || '' users)'', '', '' ORDER BY s.r)
         FROM (SELECT t.%1$I::text AS r, count(*) AS n FROM %2$I.%3$I t
               WHERE t.%1$I IS NULL
                  OR (NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = t.%1$I::text)
                      AND NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = t.%1$I::text))
               GROUP BY 1) s',
        v_cfg.role_column, v_cfg.profiles_schema, v_cfg.profiles_table)
    INTO v_bad;
    RETURN v_bad;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.discover_legacy_roles()
RETURNS TABLE(role_name text, sources text[], mapped_to text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg       migration_control.target_config;
    v_rel       oid;
    v_attnum    smallint;
    v_typid     oid;
    v_data      text[];
    v_original  text[];
BEGIN
    -- Lists every role name the target allows or holds, so the mapping can be checked for
    -- completeness: enum labels of the role column, literals of single-column CHECK
    -- constraints on it, distinct values in the data, keys of the mapping. Names that are
    -- new roles only because the migration already ran (widened CHECK, migrated data) are
    -- left out: a new role that is not a mapping key and not in the original CHECK (the
    -- oldest completed backup's, else the current one) is not legacy. The oldest, because
    -- a migration needs a backup before its first batch, and a backup taken later (mid- or
    -- post-migration) holds the widened or narrowed CHECK that names the new roles. Enum
    -- labels that are new roles are also left out: an enum must carry the new roles before
    -- migrating.
    SELECT * INTO v_cfg FROM migration_control.target_config;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'migration target is not configured'
            USING DETAIL = 'migration_control.target_config has no row.',
                  HINT = 'call migration_control.configure_target() or migration_control.ensure_target_configured()';
    END IF;
    v_rel := to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table));
    IF v_rel IS NULL THEN
        RAISE EXCEPTION 'target table %.% does not exist', v_cfg.profiles_schema, v_cfg.profiles_table
            USING DETAIL = 'discover_legacy_roles reads the role column of the profiles table.',
                  HINT = 'load the application schema first, or call configure_target';
    END IF;
    SELECT a.attnum, a.atttypid INTO v_attnum, v_typid
    FROM pg_catalog.pg_attribute a WHERE a.attrelid = v_rel AND a.attname = v_cfg.role_column AND NOT a.attisdropped;

    SELECT nullif(r.roles, '{}') INTO v_data FROM migration_control.roles_in_data() AS r;

    IF EXISTS (SELECT 1 FROM migration_backup.backup_log b WHERE b.status = 'completed') THEN
        -- a migration can only have run after a backup: the first one's CHECK definitions are
        -- the original ones
        SELECT coalesce(array_agg(DISTINCT q.literal), '{}') INTO v_original
        FROM migration_backup.backup_log b,
             LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(b.target -> 'role_checks') = 'array'
                                               THEN b.target -> 'role_checks' ELSE '[]' END) AS rc,
             LATERAL migration_validation.quoted_literals(rc ->> 'definition') AS q
        WHERE b.backup_id = (SELECT b2.backup_id FROM migration_backup.backup_log b2
                             WHERE b2.status = 'completed' ORDER BY b2.created_at, b2.backup_id LIMIT 1);
    ELSE
        SELECT coalesce(array_agg(DISTINCT q.literal), '{}') INTO v_original
        FROM pg_catalog.pg_constraint c,
             LATERAL migration_validation.quoted_literals(pg_catalog.pg_get_constraintdef(c.oid)) AS q
        WHERE c.conrelid = v_rel AND c.contype = 'c' AND c.conkey = ARRAY[v_attnum];
    END IF;

    RETURN QUERY
    WITH found(name, source) AS (
        SELECT e.enumlabel::text, 'enum' FROM pg_catalog.pg_enum e WHERE e.enumtypid = v_typid
        UNION
        SELECT q.literal, 'check'
        FROM pg_catalog.pg_constraint c,
             LATERAL migration_validation.quoted_literals(pg_catalog.pg_get_constraintdef(c.oid)) AS q
        WHERE c.conrelid = v_rel AND c.contype = 'c' AND c.conkey = ARRAY[v_attnum]
        UNION
        SELECT d, 'data' FROM unnest(v_data) AS d
        UNION
        SELECT m.legacy_role, 'mapping' FROM migration_control.role_mapping m
    )
    SELECT f.name,
           array_agg(f.source ORDER BY array_position(ARRAY['enum','check','data','mapping'], f.source)),
           (SELECT m.new_role FROM migration_control.role_mapping m WHERE m.legacy_role = f.name)
    FROM found f
    WHERE NOT (EXISTS (SELECT 1 FROM migration_control.new_roles nr WHERE nr.role_name = f.name)
               AND NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = f.name)
               AND f.name <> ALL (coalesce(v_original, '{}')))
    GROUP BY f.name
    ORDER BY f.name;
END;
$$;

-- ---------------------------------------------------------- master control ----

CREATE OR REPLACE FUNCTION migration_control.initialize_migration_infrastructure()
RETURNS TABLE(component text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rows      jsonb := '[]'::jsonb;
    v_batch_id  text;
    v_user_key  text;
    v_cfg       migration_control.target_config;
    v_backup    record;
    v_n         bigint;
    v_fails     jsonb;
BEGIN
    -- Exercises each component for real (tracking, backup, validation, target, mapping)
    -- inside a subtransaction that is rolled back at the end, so nothing it does remains;
    -- each component is tried in its own nested block and reported pass/fail with the error.
    BEGIN
        BEGIN
            SELECT * INTO STRICT v_cfg FROM migration_control.target_config;
            PERFORM migration_control.verify_target(v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.key_column,
                        v_cfg.role_column, v_cfg.sessions_schema, v_cfg.sessions_table,
                        v_cfg.sessions_user_column, v_cfg.policy_schemas);
            v_rows := v_rows || jsonb_build_object('c', 'target', 's', 'pass', 'd',
                          jsonb_build_object('profiles_table', format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table),
                                             'sessions_table', CASE WHEN v_cfg.sessions_table IS NULL THEN 'none' ELSE format('%I.%I', v_cfg.sessions_schema, v_cfg.sessions_table) END));
        EXCEPTION WHEN OTHERS THEN
            v_rows := v_rows || jsonb_build_object('c', 'target', 's', 'fail', 'd', jsonb_build_object('error', SQLERRM));
        END;

        BEGIN
            SELECT count(*) INTO v_n FROM migration_control.discover_legacy_roles() d WHERE d.mapped_to IS NULL;
            v_rows := v_rows || jsonb_build_object('c', 'mapping',
                          's', CASE WHEN v_n = 0 AND EXISTS (SELECT 1 FROM migration_control.role_mapping) THEN 'pass' ELSE 'fail' END,
                          'd', jsonb_build_object('mapped_roles', (SELECT count(*) FROM migration_control.role_mapping),
                                                  'unmapped_roles', v_n));
        EXCEPTION WHEN OTHERS THEN
            v_rows := v_rows || jsonb_build_object('c', 'mapping', 's', 'fail', 'd', jsonb_build_object('error', SQLERRM));
        END;

        BEGIN
            v_user_key := 'initialize_check';
            v_batch_id := migration_tracking.start_migration_batch('infrastructure_check', 1, NULL, '{"check": true}'::jsonb);
            PERFORM migration_tracking.log_user_migration(v_batch_id, v_user_key, 'legacy', 'new', 'migrated', 'initialize check');
            SELECT c.processed_users INTO v_n FROM migration_tracking.complete_migration_batch(v_batch_id) c;
            v_rows := v_rows || jsonb_build_object('c', 'tracking', 's', CASE WHEN v_n = 1 THEN 'pass' ELSE 'fail' END,
                          'd', jsonb_build_object('batch_id', v_batch_id, 'processed_users', v_n));
        EXCEPTION WHEN OTHERS THEN
            v_rows := v_rows || jsonb_build_object('c', 'tracking', 's', 'fail', 'd', jsonb_build_object('error', SQLERRM));
        END;

        BEGIN
            SELECT * INTO v_backup FROM migration_backup.create_comprehensive_backup('infrastructure_check');
            SELECT coalesce(jsonb_agg(v.check_name), '[]') INTO v_fails
            FROM migration_backup.validate_backup_completeness(v_backup.backup_id) v WHERE v.status = 'fail';
            v_rows := v_rows || jsonb_build_object('c', 'backup',
                          's', CASE WHEN v_backup.status = 'completed' AND v_fails = '[]'::jsonb THEN 'pass' ELSE 'fail' END,
                          'd', jsonb_build_object('backup_id', v_backup.backup_id, 'backup_status', v_backup.status,
                                                  'profiles_count', v_backup.profiles_count,
                                                  'failed_checks', v_fails));
        EXCEPTION WHEN OTHERS THEN
            v_rows := v_rows || jsonb_build_object('c', 'backup', 's', 'fail', 'd', jsonb_build_object('error', SQLERRM));
        END;

        BEGIN
            SELECT count(*), coalesce(jsonb_agg(v.check_name) FILTER (WHERE v.status = 'fail'), '[]')
            INTO v_n, v_fails
            FROM migration_validation.validate_pre_migration_state() v;
            -- the validations ran; their verdict on the data is prepare_for_migration's business
            v_rows := v_rows || jsonb_build_object('c', 'validation', 's', 'pass',
                          'd', jsonb_build_object('checks_run', v_n, 'failing_checks', v_fails));
        EXCEPTION WHEN OTHERS THEN
            v_rows := v_rows || jsonb_build_object('c', 'validation', 's', 'fail', 'd', jsonb_build_object('error', SQLERRM));
        END;

        RAISE EXCEPTION USING ERRCODE = 'P0004', MESSAGE = 'rolemig: undo infrastructure check';
    EXCEPTION WHEN assert_failure THEN
        NULL;  -- everything above is rolled back; v_rows (a variable) survives
    END;

    RETURN QUERY
    SELECT r ->> 'c', r ->> 's', r -> 'd' || jsonb_build_object('rolled_back', true)
    FROM jsonb_array_elements(v_rows) AS r;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.prepare_for_migration(p_migration_name text DEFAULT 'role_system_migration')
RETURNS TABLE(step text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_backup  record;
    v_checks  jsonb;
BEGIN
    -- Takes the pre-migration backup, validates it, and runs (and records) the
    -- pre-migration validation; a step that fails is reported, not raised, so the operator
    -- sees every problem at once. The last step, 'ready', passes only if nothing failed.
    IF p_migration_name IS NULL OR btrim(p_migration_name) = '' THEN
        RAISE EXCEPTION 'migration name must not be empty, got %', coalesce(quote_literal(p_migration_name), 'NULL')
            USING DETAIL = 'The name labels the backup and the migration batches.', HINT = 'use e.g. ''role_system_migration''';
    END IF;
    SELECT * INTO v_backup FROM migration_backup.create_comprehensive_backup(p_migration_name || '_backup');
    step := 'backup';
    status := CASE WHEN v_backup.status = 'completed' THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('backup_id', v_backup.backup_id, 'backup_status', v_backup.status,
                                  'profiles_count', v_backup.profiles_count, 'sessions_count', v_backup.sessions_count,
                                  'policies_count', v_backup.policies_count);
    RETURN NEXT;

    SELECT jsonb_agg(jsonb_build_object('check_name', v.check_name, 'status', v.status, 'details', v.details))
    INTO v_checks FROM migration_backup.validate_backup_completeness(v_backup.backup_id) v;
    step := 'backup_validation';
    status := CASE WHEN v_checks @> '[{"status":"fail"}]' THEN 'fail'
                   WHEN v_checks @> '[{"status":"warn"}]' THEN 'warn' ELSE 'pass' END;
    details := jsonb_build_object('backup_id', v_backup.backup_id, 'checks', coalesce(v_checks, '[]'));
    RETURN NEXT;

    SELECT jsonb_agg(jsonb_build_object('validation_type', v.validation_type, 'check_name', v.check_name,
                                        'status', v.status, 'details', v.details))
    INTO v_checks FROM migration_validation.run_comprehensive_validation('pre_migration') v;
    step := 'pre_migration_validation';
    status := CASE WHEN v_checks @> '[{"status":"fail"}]' THEN 'fail'
                   WHEN v_checks @> '[{"status":"warn"}]' THEN 'warn' ELSE 'pass' END;
    details := jsonb_build_object('migration_name', p_migration_name,
                                  'failing', (SELECT coalesce(jsonb_agg(c), '[]') FROM jsonb_array_elements(v_checks) c
                                              WHERE c ->> 'status' = 'fail'),
                                  'checks', coalesce(v_checks, '[]'));
    RETURN NEXT;

    step := 'ready';
    SELECT CASE WHEN bool_or(s.status = 'fail') THEN 'fail' ELSE 'pass' END INTO status
    FROM (VALUES (CASE WHEN v_backup.status = 'completed' THEN 'pass' ELSE 'fail' END),
                 (CASE WHEN v_checks @> '[{"status":"fail"}]' THEN 'fail' ELSE 'pass' END)) AS s(status);
    details := jsonb_build_object('backup_id', v_backup.backup_id, 'migration_name', p_migration_name,
                                  'next', format('SELECT * FROM migration_control.execute_role_migration(%L, p_backup_id => %L)',
                                                 p_migration_name, v_backup.backup_id));
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.migration_runs(p_limit integer DEFAULT 20)
RETURNS TABLE(kind text, id text, started_at timestamptz, finished_at timestamptz, status text,
              batches bigint, users bigint, backup_id text, error text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Migration runs and rollbacks, newest first: one row per run (its batches summed, never
    -- across runs) and per rollback. A run's users are those whose role its batches changed;
    -- a rollback's, the profiles it restored. Status of a run: failed if a batch failed,
    -- running if one still runs, rolled back if a rollback closed it, else completed.
    SELECT x.kind, x.id, x.started_at, x.finished_at, x.status, x.batches, x.users, x.backup_id, x.error
    FROM (SELECT CASE WHEN bool_or(b.details ->> 'mode' = 'online') THEN 'online migration'
                      ELSE 'migration' END AS kind,
                 b.run_id AS id, min(b.started_at) AS started_at, max(b.completed_at) AS finished_at,
                 CASE WHEN bool_or(b.status = 'failed') THEN 'failed'
                      WHEN bool_or(b.status = 'running') THEN 'running'
                      WHEN bool_or(b.status = 'rolled_back') THEN 'rolled back'
                      ELSE 'completed' END AS status,
                 count(*) FILTER (WHERE b.details ->> 'phase' = 'migrate' AND b.status = 'completed') AS batches,
                 coalesce(sum((b.details ->> 'migrated')::bigint) FILTER (WHERE b.status = 'completed'), 0) AS users,
                 max(b.details ->> 'backup_id') AS backup_id,
                 max(b.error) AS error
          FROM migration_tracking.migration_batch b
          GROUP BY b.run_id
          UNION ALL
          SELECT CASE r.mode WHEN 'emergency' THEN 'emergency rollback' ELSE 'rollback' END,
                 r.rollback_id, r.started_at, r.completed_at, r.status, NULL::bigint, r.profiles_restored,
                 r.backup_id, r.error
          FROM migration_backup.rollback_log r) AS x
    ORDER BY x.started_at DESC, x.id DESC
    LIMIT p_limit
$$;

CREATE OR REPLACE FUNCTION migration_control.users_on_legacy_roles()
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in execute_role_migration: count every user, not a subset
AS $$
DECLARE
    v_cfg migration_control.target_config := migration_validation.target();
    v_count bigint;
BEGIN
    -- The users on a legacy role the mapping moves to another name, counted in the table: what
    -- migration_state reports, and what `rolemig migrate` prints after its run.
    EXECUTE format('SELECT count(*) FROM %I.%I AS t JOIN migration_control.role_mapping AS m
                      ON m.legacy_role = t.%I::text WHERE m.new_role <> m.legacy_role',
                   v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.role_column)
    INTO v_count;
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.migration_state(
    OUT state text, OUT users_on_legacy_roles bigint, OUT users_moved bigint,
    OUT policies_naming_legacy_roles bigint, OUT last_rollback text, OUT detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in execute_role_migration: count every user, not a subset
AS $$
BEGIN
    -- What the database is in now, in one word an operator acts on:
    --   not migrated  nobody moved since the last completed rollback, and none ever did
    --   rolled back   nobody moved since the last completed rollback, which undid a migration
    --   migrating     users moved since then, and users or policies still carry legacy names
    --   migrated      users moved, nobody is left on a legacy role, policies name new roles only
    -- Derived from the logs and the data, never stored, so a client killed mid-command (the
    -- server committed or rolled back its statement) leaves nothing stale behind.
    users_on_legacy_roles := migration_control.users_on_legacy_roles();
    users_moved := migration_control.users_moved_since_rollback();
    SELECT count(DISTINCT (m.schema_name, m.table_name, m.policy_name)) INTO policies_naming_legacy_roles
    FROM (SELECT t.schema_name, t.table_name, p.polname AS policy_name
          FROM migration_validation.migrated_tables() t
          JOIN pg_catalog.pg_policy p ON p.polrelid = t.table_oid
          CROSS JOIN LATERAL (VALUES (pg_catalog.pg_get_expr(p.polqual, p.polrelid)),
                                     (pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))) AS x(expr)
          CROSS JOIN LATERAL migration_validation.quoted_literals(x.expr) AS q
          JOIN migration_control.role_mapping rm ON rm.legacy_role = q.literal AND rm.new_role <> rm.legacy_role
          WHERE NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = q.literal)) AS m;
    SELECT r.rollback_id INTO last_rollback FROM migration_backup.rollback_log r
    WHERE r.status = 'completed' ORDER BY r.started_at DESC LIMIT 1;

    IF users_moved = 0 THEN
        state := CASE WHEN last_rollback IS NOT NULL THEN 'rolled back' ELSE 'not migrated' END;
        detail := CASE WHEN last_rollback IS NOT NULL
                       THEN format('rollback %s restored the state before the migration', last_rollback)
                       ELSE 'no user has been moved' END;
    ELSIF users_on_legacy_roles > 0 THEN
        state := 'migrating';
        detail := format('%s users moved, %s still on a legacy role', users_moved, users_on_legacy_roles);
    ELSIF policies_naming_legacy_roles > 0 THEN
        state := 'migrating';
        detail := format('every user moved; %s policies still accept legacy role names', policies_naming_legacy_roles);
    ELSE
        state := 'migrated';
        detail := format('%s users moved; policies name new roles only', users_moved);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.get_infrastructure_status()
RETURNS TABLE(component text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_missing jsonb;
    v_cfg     migration_control.target_config;
    v_n       bigint;
    v_m       bigint;
BEGIN
    -- Reports what is installed and in what state, never raising: schemas, tables and
    -- functions of the contract (missing ones listed), the target, the mapping, backups and
    -- running migrations. Each component is read in its own block so one broken piece
    -- does not hide the others.
    SELECT coalesce(jsonb_agg(s), '[]') INTO v_missing
    FROM unnest(ARRAY['migration_tracking','migration_backup','migration_validation','migration_control']) AS s
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = s);
    RETURN QUERY SELECT 'schemas'::text, CASE WHEN v_missing = '[]' THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('expected', 4, 'missing', v_missing);

    SELECT coalesce(jsonb_agg(t), '[]') INTO v_missing
    FROM unnest(ARRAY['migration_control.target_config','migration_control.new_roles','migration_control.role_mapping',
                      'migration_tracking.migration_batch','migration_tracking.migration_log',
                      'migration_tracking.rls_policy_changes','migration_backup.backup_log',
                      'migration_backup.user_profiles_complete_backup','migration_backup.user_sessions_backup',
                      'migration_backup.rls_policies_backup','migration_backup.rollback_log',
                      'migration_validation.validation_results']) AS t
    WHERE to_regclass(t) IS NULL;
    RETURN QUERY SELECT 'tables'::text, CASE WHEN v_missing = '[]' THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('expected', 12, 'missing', v_missing);

    SELECT coalesce(jsonb_agg(f), '[]') INTO v_missing
    FROM unnest(ARRAY['migration_tracking.start_migration_batch','migration_tracking.log_user_migration',
                      'migration_tracking.complete_migration_batch','migration_tracking.get_migration_status',
                      'migration_backup.create_comprehensive_backup','migration_backup.validate_backup_completeness',
                      'migration_backup.get_backup_summary','migration_backup.execute_rollback',
                      'migration_backup.emergency_rollback','migration_backup.validate_rollback_success',
                      'migration_backup.list_available_backups',
                      'migration_validation.validate_pre_migration_state','migration_validation.validate_post_migration_state',
                      'migration_validation.test_user_authentication','migration_validation.validate_rls_policies',
                      'migration_validation.run_comprehensive_validation',
                      'migration_control.configure_target','migration_control.ensure_target_configured',
                      'migration_control.load_role_mapping','migration_control.discover_legacy_roles',
                      'migration_control.initialize_migration_infrastructure','migration_control.prepare_for_migration',
                      'migration_control.get_infrastructure_status','migration_control.execute_role_migration',
                      'migration_control.rewrite_role_literals']) AS f
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                      WHERE n.nspname = split_part(f, '.', 1) AND p.proname = split_part(f, '.', 2));
    RETURN QUERY SELECT 'functions'::text, CASE WHEN v_missing = '[]' THEN 'pass' ELSE 'fail' END,
                        jsonb_build_object('expected', 25, 'missing', v_missing);

    BEGIN
        SELECT * INTO v_cfg FROM migration_control.target_config;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'target'::text, 'fail'::text,
                jsonb_build_object('error', 'not configured', 'hint', 'call migration_control.configure_target()');
        ELSE
            PERFORM migration_control.verify_target(v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.key_column,
                        v_cfg.role_column, v_cfg.sessions_schema, v_cfg.sessions_table,
                        v_cfg.sessions_user_column, v_cfg.policy_schemas);
            RETURN QUERY SELECT 'target'::text, 'pass'::text, to_jsonb(v_cfg);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'target'::text, 'fail'::text, jsonb_build_object('error', SQLERRM, 'config', to_jsonb(v_cfg));
    END;

    BEGIN
        SELECT count(*) INTO v_n FROM migration_control.role_mapping;
        SELECT coalesce(jsonb_agg(d.role_name), '[]') INTO v_missing
        FROM migration_control.discover_legacy_roles() d WHERE d.mapped_to IS NULL;
        RETURN QUERY SELECT 'mapping'::text,
            CASE WHEN v_n = 0 OR v_missing <> '[]' THEN 'fail' ELSE 'pass' END,
            jsonb_build_object('legacy_roles', v_n,
                               'new_roles', (SELECT count(*) FROM migration_control.new_roles),
                               'unmapped_roles', v_missing);
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'mapping'::text, 'fail'::text, jsonb_build_object('error', SQLERRM);
    END;

    BEGIN
        SELECT count(*) FILTER (WHERE b.status = 'completed'), count(*) INTO v_n, v_m FROM migration_backup.backup_log b;
        RETURN QUERY SELECT 'backups'::text, CASE WHEN v_n > 0 THEN 'pass' ELSE 'warn' END,
            jsonb_build_object('completed', v_n, 'total', v_m,
                               'newest_completed', (SELECT b.backup_id FROM migration_backup.backup_log b
                                                    WHERE b.status = 'completed'
                                                    ORDER BY b.created_at DESC, b.backup_id DESC LIMIT 1),
                               'hint', CASE WHEN v_n = 0 THEN 'no backup yet: run migration_control.prepare_for_migration()' END);
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'backups'::text, 'fail'::text, jsonb_build_object('error', SQLERRM);
    END;

    BEGIN
        SELECT count(*) INTO v_n FROM migration_tracking.migration_batch b WHERE b.status = 'running';
        SELECT count(*) INTO v_m FROM migration_control.migration_lock_holders();
        RETURN QUERY SELECT 'migrations'::text, CASE WHEN v_n = 0 AND v_m = 0 THEN 'pass' ELSE 'warn' END,
            jsonb_build_object('running_batches', v_n, 'lock_held', v_m > 0,
                               'runs', (SELECT count(DISTINCT b.run_id) FROM migration_tracking.migration_batch b),
                               'failed_batches', (SELECT count(*) FROM migration_tracking.migration_batch b
                                                  WHERE b.status = 'failed'));
    EXCEPTION WHEN OTHERS THEN
        RETURN QUERY SELECT 'migrations'::text, 'fail'::text, jsonb_build_object('error', SQLERRM);
    END;
END;
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_control FROM PUBLIC;
