-- Migration validation functions: every check the rehearsal runs before and after the
-- migration, each returning rows (check_name, status 'pass'|'fail'|'warn', details jsonb),
-- and a results table that keeps every run.
--
-- Provides (schema migration_validation):
--   validation_results                       stored rows of run_comprehensive_validation
--   quoted_literals(text)                    the string literals of a deparsed expression
--   migrated_tables()                        tables in policy_schemas with RLS or policies + profiles
--   policy_role_literals()                   each quoted role name in a policy of those tables
--   pre_migration_role_checks(target_config) no NULL and no unknown roles, from one pass over the users
--   pre_migration_mapping_checks()           every legacy role mapped, every mapping onto a new role
--   backup_failing_checks(text, target)      the failing rows of a backup's completeness checks
--   validate_pre_migration_state()           target, mapping, data, backup, nothing running
--   key_hash_sql(...), key_is_unique(...)    key hashes for comparing a copy with its live table by sums
--   absent_users(text[], text[])             backed-up users gone, and whether merged away (log)
--   post_migration_user_counts(...)          the user counts: hash sums when equal, else a join
--   post_migration_user_checks(...)          users on new roles as mapped, none lost
--   post_migration_policy_check()            no legacy-only role left in a policy
--   post_migration_sessions_check(...)       every backed-up session still there
--   validate_post_migration_state(text)      data vs backup and mapping, policies, sessions
--   auth_lookup_predicates(target_config)    how a logged-in user's own profile and sessions are read
--   auth_log_in_sample(...)                  logs in as each sampled user, records what they could read
--   test_user_authentication(integer)        sample users read their own rows under RLS
--   validate_rls_policies(text)              RLS enabled, policy role names fit the phase
--   run_comprehensive_validation(text)       the checks of a phase, stored
--   role_rank_comparisons()                  policies and functions that order an enum role by rank
--   role_dependent_objects()                 policies, views, functions whose answer depends on a role
--
-- Depends on: migration-logging-system.sql (schemas, migration_control.target_config,
-- new_roles, role_mapping, migration_tracking.migration_batch), comprehensive-backup-system.sql
-- (backup_log, user_profiles_complete_backup, user_sessions_backup, validate_backup_completeness),
-- migration-rollback-system.sql (rollback_log, validate_rollback_success) and, at run time,
-- migration-control-system.sql (discover_legacy_roles, verify_target).

CREATE SCHEMA IF NOT EXISTS migration_validation;

CREATE TABLE IF NOT EXISTS migration_validation.validation_results (
    result_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    validation_run  text NOT NULL,
    validation_type text NOT NULL,
    check_name      text NOT NULL,
    status          text NOT NULL,
    details         jsonb,
    checked_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS validation_results_run_idx ON migration_validation.validation_results (validation_run);

-- ------------------------------------------------------------------ helpers ----

CREATE OR REPLACE FUNCTION migration_validation.quoted_literals(p_expr text)
RETURNS TABLE(literal text, ordinality bigint)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The values of the single-quoted string literals of a deparsed expression, in order.
    -- Double-quoted identifiers are matched (and skipped) so a quote inside one cannot
    -- start a false literal; doubled quotes inside a literal are un-doubled.
    SELECT replace(substr(m.tok[1], 2, length(m.tok[1]) - 2), '''''', ''''), m.n
    FROM pg_catalog.regexp_matches(coalesce(p_expr, ''),
             '"(?:[^"]|"")*"|''(?:[^'']|'''')*''|[^''"]+', 'g') WITH ORDINALITY AS m(tok, n)
    WHERE left(m.tok[1], 1) = ''''
$$;

CREATE OR REPLACE FUNCTION migration_validation.target()
RETURNS migration_control.target_config
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg migration_control.target_config;
BEGIN
    -- The configured target, or a clear error when there is none.
    SELECT * INTO v_cfg FROM migration_control.target_config;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'migration target is not configured'
            USING DETAIL = 'migration_control.target_config has no row.',
                  HINT = 'call migration_control.configure_target() or migration_control.ensure_target_configured()';
    END IF;
    RETURN v_cfg;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.migrated_tables()
RETURNS TABLE(schema_name text, table_name text, table_oid oid, rls_enabled boolean, rls_forced boolean,
              policy_count integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The tables the migration may touch: every table of the policy schemas that has RLS
    -- enabled or a policy, plus the profiles table.
    SELECT n.nspname::text, c.relname::text, c.oid, c.relrowsecurity, c.relforcerowsecurity,
           (SELECT count(*)::integer FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    CROSS JOIN migration_control.target_config t
    WHERE c.relkind IN ('r', 'p')
      AND ((n.nspname = ANY (t.policy_schemas)
            AND (c.relrowsecurity OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)))
           OR (n.nspname = t.profiles_schema AND c.relname = t.profiles_table))
    ORDER BY 1, 2
$$;

CREATE OR REPLACE FUNCTION migration_validation.policy_role_literals()
RETURNS TABLE(schema_name text, table_name text, policy_name text, clause text, role_name text,
              is_legacy boolean, is_new boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Every quoted literal in a USING / WITH CHECK expression of a policy of the migrated
    -- tables that names a role (legacy or new). Literals that are not role names (claim
    -- names such as 'user_role', statuses) are not listed.
    SELECT t.schema_name, t.table_name, p.polname::text, x.clause, q.literal,
           EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = q.literal),
           EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = q.literal)
    FROM migration_validation.migrated_tables() t
    JOIN pg_catalog.pg_policy p ON p.polrelid = t.table_oid
    CROSS JOIN LATERAL (VALUES ('using', pg_catalog.pg_get_expr(p.polqual, p.polrelid)),
                               ('check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))) AS x(clause, expr)
    CROSS JOIN LATERAL migration_validation.quoted_literals(x.expr) AS q
    WHERE x.expr IS NOT NULL
      AND (EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = q.literal)
           OR EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = q.literal))
$$;

CREATE OR REPLACE FUNCTION migration_validation.policy_legacy_mentions()
RETURNS TABLE(schema_name text, table_name text, policy_name text, clause text, role_name text,
              literal text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Legacy-only role names hidden inside a policy literal in a form the rewrite does not
    -- touch: another case ('BILLING_ADMIN'), an array literal ('{super_admin,team_lead}'),
    -- a pattern ('%org_owner%'). Matched as a whole word, case-insensitively, only inside
    -- quoted literals, so identifiers such as author_id never count.
    SELECT t.schema_name, t.table_name, p.polname::text, x.clause, m.legacy_role, q.literal
    FROM migration_validation.migrated_tables() t
    JOIN pg_catalog.pg_policy p ON p.polrelid = t.table_oid
    CROSS JOIN LATERAL (VALUES ('using', pg_catalog.pg_get_expr(p.polqual, p.polrelid)),
                               ('check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))) AS x(clause, expr)
    CROSS JOIN LATERAL migration_validation.quoted_literals(x.expr) AS q
    JOIN migration_control.role_mapping m
      ON q.literal <> m.legacy_role
     AND pg_catalog.lower(q.literal) ~ ('\m' || pg_catalog.regexp_replace(pg_catalog.lower(m.legacy_role),
                                                               '([^a-z0-9_])', '\\\1', 'g') || '\M')
    WHERE x.expr IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = m.legacy_role)
$$;

-- ---------------------------------------------------------- role mentions ----

CREATE OR REPLACE FUNCTION migration_validation.application_objects()
RETURNS TABLE(object_kind text, object_name text, definition text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The definitions of the application's own objects where a role name can hide: policies,
    -- function and procedure bodies, views, column defaults, CHECK constraints (tables and
    -- domains), indexes (expressions and predicates), triggers and rules. System schemas,
    -- the infrastructure's schemas and objects owned by extensions are left out. Names are
    -- spelled as SQL spells them, so a team can copy one into [acknowledged_mentions].
    WITH app_ns AS (
        SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'migration_tracking',
                                'migration_backup', 'migration_validation', 'migration_control')
          AND n.nspname NOT LIKE 'pg\_%'
    ),
    ext AS (  -- objects created by an extension (pgcrypto's functions, moddatetime, ...)
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d WHERE d.deptype = 'e'
    )
    SELECT 'policy', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, p.polname),
           concat_ws(' WITH CHECK ', pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                     pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
      FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
      JOIN app_ns n ON n.oid = c.relnamespace
    UNION ALL
    SELECT CASE f.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END,
           pg_catalog.format('%I.%I', n.nspname, f.proname),
           pg_catalog.regexp_replace(f.prosrc, '--[^\n]*', '', 'g')  -- comments hold apostrophes
      FROM pg_catalog.pg_proc f JOIN app_ns n ON n.oid = f.pronamespace
      JOIN pg_catalog.pg_language l ON l.oid = f.prolang
     WHERE l.lanname NOT IN ('c', 'internal')
       AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_proc'::regclass AND ext.objid = f.oid)
    UNION ALL
    SELECT CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
           pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.pg_get_viewdef(c.oid)
      FROM pg_catalog.pg_class c JOIN app_ns n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('v', 'm')
       AND NOT EXISTS (SELECT 1 FROM ext WHERE ext.classid = 'pg_catalog.pg_class'::regclass AND ext.objid = c.oid)
    UNION ALL
    SELECT 'column default', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, a.attname),
           pg_catalog.pg_get_expr(d.adbin, d.adrelid)
      FROM pg_catalog.pg_attrdef d JOIN pg_catalog.pg_class c ON c.oid = d.adrelid
      JOIN app_ns n ON n.oid = c.relnamespace
      JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
    UNION ALL
    SELECT 'check constraint',
           pg_catalog.format('%I.%I.%I', n.nspname, coalesce(c.relname, t.typname), k.conname),
           pg_catalog.pg_get_constraintdef(k.oid)
      FROM pg_catalog.pg_constraint k
      LEFT JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
      LEFT JOIN pg_catalog.pg_type t ON t.oid = k.contypid
      JOIN app_ns n ON n.oid = k.connamespace
     WHERE k.contype = 'c'
    UNION ALL
    SELECT 'index', pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
      JOIN app_ns n ON n.oid = c.relnamespace
     WHERE i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
    UNION ALL
    SELECT 'trigger', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, g.tgname), pg_catalog.pg_get_triggerdef(g.oid)
      FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid
      JOIN app_ns n ON n.oid = c.relnamespace
     WHERE NOT g.tgisinternal
    UNION ALL
    SELECT 'rule', pg_catalog.format('%I.%I.%I', n.nspname, c.relname, r.rulename), pg_catalog.pg_get_ruledef(r.oid)
      FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
      JOIN app_ns n ON n.oid = c.relnamespace
     WHERE r.rulename <> '_RETURN'
$$;

CREATE OR REPLACE FUNCTION migration_validation.find_role_mentions()
RETURNS TABLE(object_kind text, object_name text, role_name text, context text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- a row hidden by a policy still holds the name
AS $$
DECLARE
    v_cfg    migration_control.target_config;
    v_legacy text[];
    v_col    record;
    v_sql    text;
BEGIN
    -- Every place outside the role column where a legacy-only role name (a legacy role that
    -- is not also a new role) still appears: quoted literals in the definitions of
    -- application_objects(), labels of enum types other than the role column's own, and
    -- values in the data of the application's tables (text and enum columns, text arrays,
    -- json strings at any depth, e.g. auth.users.raw_app_meta_data). Before a migration it
    -- says where the roles live; after it, each row is a place the migration did not reach.
    v_cfg := migration_validation.target();
    SELECT array_agg(m.legacy_role ORDER BY m.legacy_role) INTO v_legacy
      FROM migration_control.role_mapping m
     WHERE NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = m.legacy_role);
    IF v_legacy IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
    SELECT o.object_kind, o.object_name, l.role,
           pg_catalog.regexp_replace(substr(o.definition, greatest(1, strpos(o.definition, q.literal) - 40),
                                            length(q.literal) + 80), '\s+', ' ', 'g')
      FROM migration_validation.application_objects() o
      CROSS JOIN LATERAL migration_validation.quoted_literals(o.definition) q
      JOIN unnest(v_legacy) AS l(role)
        ON pg_catalog.lower(q.literal) ~ ('\m' || pg_catalog.regexp_replace(pg_catalog.lower(l.role),
                                                                  '([^a-z0-9_])', '\\\1', 'g') || '\M')
     WHERE o.definition IS NOT NULL
     GROUP BY 1, 2, 3, 4;

    RETURN QUERY
    SELECT 'enum type', pg_catalog.format('%I.%I', n.nspname, t.typname), e.enumlabel::text,
           'label ' || quote_literal(e.enumlabel)
      FROM pg_catalog.pg_enum e JOIN pg_catalog.pg_type t ON t.oid = e.enumtypid
      JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
     WHERE e.enumlabel = ANY (v_legacy)
       AND n.nspname NOT LIKE 'migration\_%'
       AND t.oid IS DISTINCT FROM (
           SELECT a.atttypid FROM pg_catalog.pg_attribute a
            WHERE a.attrelid = pg_catalog.format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table)::regclass
              AND a.attname = v_cfg.role_column);

    FOR v_col IN
        SELECT n.nspname, c.relname, a.attname, t.typtype, t.typcategory, t.typname,
               coalesce(et.typcategory, '') AS elem_category
          FROM pg_catalog.pg_attribute a
          JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
          LEFT JOIN pg_catalog.pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
         WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'migration_tracking',
                                 'migration_backup', 'migration_validation', 'migration_control')
           AND n.nspname NOT LIKE 'pg\_%'
           AND NOT (n.nspname = v_cfg.profiles_schema AND c.relname = v_cfg.profiles_table
                    AND a.attname = v_cfg.role_column)
           AND (t.typcategory = 'S' OR t.typtype = 'e' OR t.typname IN ('json', 'jsonb')
                OR (t.typcategory = 'A' AND (et.typcategory = 'S' OR et.typtype = 'e')))
         ORDER BY 1, 2, 3
    LOOP
        v_sql := CASE
            WHEN v_col.typname IN ('json', 'jsonb') THEN pg_catalog.format(
                'SELECT x #>> ''{}'' FROM %I.%I, jsonb_path_query(%I::jsonb, ''strict $.**'') AS x '
                'WHERE jsonb_typeof(x) = ''string'' AND x #>> ''{}'' = ANY ($1)',
                v_col.nspname, v_col.relname, v_col.attname)
            WHEN v_col.typcategory = 'A' THEN pg_catalog.format(
                'SELECT u FROM %I.%I, unnest(%I::text[]) AS u WHERE u = ANY ($1)',
                v_col.nspname, v_col.relname, v_col.attname)
            ELSE pg_catalog.format('SELECT %I::text FROM %I.%I WHERE %I::text = ANY ($1)',
                                   v_col.attname, v_col.nspname, v_col.relname, v_col.attname)
        END;
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT ''data''::text, %L::text, v::text, count(*) || '' row(s) hold '' || quote_literal(v) '
            'FROM (%s) AS f(v) GROUP BY v ORDER BY v',
            pg_catalog.format('%I.%I.%I', v_col.nspname, v_col.relname, v_col.attname), v_sql)
        USING v_legacy;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.role_dependent_objects()
RETURNS TABLE(object_kind text, object_name text, relation text, command text, api_roles text[],
              expression text, roles text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- What the API answers differently by role: permissive policies with a USING expression
    -- on tables of the policy schemas, views and argument-free functions of those schemas,
    -- whose definition names a role (legacy or new) in a quoted literal or that call a
    -- function whose body does. The access matrix checks that each lets some role in: one
    -- false for every user proves nothing about the migration (the probe's claims may not be
    -- the ones the application's tokens carry). relation is schema.name as the matrix names it.
    WITH cfg AS (SELECT t.policy_schemas FROM migration_control.target_config AS t),
    names AS (
        SELECT m.legacy_role AS role FROM migration_control.role_mapping AS m
        UNION SELECT r.role_name FROM migration_control.new_roles AS r
    ),
    app_functions AS (
        SELECT f.oid, f.pronamespace, f.proname, f.pronargs, f.prosrc
          FROM pg_catalog.pg_proc AS f
          JOIN pg_catalog.pg_namespace AS n ON n.oid = f.pronamespace
          JOIN pg_catalog.pg_language AS l ON l.oid = f.prolang
         WHERE l.lanname NOT IN ('c', 'internal')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'migration_tracking', 'migration_backup',
                                 'migration_validation', 'migration_control')
           AND n.nspname NOT LIKE 'pg\_%'
    ),
    naming_functions AS (  -- functions whose body names a role (comments left out)
        SELECT f.oid, pg_catalog.array_agg(DISTINCT q.literal) AS roles
          FROM app_functions AS f
          CROSS JOIN LATERAL migration_validation.quoted_literals(
                  pg_catalog.regexp_replace(f.prosrc, '--[^\n]*', '', 'g')) AS q
          JOIN names ON names.role = q.literal
         GROUP BY f.oid
    ),
    called AS (  -- role names reached through the functions an object's expression calls
        SELECT d.classid, d.objid, pg_catalog.array_agg(DISTINCT r.role) AS roles
          FROM pg_catalog.pg_depend AS d
          JOIN naming_functions AS nf ON nf.oid = d.refobjid
          CROSS JOIN LATERAL pg_catalog.unnest(nf.roles) AS r(role)
         WHERE d.refclassid = 'pg_catalog.pg_proc'::regclass
         GROUP BY d.classid, d.objid
    ),
    candidates AS (
        SELECT 'policy'::text AS kind, pg_catalog.format('%I.%I.%I', n.nspname, c.relname, p.polname) AS name,
               n.nspname || '.' || c.relname AS relation, p.polcmd::text AS command,
               CASE WHEN p.polroles = '{0}'::oid[] THEN ARRAY['public']
                    ELSE ARRAY(SELECT a.rolname::text FROM pg_catalog.pg_roles AS a
                                WHERE a.oid = ANY (p.polroles) ORDER BY 1) END AS api_roles,
               pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS expression,
               ARRAY(SELECT q.literal FROM migration_validation.quoted_literals(
                         pg_catalog.pg_get_expr(p.polqual, p.polrelid)) AS q
                      JOIN names ON names.role = q.literal) || coalesce(k.roles, '{}') AS roles
          FROM pg_catalog.pg_policy AS p
          JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          LEFT JOIN called AS k ON k.classid = 'pg_catalog.pg_policy'::regclass AND k.objid = p.oid
         WHERE p.polpermissive AND p.polqual IS NOT NULL AND c.relrowsecurity
           AND n.nspname = ANY ((SELECT cfg.policy_schemas FROM cfg)::name[])
        UNION ALL
        SELECT CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
               pg_catalog.format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname, 'r', NULL,
               pg_catalog.pg_get_viewdef(c.oid),
               ARRAY(SELECT q.literal FROM migration_validation.quoted_literals(pg_catalog.pg_get_viewdef(c.oid)) AS q
                      JOIN names ON names.role = q.literal)
               || coalesce((SELECT pg_catalog.array_agg(DISTINCT r.role) FROM pg_catalog.pg_rewrite AS w
                              JOIN called AS k ON k.classid = 'pg_catalog.pg_rewrite'::regclass AND k.objid = w.oid
                              CROSS JOIN LATERAL pg_catalog.unnest(k.roles) AS r(role)
                             WHERE w.ev_class = c.oid), '{}')
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY ((SELECT cfg.policy_schemas FROM cfg)::name[])
        UNION ALL
        SELECT 'function', pg_catalog.format('%I.%I', n.nspname, f.proname), NULL, 'x', NULL, f.prosrc,
               coalesce(nf.roles, '{}') || coalesce(k.roles, '{}')
          FROM app_functions AS f
          JOIN pg_catalog.pg_namespace AS n ON n.oid = f.pronamespace
          LEFT JOIN naming_functions AS nf ON nf.oid = f.oid
          LEFT JOIN called AS k ON k.classid = 'pg_catalog.pg_proc'::regclass AND k.objid = f.oid
         WHERE f.pronargs = 0 AND n.nspname = ANY ((SELECT cfg.policy_schemas FROM cfg)::name[])
    )
    SELECT c.kind, c.name, c.relation, c.command, c.api_roles, c.expression,
           ARRAY(SELECT DISTINCT r FROM pg_catalog.unnest(c.roles) AS r ORDER BY 1)
      FROM candidates AS c
     WHERE pg_catalog.cardinality(c.roles) > 0
     ORDER BY 1, 2
$$;

CREATE OR REPLACE FUNCTION migration_validation.trigger_written_columns()
RETURNS TABLE(schema_name text, table_name text, column_name text, trigger_name text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Timestamp columns of the profiles table that an enabled BEFORE UPDATE row trigger sets
    -- to the current time on every write: moddatetime(updated_at), or a PL/pgSQL body with the
    -- statement NEW.<column> := now() (or current_timestamp, clock_timestamp(), ...). The
    -- migration's and the rollbacks' writes change them: comparisons of the rows before and
    -- after leave them out and say which and why. Any other assignment (NEW.is_active :=
    -- false) stays compared: that is the application changing data, and the gate must see it.
    SELECT n.nspname::text, c.relname::text, a.attname::text, g.tgname::text
      FROM migration_control.target_config AS t
      JOIN pg_catalog.pg_namespace AS n ON n.nspname = t.profiles_schema
      JOIN pg_catalog.pg_class AS c ON c.relnamespace = n.oid AND c.relname = t.profiles_table
      JOIN pg_catalog.pg_trigger AS g ON g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgenabled <> 'D'
           AND (g.tgtype & 1) = 1 AND (g.tgtype & 2) = 2 AND (g.tgtype & 16) = 16  -- row, before, update
      JOIN pg_catalog.pg_proc AS p ON p.oid = g.tgfoid
      JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
      JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
           AND a.atttypid IN ('pg_catalog.timestamptz'::regtype, 'pg_catalog.timestamp'::regtype)
     WHERE a.attname NOT IN (t.key_column, t.role_column)
       AND CASE WHEN p.proname = 'moddatetime'
                THEN pg_catalog.split_part(pg_catalog.encode(g.tgargs, 'escape'), '\000', 1) = a.attname
                WHEN l.lanname = 'plpgsql'
                THEN pg_catalog.regexp_replace(p.prosrc, '--[^\n]*', '', 'g')
                     ~* ('(^|;|\mthen|\melse|\mbegin|\mloop)\s*new\s*\.\s*"?'
                         || pg_catalog.regexp_replace(a.attname, '([^a-zA-Z0-9_])', '\\\1', 'g')
                         || '"?\s*:?=\s*(pg_catalog\.)?(now\(\)|current_timestamp|localtimestamp|'
                         || '(clock|statement|transaction)_timestamp\(\)|timezone\([^;]*now\(\)\))\s*;')
                ELSE false END
     ORDER BY 1, 2, 3, 4
$$;

CREATE OR REPLACE FUNCTION migration_validation.newest_backup()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The id of the newest completed backup (NULL when there is none).
    SELECT b.backup_id FROM migration_backup.backup_log b
    WHERE b.status = 'completed'
    ORDER BY b.created_at DESC, b.backup_id DESC
    LIMIT 1
$$;

-- ------------------------------------------------------------ pre-migration ----

CREATE OR REPLACE FUNCTION migration_validation.pre_migration_role_checks(p_cfg migration_control.target_config)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_total     bigint;
    v_nulls     bigint;
    v_sample    jsonb;
    v_unknown   jsonb;
    v_on_new    jsonb;
    v_roles     jsonb;
BEGIN
    -- The rows no_null_roles and all_roles_known of pre_migration_checks, which both read
    -- the users per role: one pass over the profiles counts them (NULL included), and the
    -- samples of offending users are read by role (an index on the role column serves them)
    -- only when there are offenders. Runs under the caller's row_security = off.
    EXECUTE format('SELECT coalesce(jsonb_agg(jsonb_build_array(g.role, g.cnt)), ''[]'')
                      FROM (SELECT t.%1$I::text AS role, count(*) AS cnt FROM %2$I.%3$I t GROUP BY 1) g',
                   p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table)
    INTO v_roles;
    SELECT coalesce(sum((e ->> 1)::bigint), 0), coalesce(sum((e ->> 1)::bigint) FILTER (WHERE e ->> 0 IS NULL), 0)
      INTO v_total, v_nulls
      FROM jsonb_array_elements(v_roles) AS e;
    v_sample := '[]';
    IF v_nulls > 0 THEN
        EXECUTE format(
            'SELECT coalesce(jsonb_agg(s.k), ''[]'') FROM (SELECT u.%1$I::text AS k FROM %3$I.%4$I u
               WHERE u.%2$I IS NULL ORDER BY u.%1$I LIMIT 20) s',
            p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table)
        INTO v_sample;
    END IF;
    check_name := 'no_null_roles';
    status := CASE WHEN v_nulls = 0 THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('users', v_total, 'null_roles', v_nulls, 'sample', v_sample);
    RETURN NEXT;

    -- users per role that is not a mapped legacy role: unknown (fail) or already a new role (warn)
    v_unknown := '{}';
    v_on_new := '{}';
    v_sample := '[]';
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(v_roles) AS e
                WHERE e ->> 0 IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = e ->> 0)) THEN
        EXECUTE format(
            'WITH r AS (
                 SELECT t.%2$I::text AS role, t.%1$I::text AS k,
                        row_number() OVER (PARTITION BY t.%2$I::text ORDER BY t.%1$I) AS n
                 FROM %3$I.%4$I t
                 WHERE t.%2$I::text = ANY ($1))
             SELECT coalesce(jsonb_object_agg(g.role, jsonb_build_object(''count'', g.cnt, ''sample'', g.keys))
                             FILTER (WHERE NOT g.is_new), ''{}''),
                    coalesce(jsonb_object_agg(g.role, jsonb_build_object(''count'', g.cnt, ''sample'', g.keys))
                             FILTER (WHERE g.is_new), ''{}''),
                    (SELECT coalesce(jsonb_agg(jsonb_build_object(''key'', s.k, ''role'', s.role)), ''[]'')
                     FROM (SELECT r.k, r.role FROM r ORDER BY r.role, r.k LIMIT 20) s)
             FROM (SELECT r.role, count(*) AS cnt, jsonb_agg(r.k ORDER BY r.k) FILTER (WHERE r.n <= 5) AS keys,
                          EXISTS (SELECT 1 FROM migration_control.new_roles nr WHERE nr.role_name = r.role) AS is_new
                   FROM r GROUP BY r.role) g',
            p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table)
        INTO v_unknown, v_on_new, v_sample
        USING ARRAY(SELECT e ->> 0 FROM jsonb_array_elements(v_roles) AS e
                     WHERE e ->> 0 IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = e ->> 0));
    END IF;
    check_name := 'all_roles_known';
    status := CASE WHEN v_unknown <> '{}' THEN 'fail' WHEN v_on_new <> '{}' THEN 'warn' ELSE 'pass' END;
    details := jsonb_build_object('users', v_total, 'unknown_roles', v_unknown,
                                  'already_on_new_roles', v_on_new, 'sample', v_sample);
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.pre_migration_mapping_checks()
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_list      jsonb;
    v_n         bigint;
BEGIN
    -- The rows mapping_total and mapping_targets_valid of pre_migration_checks: is the
    -- mapping complete in both directions, every legacy role the schema allows mapped, and
    -- every mapping onto a role that exists among the new roles.
    check_name := 'mapping_total';
    BEGIN
        SELECT count(*),
               coalesce(jsonb_agg(jsonb_build_object('role', d.role_name, 'sources', d.sources))
                        FILTER (WHERE d.mapped_to IS NULL), '[]')
        INTO v_n, v_list
        FROM migration_control.discover_legacy_roles() d;
        status := CASE WHEN v_list = '[]' THEN 'pass' ELSE 'fail' END;
        details := jsonb_build_object('legacy_roles_found', v_n,
                                      'unmapped_roles', (SELECT coalesce(jsonb_agg(e -> 'role'), '[]')
                                                         FROM jsonb_array_elements(v_list) e),
                                      'sample', v_list);
    EXCEPTION WHEN OTHERS THEN
        status := 'fail';
        details := jsonb_build_object('error', SQLERRM);
    END;
    RETURN NEXT;

    check_name := 'mapping_targets_valid';
    SELECT coalesce(jsonb_agg(jsonb_build_object('legacy_role', m.legacy_role, 'new_role', m.new_role)), '[]')
    INTO v_list
    FROM migration_control.role_mapping m
    WHERE NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = m.new_role);
    status := CASE WHEN v_list = '[]' THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('mappings', (SELECT count(*) FROM migration_control.role_mapping),
                                  'invalid_targets', v_list);
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.backup_failing_checks(
    p_backup_id text, p_cfg migration_control.target_config)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_log      migration_backup.backup_log;
    v_copy     regclass;
    v_live     regclass;
    v_list     jsonb;
BEGIN
    -- The failing rows (check_name, details) of validate_backup_completeness(p_backup_id), for
    -- valid_backup_exists. Its last row, covers_live_users, passes or warns whenever its
    -- anti-join of live table and copy can be built and read; it fails only when it cannot.
    -- When the backup's target table is the configured one (pre_migration_checks has read it
    -- under row_security = off), the caller may read it and the copy, and both have the key,
    -- the failing rows are backup_integrity's alone: that anti-join, a pass over both tables
    -- whose counts valid_backup_exists never shows, is left out. Otherwise, the whole function.
    SELECT * INTO v_log FROM migration_backup.backup_log AS l WHERE l.backup_id = p_backup_id;
    v_copy := migration_backup.copy_table(v_log.profiles_copy);
    IF v_log.target ->> 'profiles_schema' IS NOT NULL AND v_log.target ->> 'profiles_table' IS NOT NULL THEN
        v_live := to_regclass(format('%I.%I', v_log.target ->> 'profiles_schema', v_log.target ->> 'profiles_table'));
    END IF;
    IF v_log.status = 'completed' AND v_copy IS NOT NULL
       AND v_live = to_regclass(format('%I.%I', p_cfg.profiles_schema, p_cfg.profiles_table))
       AND has_table_privilege(v_live, 'SELECT') AND has_table_privilege(v_copy, 'SELECT')
       AND migration_backup.key_match_sql(v_copy, v_live, v_log.target ->> 'key_column', 'c', 't') IS NOT NULL THEN
        SELECT coalesce(jsonb_agg(jsonb_build_object('check_name', v.check_name, 'details', v.details))
                        FILTER (WHERE v.status = 'fail'), '[]')
        INTO v_list FROM migration_backup.backup_integrity(p_backup_id) AS v;
    ELSE
        SELECT coalesce(jsonb_agg(jsonb_build_object('check_name', v.check_name, 'details', v.details))
                        FILTER (WHERE v.status = 'fail'), '[]')
        INTO v_list FROM migration_backup.validate_backup_completeness(p_backup_id) AS v;
    END IF;
    RETURN v_list;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.pre_migration_checks(
    p_backup_id text DEFAULT NULL, p_backup_checks jsonb DEFAULT NULL)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_cfg       migration_control.target_config;
    v_list      jsonb;
    v_backup    text;
    v_n         bigint;
BEGIN
    -- Is the database ready to migrate? Target and mapping present, every user on a mapped
    -- legacy role (pre_migration_role_checks), every role the schema allows mapped onto a new
    -- role (pre_migration_mapping_checks), a valid backup, and no other migration running.
    -- Each check returns counts and up to 20 offending rows.
    SELECT * INTO v_cfg FROM migration_control.target_config;
    check_name := 'target_configured';
    IF NOT FOUND THEN
        status := 'fail';
        details := jsonb_build_object('error', 'migration_control.target_config has no row',
                                      'hint', 'call migration_control.configure_target()');
        RETURN NEXT;
        RETURN;  -- nothing else can be checked without a target
    END IF;
    BEGIN
        PERFORM migration_control.verify_target(v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.key_column,
                    v_cfg.role_column, v_cfg.sessions_schema, v_cfg.sessions_table,
                    v_cfg.sessions_user_column, v_cfg.policy_schemas);
        status := 'pass';
        details := jsonb_build_object('profiles_table', format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table),
                                      'key_column', v_cfg.key_column, 'role_column', v_cfg.role_column,
                                      'sessions_table', CASE WHEN v_cfg.sessions_table IS NULL THEN 'none' ELSE format('%I.%I', v_cfg.sessions_schema, v_cfg.sessions_table) END);
        RETURN NEXT;
    EXCEPTION WHEN OTHERS THEN
        status := 'fail';
        details := jsonb_build_object('error', SQLERRM, 'config', to_jsonb(v_cfg));
        RETURN NEXT;
        RETURN;
    END;

    check_name := 'mapping_loaded';
    SELECT count(*) INTO v_n FROM migration_control.role_mapping;
    status := CASE WHEN v_n > 0 AND EXISTS (SELECT 1 FROM migration_control.new_roles) THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('legacy_roles', v_n,
                                  'new_roles', (SELECT count(*) FROM migration_control.new_roles));
    RETURN NEXT;

    RETURN QUERY SELECT c.check_name, c.status, c.details FROM migration_validation.pre_migration_role_checks(v_cfg) AS c;

    RETURN QUERY SELECT c.check_name, c.status, c.details FROM migration_validation.pre_migration_mapping_checks() AS c;

    check_name := 'valid_backup_exists';
    v_backup := migration_validation.newest_backup();
    IF v_backup IS NULL THEN
        status := 'fail';
        details := jsonb_build_object('backup_id', NULL, 'error', 'no completed backup',
                                      'hint', 'run migration_control.prepare_for_migration() or migration_backup.create_comprehensive_backup()');
    ELSE
        -- run_comprehensive_validation passes the completeness rows it computed for the same
        -- backup: recomputing them re-hashes every backup row a second time
        IF p_backup_checks IS NOT NULL AND v_backup = p_backup_id THEN
            SELECT coalesce(jsonb_agg(jsonb_build_object('check_name', e ->> 'check_name', 'details', e -> 'details'))
                            FILTER (WHERE e ->> 'status' = 'fail'), '[]')
            INTO v_list FROM jsonb_array_elements(p_backup_checks) AS e;
        ELSE
            v_list := migration_validation.backup_failing_checks(v_backup, v_cfg);
        END IF;
        status := CASE WHEN v_list = '[]' THEN 'pass' ELSE 'fail' END;
        details := jsonb_build_object('backup_id', v_backup, 'failing_checks', v_list);
    END IF;
    RETURN NEXT;

    check_name := 'no_migration_running';
    SELECT count(*) INTO v_n FROM migration_control.migration_lock_holders();
    SELECT coalesce(jsonb_agg(jsonb_build_object('batch_id', b.batch_id, 'run_id', b.run_id,
                                                 'started_at', b.started_at)), '[]')
    INTO v_list
    FROM (SELECT * FROM migration_tracking.migration_batch b WHERE b.status = 'running'
          ORDER BY b.started_at LIMIT 20) b;
    status := CASE WHEN v_n = 0 AND v_list = '[]' THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('lock_held', v_n > 0, 'running_batches', jsonb_array_length(v_list),
                                  'sample', v_list);
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.validate_pre_migration_state()
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The pre-migration checks, computing the backup's completeness itself.
    SELECT c.check_name, c.status, c.details FROM migration_validation.pre_migration_checks(NULL, NULL) AS c
$$;

-- ----------------------------------------------------------- post-migration ----

CREATE OR REPLACE FUNCTION migration_validation.key_hash_sql(p_copy regclass, p_live regclass, p_key text,
                                                            p_alias text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The bigint hash of key column p_key of the row p_alias, one expression for a backup's
    -- copy p_copy and the live table p_live alike, equal for keys key_match_sql joins as equal:
    -- the extended hash function of the default hash operator class of the key's type (a
    -- domain's base type) when both sides have that type, as the join's = compares them; else
    -- the hash of the key's text, as key_match_sql then compares. Hashing the key itself, not
    -- its text, keeps a pass over a million keys at about the cost of reading them. NULL when
    -- either side lacks the column.
    SELECT CASE WHEN c.atttypid = t.atttypid AND c.atttypmod = t.atttypmod AND h.fn IS NOT NULL
                THEN format('%s(%s.%I, 0)', h.fn, p_alias, p_key)
                ELSE format('pg_catalog.hashtextextended(%s.%I::text, 0)', p_alias, p_key) END
      FROM pg_catalog.pg_attribute AS c
      JOIN pg_catalog.pg_attribute AS t
        ON t.attrelid = p_live AND t.attname = p_key AND NOT t.attisdropped AND t.attnum > 0
      JOIN pg_catalog.pg_type AS ty ON ty.oid = t.atttypid
      LEFT JOIN LATERAL (
          SELECT format('%I.%I', n.nspname, f.proname) AS fn
            FROM pg_catalog.pg_opclass AS oc
            JOIN pg_catalog.pg_am AS am ON am.oid = oc.opcmethod AND am.amname = 'hash'
            JOIN pg_catalog.pg_amproc AS p
              ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 2
             AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype
            JOIN pg_catalog.pg_proc AS f ON f.oid = p.amproc
            JOIN pg_catalog.pg_namespace AS n ON n.oid = f.pronamespace
           WHERE oc.opcdefault
             AND oc.opcintype = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
           LIMIT 1) AS h ON true
     WHERE c.attrelid = p_copy AND c.attname = p_key AND NOT c.attisdropped AND c.attnum > 0
$$;

CREATE OR REPLACE FUNCTION migration_validation.key_is_unique(p_rel regclass, p_key text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Whether a valid, immediate, non-partial unique index on column p_key alone holds p_rel's
    -- keys unique. Then the live keys and a copy's keys with equal counts and hash sums are the
    -- same keys, each once: the passing case of the post-migration checks rests on it.
    SELECT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index AS i
          JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = p_rel AND i.indisunique AND i.indisvalid AND i.indimmediate
           AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = p_key)
$$;

CREATE OR REPLACE FUNCTION migration_validation.absent_users(p_keys text[], p_roles text[])
RETURNS TABLE(user_key text, backed_up_role text, merged boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The backed-up users gone from the live table (keys as text and their backed-up roles,
    -- side by side), each with whether the migration deleted it as a merged duplicate: its
    -- newest log row says 'merged'. One pass over migration_log hashed against the keys, not
    -- a probe per user: the log has no index on user_key.
    SELECT a.user_key, a.backed_up_role, coalesce(s.status = 'merged', false)
      FROM unnest(p_keys, p_roles) AS a(user_key, backed_up_role)
      LEFT JOIN (SELECT DISTINCT ON (l.user_key) l.user_key, l.status
                   FROM migration_tracking.migration_log AS l
                  WHERE l.user_key IN (SELECT k.k FROM unnest(p_keys) AS k(k))
                  ORDER BY l.user_key, l.log_id DESC) AS s ON s.user_key = a.user_key
$$;

CREATE OR REPLACE FUNCTION migration_validation.post_migration_user_counts(
    p_cfg migration_control.target_config, p_rel regclass, p_copy regclass, p_match text,
    OUT live bigint, OUT not_new bigint, OUT backed_up bigint, OUT mismatched bigint, OUT merged bigint,
    OUT changed bigint, OUT absent_keys text[], OUT absent_roles text[])
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_same     boolean;
BEGIN
    -- The counts of post_migration_user_checks, over the rows with a key: live users, those on
    -- no new role, backed-up users, backed-up users not on mapping(backed-up role) or gone
    -- (mismatched; a gone one the migration merged away is not), the merged ones, the changed
    -- ones (still there, on another role), and the keys and backed-up roles of the gone ones
    -- (for the sample). Runs under the caller's row_security = off.
    -- The passing case is cheap: per role, the count and the sum of the key hashes of the
    -- live users on it equal those of the backed-up users whose role maps to it, from one
    -- aggregate pass over each table (no join). With the live key unique (key_is_unique) that
    -- is the same (key, role) pairs on both sides, each once: every backed-up user on the
    -- mapped role, nobody gone, nobody added, nothing merged. Any difference (or no such
    -- index) falls back to the join, which counts exactly what differs.
    IF migration_validation.key_is_unique(p_rel, p_cfg.key_column) THEN
        EXECUTE format(
            'WITH g AS (
                 SELECT coalesce(m.new_role, nr.role_name) AS role, c.n, c.h, 0 AS side
                   FROM (SELECT b.%2$I::text AS role, count(*) AS n, sum(%5$s) AS h
                           FROM %3$s AS b WHERE b.%1$I IS NOT NULL GROUP BY 1) AS c
                   LEFT JOIN migration_control.role_mapping m ON m.legacy_role = c.role
                   LEFT JOIN migration_control.new_roles nr ON nr.role_name = c.role
                 UNION ALL
                 SELECT u.%2$I::text, count(*), sum(%6$s), 1
                   FROM %4$s AS u WHERE u.%1$I IS NOT NULL GROUP BY 1),
             r AS (
                 SELECT g.role, sum(g.n) FILTER (WHERE g.side = 0) AS cn, sum(g.h) FILTER (WHERE g.side = 0) AS ch,
                        sum(g.n) FILTER (WHERE g.side = 1) AS tn, sum(g.h) FILTER (WHERE g.side = 1) AS th
                   FROM g GROUP BY g.role)
             SELECT coalesce(sum(r.tn), 0), coalesce(sum(r.tn) FILTER (WHERE nn.role_name IS NULL), 0),
                    coalesce(sum(r.cn), 0),
                    coalesce(bool_and(r.cn IS NOT DISTINCT FROM r.tn AND r.ch IS NOT DISTINCT FROM r.th), true)
               FROM r LEFT JOIN migration_control.new_roles nn ON nn.role_name = r.role',
            p_cfg.key_column, p_cfg.role_column, p_copy, p_rel,
            migration_validation.key_hash_sql(p_copy, p_rel, p_cfg.key_column, 'b'),
            migration_validation.key_hash_sql(p_copy, p_rel, p_cfg.key_column, 'u'))
        INTO live, not_new, backed_up, v_same;
        IF v_same THEN
            mismatched := 0;
            merged := 0;
            changed := 0;
            RETURN;
        END IF;
    END IF;

    -- a full join: the live users, those on no new role, the backed-up ones and the changed
    -- ones counted together, the gone ones collected
    EXECUTE format(
        'SELECT count(t.%1$I), count(t.%1$I) FILTER (WHERE NOT t.on_new), count(c.%1$I),
                count(*) FILTER (WHERE c.%1$I IS NOT NULL AND t.%1$I IS NOT NULL
                                   AND t.role_now IS DISTINCT FROM c.expected),
                array_agg(c.%1$I::text) FILTER (WHERE c.%1$I IS NOT NULL AND t.%1$I IS NULL),
                array_agg(c.role_then) FILTER (WHERE c.%1$I IS NOT NULL AND t.%1$I IS NULL)
           FROM (SELECT b.%1$I, b.%2$I::text AS role_then, coalesce(m.new_role, nr.role_name) AS expected
                   FROM %3$s AS b
                   LEFT JOIN migration_control.role_mapping m ON m.legacy_role = b.%2$I::text
                   LEFT JOIN migration_control.new_roles nr ON nr.role_name = b.%2$I::text) AS c
           FULL JOIN (SELECT u.%1$I, u.%2$I::text AS role_now, nn.role_name IS NOT NULL AS on_new
                        FROM %4$s AS u
                        LEFT JOIN migration_control.new_roles nn ON nn.role_name = u.%2$I::text) AS t
             ON %5$s',
        p_cfg.key_column, p_cfg.role_column, p_copy, p_rel, p_match)
    INTO live, not_new, backed_up, changed, absent_keys, absent_roles;
    -- of the gone users, those the migration merged away are not mismatched
    SELECT count(*) FILTER (WHERE NOT a.merged), count(*) FILTER (WHERE a.merged)
      INTO mismatched, merged
      FROM migration_validation.absent_users(absent_keys, absent_roles) AS a;
    mismatched := mismatched + changed;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.post_migration_user_checks(
    p_cfg migration_control.target_config, p_backup text, p_found boolean, p_rel regclass, p_copy regclass,
    p_match text)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_r        record;
    v_sample   jsonb;
BEGIN
    -- The rows every_user_has_new_role, roles_match_mapping and user_count_unchanged of
    -- validate_post_migration_state, which read the same counts: post_migration_user_counts
    -- compares the backup's typed copy p_copy with the live table p_rel (joined on p_match
    -- when they differ); without a backup, p_found false, one pass over the live table. The
    -- samples are further passes, taken only when there is something to show. Runs under
    -- the caller's row_security = off.
    IF p_found THEN
        SELECT * INTO v_r FROM migration_validation.post_migration_user_counts(p_cfg, p_rel, p_copy, p_match);
    ELSE
        EXECUTE format(
            'SELECT count(*) AS live,
                    count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM migration_control.new_roles nr
                                                        WHERE nr.role_name = t.%1$I::text)) AS not_new
               FROM %2$s AS t',
            p_cfg.role_column, p_rel)
        INTO v_r;
    END IF;

    check_name := 'every_user_has_new_role';
    v_sample := '[]';
    IF v_r.not_new > 0 THEN
        EXECUTE format(
            'SELECT coalesce(jsonb_agg(jsonb_build_object(''key'', s.k, ''role'', s.role)), ''[]'')
               FROM (SELECT u.%1$I::text AS k, u.%2$I::text AS role FROM %3$s u
                      WHERE u.%2$I IS NULL OR NOT EXISTS (SELECT 1 FROM migration_control.new_roles nr
                                                         WHERE nr.role_name = u.%2$I::text)
                      ORDER BY u.%1$I LIMIT 20) s',
            p_cfg.key_column, p_cfg.role_column, p_rel)
        INTO v_sample;
    END IF;
    status := CASE WHEN v_r.not_new = 0 THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('users', v_r.live, 'not_on_new_role', v_r.not_new, 'sample', v_sample);
    RETURN NEXT;

    check_name := 'roles_match_mapping';
    IF NOT p_found THEN
        status := 'fail';
        details := jsonb_build_object('backup_id', p_backup, 'error', 'backup not found',
                                      'hint', 'pass the backup_id taken before the migration');
    ELSE
        v_sample := '[]';
        IF v_r.mismatched > 0 THEN
            -- the changed users (a join, only when there are some) and the gone ones not merged away
            EXECUTE format(
                'SELECT coalesce(jsonb_agg(to_jsonb(s)), ''[]'') FROM (
                     SELECT x.user_key, x.backed_up_role, coalesce(m.new_role, nr.role_name) AS expected_role,
                            x.current_role, x.missing
                       FROM (SELECT c.%1$I::text AS user_key, c.%2$I::text AS backed_up_role,
                                    t.%2$I::text AS current_role, false AS missing
                               FROM %3$s AS c JOIN %4$s AS t ON %5$s
                              WHERE $3
                             UNION ALL
                             SELECT a.user_key, a.backed_up_role, NULL, true
                               FROM migration_validation.absent_users($1, $2) AS a WHERE NOT a.merged) AS x
                       LEFT JOIN migration_control.role_mapping m ON m.legacy_role = x.backed_up_role
                       LEFT JOIN migration_control.new_roles nr ON nr.role_name = x.backed_up_role
                      WHERE x.missing OR x.current_role IS DISTINCT FROM coalesce(m.new_role, nr.role_name)
                      ORDER BY x.user_key LIMIT 20) s',
                p_cfg.key_column, p_cfg.role_column, p_copy, p_rel, p_match)
            INTO v_sample
            USING v_r.absent_keys, v_r.absent_roles, v_r.changed > 0;
        END IF;
        status := CASE WHEN v_r.mismatched = 0 THEN 'pass' ELSE 'fail' END;
        details := jsonb_build_object('backup_id', p_backup, 'backed_up_users', v_r.backed_up,
                                      'mismatched', v_r.mismatched, 'sample', v_sample)
                   || CASE WHEN v_r.merged > 0 THEN jsonb_build_object('merged_rows', v_r.merged) ELSE '{}' END;
    END IF;
    RETURN NEXT;

    check_name := 'user_count_unchanged';
    IF NOT p_found THEN
        status := 'fail';
        details := jsonb_build_object('backup_id', p_backup, 'error', 'backup not found', 'live_users', v_r.live);
    ELSE
        -- rows deleted as merged duplicates (roles_match_mapping counted them) are not lost
        status := CASE WHEN v_r.backed_up - v_r.merged = v_r.live THEN 'pass' ELSE 'fail' END;
        details := jsonb_build_object('backup_id', p_backup, 'backed_up_users', v_r.backed_up, 'live_users', v_r.live)
                   || CASE WHEN v_r.merged > 0 THEN jsonb_build_object('merged_rows', v_r.merged) ELSE '{}' END;
    END IF;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.post_migration_policy_check()
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_sample   jsonb;
    v_n        bigint;
    v_m        bigint;
BEGIN
    -- The row no_legacy_roles_in_policies of validate_post_migration_state: a policy of the
    -- migrated tables that still names a legacy-only role, as the literal itself or hidden in
    -- a form the rewrite does not touch (policy_legacy_mentions), names a role nobody holds
    -- after the migration. Reads the catalogs only, not the users.
    check_name := 'no_legacy_roles_in_policies';
    WITH found AS (
        SELECT l.schema_name, l.table_name, l.policy_name, l.clause, l.role_name, NULL::text AS literal
        FROM migration_validation.policy_role_literals() l
        WHERE l.is_legacy AND NOT l.is_new
        UNION ALL
        SELECT h.schema_name, h.table_name, h.policy_name, h.clause, h.role_name, h.literal
        FROM migration_validation.policy_legacy_mentions() h)
    SELECT (SELECT count(*) FROM found),
           (SELECT coalesce(jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                        'schema', s.schema_name, 'table', s.table_name, 'policy', s.policy_name,
                        'clause', s.clause, 'role', s.role_name, 'literal', s.literal))), '[]')
            FROM (SELECT * FROM found
                  ORDER BY found.schema_name, found.table_name, found.policy_name, found.clause,
                           found.role_name LIMIT 20) s)
    INTO v_m, v_sample;
    SELECT count(*) INTO v_n
    FROM migration_validation.migrated_tables() t JOIN pg_catalog.pg_policy p ON p.polrelid = t.table_oid;
    status := CASE WHEN v_m = 0 THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('policies_checked', v_n, 'legacy_literals', v_m,
                                  'policies', (SELECT coalesce(jsonb_agg(DISTINCT e ->> 'policy'), '[]')
                                               FROM jsonb_array_elements(v_sample) e),
                                  'sample', v_sample);
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.post_migration_sessions_check(
    p_cfg migration_control.target_config, p_log migration_backup.backup_log, p_backup text, p_found boolean)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rel      regclass;
    v_copy     regclass;
    v_match    text;
    v_sample   jsonb;
    v_n        bigint;
    v_m        bigint;
    v_same     boolean := false;
BEGIN
    -- The row sessions_intact of validate_post_migration_state: every session of the backup
    -- p_log still there (the migration must not log anybody out). The passing case is cheap:
    -- the copy's session keys (none NULL) and the live ones have the same count and sum of
    -- key hashes, one aggregate pass over each table; with the live key unique
    -- (key_is_unique) those are the same sessions. Otherwise (a session gone, one added since
    -- the backup, no such index) one join counts the missing; their sample is a further pass,
    -- taken only when some are missing. Runs under the caller's row_security = off.
    check_name := 'sessions_intact';
    IF NOT p_found THEN
        status := 'fail';
        details := jsonb_build_object('backup_id', p_backup, 'error', 'backup not found');
    ELSIF p_cfg.sessions_table IS NULL THEN
        status := 'pass';
        details := jsonb_build_object('backup_id', p_backup, 'note', 'no sessions table');
    ELSE
        v_rel := format('%I.%I', p_cfg.sessions_schema, p_cfg.sessions_table)::regclass;
        v_copy := migration_backup.copy_table(p_log.sessions_copy);
        v_match := migration_backup.key_match_sql(v_copy, v_rel, p_cfg.sessions_key_column, 'c', 's');
        IF v_match IS NULL THEN
            status := 'fail';
            details := jsonb_build_object('backup_id', p_backup, 'error', 'the backup has no sessions copy to compare',
                                          'copy', p_log.sessions_copy);
        ELSE
            IF migration_validation.key_is_unique(v_rel, p_cfg.sessions_key_column) THEN
                EXECUTE format(
                    'SELECT c.n, c.n = c.k AND c.k = s.k AND c.h = s.h
                       FROM (SELECT count(*) AS n, count(b.%1$I) AS k, coalesce(sum(%4$s), 0) AS h
                               FROM %2$s AS b) AS c,
                            (SELECT count(u.%1$I) AS k, coalesce(sum(%5$s), 0) AS h FROM %3$s AS u) AS s',
                    p_cfg.sessions_key_column, v_copy, v_rel,
                    migration_validation.key_hash_sql(v_copy, v_rel, p_cfg.sessions_key_column, 'b'),
                    migration_validation.key_hash_sql(v_copy, v_rel, p_cfg.sessions_key_column, 'u'))
                INTO v_n, v_same;
                v_m := 0;
            END IF;
            -- a LEFT JOIN, not NOT EXISTS inside the FILTER: a subquery there is probed once per
            -- backed-up session (an index lookup each), a join can hash both sides; an unmatched
            -- session is the one whose live ctid is null
            IF NOT v_same THEN
                EXECUTE format(
                    'SELECT count(*), count(*) FILTER (WHERE s.ctid IS NULL) FROM %1$s c LEFT JOIN %2$s s ON %3$s',
                    v_copy, v_rel, v_match)
                INTO v_n, v_m;
            END IF;
            v_sample := '[]';
            IF v_m > 0 THEN
                EXECUTE format(
                    'SELECT coalesce(jsonb_agg(to_jsonb(x)), ''[]'') FROM (
                         SELECT c.%1$I::text AS session_key, c.%2$I::text AS user_key FROM %3$s c
                          WHERE NOT EXISTS (SELECT 1 FROM %4$s s WHERE %5$s)
                          ORDER BY 1 LIMIT 20) x',
                    p_cfg.sessions_key_column, p_cfg.sessions_user_column, v_copy, v_rel, v_match)
                INTO v_sample;
            END IF;
            status := CASE WHEN v_m = 0 THEN 'pass' ELSE 'fail' END;
            details := jsonb_build_object('backup_id', p_backup, 'backed_up_sessions', v_n, 'missing', v_m,
                                          'sample', v_sample);
        END IF;
    END IF;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.validate_post_migration_state(p_backup_id text DEFAULT NULL)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_cfg      migration_control.target_config;
    v_backup   text := coalesce(p_backup_id, (SELECT b.backup_id FROM migration_backup.migration_base() b),
                                migration_validation.newest_backup());
    v_log      migration_backup.backup_log;
    v_found    boolean;
    v_rel      regclass;
    v_copy     regclass;
    v_match    text;
BEGIN
    -- Did the migration do what the mapping says and nothing else? Every user on a new
    -- role, each backed-up user on mapping(backed-up role), the same number of users, no
    -- legacy-only role left in a policy, every backed-up session still there. Data checks
    -- compare against the given backup (NULL = the one the migration started from: a backup
    -- taken mid-migration already holds new roles; with no migration, the newest completed).
    -- When all is well, counts and key-hash sums of each copy and its live table agree, one
    -- aggregate pass over each (post_migration_user_checks, post_migration_sessions_check);
    -- only a difference joins them to count and sample exactly what differs. The helpers run
    -- under this function's row_security = off.
    v_cfg := migration_validation.target();
    SELECT * INTO v_log FROM migration_backup.backup_log b WHERE b.backup_id = v_backup;
    v_found := v_backup IS NOT NULL AND FOUND;
    v_rel := format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table)::regclass;
    v_copy := migration_backup.copy_table(v_log.profiles_copy);
    v_match := migration_backup.key_match_sql(v_copy, v_rel, v_cfg.key_column, 'c', 't');
    v_found := v_found AND v_match IS NOT NULL;

    RETURN QUERY SELECT c.check_name, c.status, c.details
                   FROM migration_validation.post_migration_user_checks(v_cfg, v_backup, v_found, v_rel, v_copy,
                                                                         v_match) AS c;
    RETURN QUERY SELECT c.check_name, c.status, c.details FROM migration_validation.post_migration_policy_check() AS c;
    RETURN QUERY SELECT c.check_name, c.status, c.details
                   FROM migration_validation.post_migration_sessions_check(v_cfg, v_log, v_backup, v_found) AS c;
END;
$$;

-- ----------------------------------------------------------- authentication ----

CREATE OR REPLACE FUNCTION migration_validation.auth_lookup_predicates(
    p_cfg migration_control.target_config,
    OUT key_type text, OUT own_pred text, OUT user_col text, OUT sess_pred text, OUT sess_private boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_user_type    text;
BEGIN
    -- How test_user_authentication finds a logged-in user's own rows: the key column's type,
    -- the predicate on the profiles (own_pred, $1 = the key as text), the user column, the
    -- predicate on the sessions (sess_pred, $1 = the user as text; NULL without a sessions
    -- table) and whether the API role may not read the sessions at all (sess_private).
    -- Lookups by key compare in the key column's own type, so the primary key (and an index on
    -- the sessions' user column) serves them: comparing key::text scans the whole table, under
    -- RLS, once per sampled user. A text key round-trips through its type (it came from key::text).
    -- Sessions use the typed comparison only when their user column has the key's type.
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO key_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = to_regclass(format('%I.%I', p_cfg.profiles_schema, p_cfg.profiles_table))
       AND a.attname = p_cfg.key_column;
    own_pred := format('t.%I = $1::%s', p_cfg.key_column, key_type);
    -- the claims and the sessions name the user by the user column (a roles table: user_id),
    -- which is the key column unless configured otherwise
    user_col := coalesce(p_cfg.user_column, p_cfg.key_column);
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO v_user_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = to_regclass(format('%I.%I', p_cfg.profiles_schema, p_cfg.profiles_table))
       AND a.attname = user_col;
    -- no sessions table: no session is counted or read (own_sessions_readable says so and passes)
    sess_pred := CASE WHEN p_cfg.sessions_table IS NULL THEN NULL WHEN EXISTS (
                            SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = to_regclass(format('%I.%I', p_cfg.sessions_schema, p_cfg.sessions_table))
                               AND a.attname = p_cfg.sessions_user_column
                               AND pg_catalog.format_type(a.atttypid, a.atttypmod) = v_user_type)
                        THEN format('s.%I = $1::%s', p_cfg.sessions_user_column, v_user_type)
                        ELSE format('s.%I::text = $1', p_cfg.sessions_user_column) END;
    -- an API role that may not read the sessions table (Supabase: auth.sessions is the auth
    -- server's) reads none; own_sessions_readable says so, and sessions_intact checks the rows
    sess_private := sess_pred IS NOT NULL AND NOT pg_catalog.has_table_privilege(p_cfg.auth_role,
                          format('%I.%I', p_cfg.sessions_schema, p_cfg.sessions_table), 'SELECT');
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.auth_log_in_sample(
    p_cfg migration_control.target_config, p_sample_size integer, p_total bigint, p_key_type text,
    p_own_pred text, p_user_col text, p_sess_pred text, p_sess_private boolean, p_probe text[],
    p_all_roles text[],
    OUT tested integer, OUT profile_bad jsonb, OUT session_bad jsonb, OUT filtered integer, OUT sees_all jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_user         record;
    v_prev_role    text := current_setting('role');
    v_prev_claims  text := current_setting('request.jwt.claims', true);
    v_rows         bigint;
    v_own_key      text;
    v_own_role     text;
    v_sessions     bigint;
    v_profile_bad  jsonb := '[]';
    v_session_bad  jsonb := '[]';
    v_sees_all     jsonb := '[]';
    v_filtered     integer := 0;
    v_tested       integer := 0;
    v_probe_seen   bigint;
    v_role_type    text;
    v_roles        text[];
    v_stale        text;
BEGIN
    -- The logins of test_user_authentication: draws the sample and logs in as each user
    -- (claims, API role, db-pre-request), recording who cannot read their own profile or
    -- sessions and who sees every row although no policy names their role. Called as the
    -- caller's role, before any switch: it switches and restores the role itself, per user,
    -- and calls no function of this schema while switched (the API role may not run them).
    -- The sample: one random user of every role held, the rest random users, p_sample_size in
    -- all (everybody when there are no more). Drawn from a Bernoulli sample of about three times
    -- that many rows, not by sorting every user on random() (2 s at 1,000,000 users): a role
    -- the draw missed (a rare one) gets any user of it, found by the role index when there is one.
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO v_role_type
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = to_regclass(format('%I.%I', p_cfg.profiles_schema, p_cfg.profiles_table))
       AND a.attname = p_cfg.role_column;
    SELECT d.roles INTO v_roles FROM migration_control.roles_in_data() AS d;
    -- The three reads every login makes are prepared once and planned once as the API role,
    -- not planned again for every user (an EXECUTE of a query string is planned each time: half
    -- of a login's cost). Prepared statements outlive a failed call: one left by an earlier call
    -- of this session is removed first, and the ones made here at the end.
    FOR v_stale IN SELECT ps.name FROM pg_catalog.pg_prepared_statements AS ps
                    WHERE ps.name IN ('rolemig_auth_own', 'rolemig_auth_sessions', 'rolemig_auth_probe') LOOP
        EXECUTE format('DEALLOCATE %I', v_stale);
    END LOOP;
    EXECUTE format('PREPARE rolemig_auth_own(text) AS
                        SELECT count(*), min(t.%1$I::text), min(t.%2$I::text) FROM %3$I.%4$I t WHERE %5$s',
                   p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table, p_own_pred);
    IF p_sess_pred IS NOT NULL AND NOT p_sess_private THEN
        EXECUTE format('PREPARE rolemig_auth_sessions(text) AS SELECT count(*) FROM %I.%I s WHERE %s',
                       p_cfg.sessions_schema, p_cfg.sessions_table, p_sess_pred);
    END IF;
    EXECUTE format('PREPARE rolemig_auth_probe(text[]) AS SELECT count(*) FROM %I.%I t WHERE t.%I = ANY ($1::%s[])',
                   p_cfg.profiles_schema, p_cfg.profiles_table, p_cfg.key_column, p_key_type);
    FOR v_user IN EXECUTE format(
        'WITH pool AS (
             SELECT t.%1$I::text AS k, t.%2$I::text AS role, t.%9$I::text AS uid, random() AS r
             FROM %3$I.%4$I AS t TABLESAMPLE BERNOULLI ($2) WHERE t.%2$I IS NOT NULL),
         drawn AS (
             SELECT DISTINCT ON (p.role) p.k, p.role, p.uid FROM pool AS p ORDER BY p.role, p.r),
         missed AS (
             SELECT x.k, x.role, x.uid
             FROM unnest($3::text[]) AS u(role)
             CROSS JOIN LATERAL (SELECT t.%1$I::text AS k, t.%2$I::text AS role, t.%9$I::text AS uid
                                   FROM %3$I.%4$I AS t
                                  WHERE t.%2$I = u.role::%8$s LIMIT 1) AS x
             WHERE NOT EXISTS (SELECT 1 FROM drawn AS d WHERE d.role = u.role)),
         per_role AS (SELECT * FROM drawn UNION ALL SELECT * FROM missed),
         rest AS (
             SELECT p.k, p.role, p.uid FROM pool AS p
             WHERE p.k NOT IN (SELECT per_role.k FROM per_role)
             ORDER BY p.r
             LIMIT greatest($1 - (SELECT count(*) FROM per_role), 0))
         SELECT u.k, u.role, u.uid, %5$s AS sessions
         FROM (SELECT * FROM per_role UNION ALL SELECT * FROM rest) u ORDER BY u.role, u.k',
        p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table,
        CASE WHEN p_sess_pred IS NULL THEN '0::bigint'
             ELSE format('(SELECT count(*) FROM %I.%I s WHERE %s)', p_cfg.sessions_schema, p_cfg.sessions_table,
                         replace(p_sess_pred, '$1', 'u.uid')) END,
        NULL, NULL, v_role_type, p_user_col)
        USING p_sample_size,
              CASE WHEN p_total <= 0 THEN 100 ELSE least(100, 300.0 * p_sample_size / p_total) END,
              v_roles
    LOOP
        v_tested := v_tested + 1;
        BEGIN
            -- as PostgREST: the claims (the configured template), the API role, then db-pre-request
            PERFORM set_config('request.jwt.claims',
                               migration_control.request_claims(v_user.uid, v_user.role)::text, true);
            PERFORM set_config('role', p_cfg.auth_role, true);
            IF p_cfg.pre_request IS NOT NULL THEN
                EXECUTE format('SELECT %s()', p_cfg.pre_request);  -- stored as format('%I.%I')
            END IF;

            EXECUTE format('EXECUTE rolemig_auth_own(%L)', v_user.k) INTO v_rows, v_own_key, v_own_role;
            IF v_rows <> 1 OR v_own_key IS DISTINCT FROM v_user.k OR v_own_role IS DISTINCT FROM v_user.role THEN
                v_profile_bad := v_profile_bad || jsonb_build_object('key', v_user.k, 'role', v_user.role,
                                     'rows_seen', v_rows, 'role_seen', v_own_role);
            END IF;

            IF p_sess_pred IS NULL THEN
                v_sessions := 0;
            ELSIF p_sess_private THEN
                v_sessions := v_user.sessions;  -- not the API's to read
            ELSE
                EXECUTE format('EXECUTE rolemig_auth_sessions(%L)', v_user.uid) INTO v_sessions;
            END IF;
            IF v_sessions <> v_user.sessions THEN
                v_session_bad := v_session_bad || jsonb_build_object('key', v_user.k, 'role', v_user.role,
                                     'sessions', v_user.sessions, 'sessions_seen', v_sessions);
            END IF;

            EXECUTE format('EXECUTE rolemig_auth_probe(%L)', array_remove(p_probe, v_user.k)) INTO v_probe_seen;
            IF v_probe_seen < cardinality(array_remove(p_probe, v_user.k)) THEN
                v_rows := v_probe_seen;  -- a row is hidden: fewer than p_total, no full count needed
            ELSIF v_user.role = ANY (p_all_roles) THEN
                -- meant to see all and sees other users' rows: counted as seeing all without
                -- counting every row under RLS (per staff user, that was O(table))
                v_rows := p_total;
            ELSE
                EXECUTE format('SELECT count(*) FROM %I.%I', p_cfg.profiles_schema, p_cfg.profiles_table) INTO v_rows;
            END IF;
            IF v_rows < p_total THEN
                v_filtered := v_filtered + 1;
            ELSIF p_total > 1 AND v_user.role <> ALL (p_all_roles) THEN
                v_sees_all := v_sees_all || jsonb_build_object('key', v_user.k, 'role', v_user.role, 'rows_seen', v_rows);
            END IF;

            PERFORM set_config('role', v_prev_role, true);
            PERFORM set_config('request.jwt.claims', coalesce(v_prev_claims, ''), true);
        EXCEPTION WHEN OTHERS THEN
            -- the block's rollback restored role and claims; record the user as failing both reads
            v_profile_bad := v_profile_bad || jsonb_build_object('key', v_user.k, 'role', v_user.role, 'error', SQLERRM);
            v_session_bad := v_session_bad || jsonb_build_object('key', v_user.k, 'role', v_user.role, 'error', SQLERRM);
        END;
    END LOOP;
    DEALLOCATE rolemig_auth_own;
    DEALLOCATE rolemig_auth_probe;
    IF p_sess_pred IS NOT NULL AND NOT p_sess_private THEN
        DEALLOCATE rolemig_auth_sessions;
    END IF;

    tested := v_tested;
    profile_bad := v_profile_bad;
    session_bad := v_session_bad;
    filtered := v_filtered;
    sees_all := v_sees_all;
END;
$$;

CREATE OR REPLACE FUNCTION migration_validation.test_user_authentication(p_sample_size integer DEFAULT 50)
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_sess_private boolean := false;
    v_cfg          migration_control.target_config;
    v_total        bigint;
    v_all_roles    text[];
    v_profile_bad  jsonb;
    v_session_bad  jsonb;
    v_sees_all     jsonb;
    v_filtered     integer;
    v_tested       integer;
    v_users        jsonb;
    v_key_type     text;
    v_own_pred     text;
    v_sess_pred    text;
    v_probe        text[];
    v_user_col     text;
BEGIN
    -- Logs in as a sample of users the way PostgREST does (JWT claims in
    -- request.jwt.claims, SET ROLE to the API role, both transaction-local) so RLS really
    -- applies, and checks each can read their own profile and their own sessions. A
    -- superuser or the table owner would bypass RLS, hence the role switch; this function
    -- is SECURITY INVOKER on purpose. The caller's role and claims are restored after each
    -- user, also when a query fails (the per-user block's rollback undoes set_config).
    -- The lookups are auth_lookup_predicates', the logins auth_log_in_sample's; what counts
    -- as seeing all rows is settled here, and the rows are built from what the logins found.
    IF p_sample_size IS NULL OR p_sample_size < 1 THEN
        RAISE EXCEPTION 'sample size must be a positive integer, got %', p_sample_size
            USING DETAIL = 'p_sample_size is how many users are logged in.', HINT = 'use e.g. 50';
    END IF;
    v_cfg := migration_validation.target();
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = v_cfg.auth_role) THEN
        RAISE EXCEPTION 'API role % does not exist', v_cfg.auth_role
            USING DETAIL = 'target_config.auth_role names the role a logged-in user runs as.',
                  HINT = 'create the role or update migration_control.target_config.auth_role';
    END IF;
    EXECUTE format('SELECT count(*) FROM %I.%I', v_cfg.profiles_schema, v_cfg.profiles_table) INTO v_total;

    SELECT l.key_type, l.own_pred, l.user_col, l.sess_pred, l.sess_private
      INTO v_key_type, v_own_pred, v_user_col, v_sess_pred, v_sess_private
      FROM migration_validation.auth_lookup_predicates(v_cfg) AS l;

    -- Two rows any user but their owner should be unable to see unless they see all: when a
    -- user cannot see one of them, "sees fewer than every row" is settled by two index lookups
    -- instead of a count over the whole table. A user who sees both and whose role a SELECT
    -- policy names is taken as seeing all; only a user seeing both whom no policy names
    -- (the warning case) is counted in full, to report how many rows they see.
    -- (the first and the last key: two probes of the primary key, not a pass over every key as text)
    EXECUTE format('SELECT array[(SELECT t.%1$I::text FROM %2$I.%3$I t ORDER BY t.%1$I LIMIT 1),
                                 (SELECT t.%1$I::text FROM %2$I.%3$I t ORDER BY t.%1$I DESC LIMIT 1)]',
                   v_cfg.key_column, v_cfg.profiles_schema, v_cfg.profiles_table) INTO v_probe;

    -- roles that a SELECT policy of the profiles table names: those are meant to see all rows
    SELECT coalesce(array_agg(DISTINCT q.literal), '{}') INTO v_all_roles
    FROM pg_catalog.pg_policy p
    CROSS JOIN LATERAL migration_validation.quoted_literals(pg_catalog.pg_get_expr(p.polqual, p.polrelid)) q
    WHERE p.polrelid = to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table))
      AND p.polcmd IN ('r', '*') AND p.polpermissive;

    SELECT s.tested, s.profile_bad, s.session_bad, s.filtered, s.sees_all
      INTO v_tested, v_profile_bad, v_session_bad, v_filtered, v_sees_all
      FROM migration_validation.auth_log_in_sample(v_cfg, p_sample_size, v_total, v_key_type, v_own_pred,
               v_user_col, v_sess_pred, v_sess_private, v_probe, v_all_roles) AS s;

    v_users := jsonb_build_object('users_tested', v_tested, 'auth_role', v_cfg.auth_role);

    check_name := 'own_profile_readable';
    status := CASE WHEN v_tested = 0 THEN 'warn' WHEN v_profile_bad = '[]' THEN 'pass' ELSE 'fail' END;
    details := v_users || jsonb_build_object('failing_users', jsonb_array_length(v_profile_bad),
                   'failing_roles', (SELECT coalesce(jsonb_agg(DISTINCT e ->> 'role'), '[]') FROM jsonb_array_elements(v_profile_bad) e),
                   'sample', (SELECT coalesce(jsonb_agg(e), '[]') FROM (SELECT e FROM jsonb_array_elements(v_profile_bad) e LIMIT 20) x));
    RETURN NEXT;

    check_name := 'own_sessions_readable';
    status := CASE WHEN v_cfg.sessions_table IS NULL OR v_sess_private THEN 'pass'
                   WHEN v_tested = 0 THEN 'warn' WHEN v_session_bad = '[]' THEN 'pass' ELSE 'fail' END;
    details := v_users || CASE WHEN v_cfg.sessions_table IS NULL
                               THEN jsonb_build_object('note', 'no sessions table')
                               WHEN v_sess_private
                               THEN jsonb_build_object('note', format('the API role %s may not read %I.%I (as on '
                                        'Supabase): sessions_intact checks the session rows', v_cfg.auth_role,
                                        v_cfg.sessions_schema, v_cfg.sessions_table))
                               ELSE '{}' END
                       || jsonb_build_object('failing_users', jsonb_array_length(v_session_bad),
                   'failing_roles', (SELECT coalesce(jsonb_agg(DISTINCT e ->> 'role'), '[]') FROM jsonb_array_elements(v_session_bad) e),
                   'sample', (SELECT coalesce(jsonb_agg(e), '[]') FROM (SELECT e FROM jsonb_array_elements(v_session_bad) e LIMIT 20) x));
    RETURN NEXT;

    check_name := 'rls_applies';
    status := CASE WHEN v_tested = 0 THEN 'warn'
                   WHEN v_sees_all <> '[]' OR (v_filtered = 0 AND v_total > 1) THEN 'warn' ELSE 'pass' END;
    details := v_users || jsonb_build_object('total_rows', v_total, 'users_filtered', v_filtered,
                   'roles_meant_to_see_all', to_jsonb(v_all_roles),
                   'unexpectedly_see_all', jsonb_array_length(v_sees_all),
                   'sample', (SELECT coalesce(jsonb_agg(e), '[]') FROM (SELECT e FROM jsonb_array_elements(v_sees_all) e LIMIT 20) x));
    RETURN NEXT;
END;
$$;

-- --------------------------------------------------------------------- RLS ----

CREATE OR REPLACE FUNCTION migration_validation.validate_rls_policies(p_phase text DEFAULT 'auto')
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg     migration_control.target_config;
    v_phase   text := p_phase;
    v_legacy  bigint;
    v_new     bigint;
    v_sample  jsonb;
    v_bad     bigint;
BEGIN
    -- RLS must stay on for every migrated table that has policies (and the profiles
    -- table), and the role names in the policies must fit the phase: before the migration
    -- no new-only role, after it no legacy-only role, in between ('expand') both.
    -- 'auto' reads the phase from the data: users on legacy-only roles only -> pre, on
    -- new-only roles only (or none on legacy-only roles) -> post, both -> expand.
    IF p_phase IS NULL OR p_phase NOT IN ('auto', 'pre', 'post', 'expand') THEN
        RAISE EXCEPTION 'unknown RLS validation phase %', coalesce(quote_literal(p_phase), 'NULL')
            USING DETAIL = 'Phases: auto, pre, post, expand.', HINT = 'use validate_rls_policies(''auto'')';
    END IF;
    v_cfg := migration_validation.target();
    IF v_phase = 'auto' THEN
        EXECUTE format(
            'SELECT count(*) FILTER (WHERE m.legacy_role IS NOT NULL AND r.role_name IS NULL),
                    count(*) FILTER (WHERE m.legacy_role IS NULL AND r.role_name IS NOT NULL)
             FROM %I.%I t
             LEFT JOIN migration_control.role_mapping m ON m.legacy_role = t.%I::text
             LEFT JOIN migration_control.new_roles r ON r.role_name = t.%I::text',
            v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.role_column, v_cfg.role_column)
        INTO v_legacy, v_new;
        v_phase := CASE WHEN v_legacy > 0 AND v_new > 0 THEN 'expand' WHEN v_legacy > 0 THEN 'pre' ELSE 'post' END;
    END IF;

    check_name := 'rls_enabled';
    SELECT count(*) FILTER (WHERE NOT t.rls_enabled),
           coalesce(jsonb_agg(jsonb_build_object('schema', t.schema_name, 'table', t.table_name,
                                                 'policies', t.policy_count)) FILTER (WHERE NOT t.rls_enabled), '[]')
    INTO v_bad, v_sample
    FROM migration_validation.migrated_tables() t
    WHERE t.policy_count > 0 OR (t.schema_name = v_cfg.profiles_schema AND t.table_name = v_cfg.profiles_table);
    status := CASE WHEN v_bad = 0 THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('tables_checked', (SELECT count(*) FROM migration_validation.migrated_tables()),
                                  'rls_disabled', v_bad, 'sample', v_sample);
    RETURN NEXT;

    check_name := 'policy_roles_match_phase';
    SELECT count(*), coalesce(jsonb_agg(to_jsonb(s)), '[]') INTO v_bad, v_sample
    FROM (SELECT l.schema_name, l.table_name, l.policy_name, l.clause, l.role_name,
                 CASE WHEN l.is_legacy THEN 'legacy' ELSE 'new' END AS kind
          FROM migration_validation.policy_role_literals() l
          WHERE (v_phase = 'pre' AND l.is_new AND NOT l.is_legacy)
             OR (v_phase = 'post' AND l.is_legacy AND NOT l.is_new)
          ORDER BY 1, 2, 3, 4, 5) s;
    status := CASE WHEN v_bad = 0 THEN 'pass' ELSE 'fail' END;
    details := jsonb_build_object('phase', v_phase, 'requested_phase', p_phase,
                   'role_literals', (SELECT count(*) FROM migration_validation.policy_role_literals()),
                   'offending_literals', v_bad,
                   'policies', (SELECT coalesce(jsonb_agg(DISTINCT e ->> 'policy_name'), '[]') FROM jsonb_array_elements(v_sample) e),
                   'sample', (SELECT coalesce(jsonb_agg(e), '[]') FROM (SELECT e FROM jsonb_array_elements(v_sample) e LIMIT 20) x));
    RETURN NEXT;
END;
$$;

-- ------------------------------------------------------------------- runner ----

CREATE OR REPLACE FUNCTION migration_validation.run_comprehensive_validation(p_phase text DEFAULT 'pre_migration')
RETURNS TABLE(validation_type text, check_name text, status text, details jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_run      text;
    v_backup   text;
    v_backup_checks jsonb;
    v_rollback record;
    v_rows     jsonb := '[]';
BEGIN
    -- Runs the checks of one phase and stores every row in validation_results under one
    -- validation_run id (also added to each row's details):
    --   pre_migration  = pre-migration state + RLS ('pre') + completeness of the newest backup
    --   post_migration = post-migration state + RLS ('post') + authentication
    --   post_rollback  = rollback checks of the newest rollback + RLS ('pre') + authentication
    --   and in every phase the security checks (validate_security)
    IF p_phase IS NULL OR p_phase NOT IN ('pre_migration', 'post_migration', 'post_rollback') THEN
        RAISE EXCEPTION 'unknown validation phase %', coalesce(quote_literal(p_phase), 'NULL')
            USING DETAIL = 'Phases: pre_migration, post_migration, post_rollback.',
                  HINT = 'use run_comprehensive_validation(''pre_migration'')';
    END IF;
    v_run := 'val_' || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
             || substr(replace(gen_random_uuid()::text, '-', ''), 1, 6);

    IF p_phase = 'pre_migration' THEN
        -- the newest backup's completeness is computed once, for the pre-migration state's
        -- valid_backup_exists and for the backup rows (each computation hashes every backup row)
        v_backup := migration_validation.newest_backup();
        IF v_backup IS NOT NULL THEN
            SELECT coalesce(jsonb_agg(jsonb_build_object('check_name', v.check_name, 'status', v.status,
                                                         'details', v.details)), '[]')
            INTO v_backup_checks FROM migration_backup.validate_backup_completeness(v_backup) v;
        END IF;
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'pre_migration_state', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.pre_migration_checks(v_backup, v_backup_checks) v);
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'rls_policies', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.validate_rls_policies('pre') v);
        IF v_backup IS NULL THEN
            v_rows := v_rows || jsonb_build_object('t', 'backup', 'c', 'backup_exists', 's', 'fail',
                                                   'd', jsonb_build_object('error', 'no completed backup'));
        ELSE
            v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'backup', 'c', e ->> 'check_name',
                                      's', e ->> 'status', 'd', (e -> 'details') || jsonb_build_object('backup_id', v_backup))
                                      ORDER BY x.n), '[]')
                                 FROM jsonb_array_elements(v_backup_checks) WITH ORDINALITY AS x(e, n));
        END IF;
    ELSIF p_phase = 'post_migration' THEN
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'post_migration_state', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.validate_post_migration_state() v);
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'rls_policies', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.validate_rls_policies('post') v);
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'authentication', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.test_user_authentication() v);
    ELSE
        SELECT r.rollback_id, r.backup_id INTO v_rollback
        FROM migration_backup.rollback_log r ORDER BY r.started_at DESC, r.rollback_id DESC LIMIT 1;
        IF NOT FOUND THEN
            v_rows := v_rows || jsonb_build_object('t', 'rollback', 'c', 'rollback_recorded', 's', 'fail',
                                                   'd', jsonb_build_object('error', 'no rollback recorded'));
        ELSE
            v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'rollback', 'c', v.check_name,
                                      's', v.status, 'd', v.details || jsonb_build_object('rollback_id', v_rollback.rollback_id))), '[]')
                                 FROM migration_backup.validate_rollback_success(v_rollback.backup_id, v_rollback.rollback_id) v);
        END IF;
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'rls_policies', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.validate_rls_policies('pre') v);
        v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'authentication', 'c', v.check_name,
                                  's', v.status, 'd', v.details)), '[]')
                             FROM migration_validation.test_user_authentication() v);
    END IF;

    -- every phase: the infrastructure must not open a door (validate_security() is defined in
    -- migration-security.sql, installed after this file; plpgsql resolves it at run time)
    v_rows := v_rows || (SELECT coalesce(jsonb_agg(jsonb_build_object('t', 'security', 'c', v.check_name,
                              's', v.status, 'd', v.details)), '[]')
                         FROM migration_validation.validate_security() v);

    RETURN QUERY
    WITH stored AS (
        INSERT INTO migration_validation.validation_results (validation_run, validation_type, check_name, status, details)
        SELECT v_run, r ->> 't', r ->> 'c', r ->> 's', coalesce(r -> 'd', '{}') || jsonb_build_object('validation_run', v_run)
        FROM jsonb_array_elements(v_rows) WITH ORDINALITY AS e(r, n)
        ORDER BY e.n
        RETURNING result_id, validation_results.validation_type, validation_results.check_name,
                  validation_results.status, validation_results.details)
    SELECT s.validation_type, s.check_name, s.status, s.details FROM stored s ORDER BY s.result_id;
END;
$$;

-- ------------------------------------------------------------ rank comparisons ----

CREATE OR REPLACE FUNCTION migration_validation.role_rank_comparisons()
RETURNS TABLE(object_kind text, object_name text, role_type text, detail text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg  migration_control.target_config;
    v_type oid;
BEGIN
    -- Where the application orders roles by rank: when the role column is an enum, the
    -- policies whose expression compares with <, <=, >, >= or sorts and involves the enum (a
    -- cast to it, the role column's name, or a call of a function returning it), and the
    -- functions of the application that take, return or name the enum type or the role table
    -- and whose body compares or sorts. Read from the text: a heuristic that errs towards
    -- reporting. A mapping that merges or reorders ranks changes who passes such a comparison.
    v_cfg := migration_validation.target();
    SELECT a.atttypid INTO v_type
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = pg_catalog.to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table))
       AND a.attname = v_cfg.role_column AND t.typtype = 'e';
    IF v_type IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'policy'::text, format('%I.%I.%I', n.nspname, c.relname, p.polname),
           pg_catalog.format_type(v_type, NULL), 'orders roles: ' || x.expr
      FROM pg_catalog.pg_policy p
      JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      CROSS JOIN LATERAL (SELECT concat_ws(' WITH CHECK ', pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                                           pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)) AS expr) x
     WHERE x.expr ~* '(<=|>=|[^-=<>]>[^>=]|[^<]<[^<=>-]|\morder\s+by\M|\m(max|min|greatest|least)\s*\()'
       AND (x.expr ~ ('::' || replace(pg_catalog.format_type(v_type, NULL), '.', '\.') || '\M')
            OR x.expr ~* ('\m' || v_cfg.role_column || '\M')
            -- or it calls an application function returning the role type (pg_depend records
            -- those; the built-in enum operators are pinned and never recorded)
            OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc f ON f.oid = d.refobjid
                        WHERE d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
                          AND d.refclassid = 'pg_catalog.pg_proc'::regclass AND f.prorettype = v_type))
    UNION ALL
    SELECT 'function'::text, p.oid::regprocedure::text, pg_catalog.format_type(v_type, NULL),
           'its body compares with <, <=, >, >= or sorts, and it uses the role type or table (from its source)'
      FROM pg_catalog.pg_proc p
      JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'migration_control', 'migration_validation',
                             'migration_backup', 'migration_tracking')
       AND n.nspname NOT LIKE 'pg\_%'
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x WHERE x.classid = 'pg_catalog.pg_proc'::regclass
                          AND x.objid = p.oid AND x.deptype = 'e')
       AND (v_type = ANY (p.proargtypes::oid[]) OR p.prorettype = v_type
            OR p.prosrc ~* ('\m' || regexp_replace(pg_catalog.format_type(v_type, NULL), '^.*\.', '') || '\M')
            OR p.prosrc ~* ('\m' || v_cfg.profiles_table || '\M'))
       AND p.prosrc ~* '(<=|>=|[^-=<>]>[^>=]|[^<]<[^<=>-]|\morder\s+by\M|\m(max|min|greatest|least)\s*\()'
     ORDER BY 1, 2;
END;
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_validation FROM PUBLIC;
