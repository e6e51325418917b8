-- Migration security: the migration infrastructure must not open a door.
--
-- Provides:
--   * the role migration_owner (NOLOGIN), created if missing, owning the four migration_*
--     schemas and every table, view, sequence, routine and type in them; the installing
--     role is granted membership so it can still run (and re-install) everything;
--   * migration_validation.application_roles() -- the roles an API (PostgREST) runs requests
--     as: PUBLIC, anon, authenticated, service_role, authenticator and target_config.auth_role,
--     those that exist;
--   * migration_control.secure_migration_objects(p_owner) -- ownership, REVOKE ALL from the
--     application roles on schemas / tables / sequences / routines, RLS enabled (no policies)
--     on every backup table, default privileges of the owner that expose nothing; re-runnable
--     (the owner is vetted, created if missing and joined first by ensure_migration_owner(p_owner));
--   * migration_validation.validate_security() -- checks (check_name, status, details):
--     migration_objects_owned, migration_objects_not_exposed, migration_default_privileges,
--     backup_tables_protected, security_definer_search_path, application_tables_rls (the first
--     five from the migration_validation.security_*_check(s) helpers).
-- Depends on: every other component (it must be installed LAST: it secures what they created).
-- Idempotent: safe to run twice; contains no psql meta-commands.
--
-- Why a dedicated owner: objects owned by the operator (often a superuser, or Supabase's
-- postgres) would inherit whatever that operator's ALTER DEFAULT PRIVILEGES give to anon /
-- authenticated. All functions stay SECURITY INVOKER: the operator's own privileges do the work,
-- so an application role that somehow reached a function still could not use it.

CREATE OR REPLACE FUNCTION migration_validation.application_roles()
RETURNS TABLE(role_name text, role_oid oid)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The roles untrusted requests run as, as (name, oid), and every role they can become
    -- (SET ROLE needs membership only, even without INHERIT); PUBLIC is oid 0 (every role is a
    -- member of it). target_config.auth_role is read only when the table is there.
    WITH base AS (
        SELECT r.rolname::text AS role_name, r.oid AS role_oid
          FROM pg_catalog.pg_roles AS r
         WHERE r.rolname IN ('anon', 'authenticated', 'service_role', 'authenticator')
            OR r.rolname IN (SELECT c.auth_role FROM migration_control.target_config AS c)
    )
    SELECT 'PUBLIC'::text, 0::oid
    UNION
    SELECT b.role_name, b.role_oid FROM base AS b
    UNION
    SELECT r.rolname::text, r.oid
      FROM pg_catalog.pg_roles AS r
     WHERE NOT r.rolsuper
       AND EXISTS (SELECT 1 FROM base AS b
                    WHERE b.role_oid <> r.oid AND pg_catalog.pg_has_role(b.role_oid, r.oid, 'MEMBER'))
$$;

CREATE OR REPLACE FUNCTION migration_control.ensure_migration_owner(p_owner text)
RETURNS TABLE(step text, objects integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_owner    oid;
BEGIN
    -- The first step of secure_migration_objects(): before anything is handed over, p_owner
    -- must be a dedicated NOLOGIN role no API role can become; it is created if missing and
    -- the operator made a member. Returns the steps it took (owner_created,
    -- operator_granted_membership); refusals raise.
    IF p_owner IS NULL OR p_owner = '' OR p_owner IN (SELECT a.role_name FROM migration_validation.application_roles() AS a)
       OR lower(p_owner) = 'public' THEN
        RAISE EXCEPTION 'cannot make % the owner of the migration schemas', coalesce(quote_literal(p_owner), 'NULL')
            USING DETAIL = 'The owner must be a dedicated role that no API role is or can become (SET ROLE).',
                  HINT = 'use the default, migration_owner';
    END IF;

    SELECT r.oid INTO v_owner FROM pg_catalog.pg_roles AS r WHERE r.rolname = p_owner;
    IF v_owner IS NULL THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', p_owner);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;  -- created meanwhile by a concurrent install
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and % may not create it', quote_ident(p_owner), current_user
                    USING DETAIL = 'The migration schemas are owned by a dedicated NOLOGIN role.',
                          HINT = format('ask a superuser to run: CREATE ROLE %I NOLOGIN; GRANT %I TO %I;',
                                        p_owner, p_owner, current_user);
        END;
        SELECT r.oid INTO v_owner FROM pg_catalog.pg_roles AS r WHERE r.rolname = p_owner;
        RETURN QUERY SELECT 'owner_created'::text, 1;
    ELSIF (SELECT r.rolcanlogin OR r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = v_owner) THEN
        RAISE EXCEPTION 'role % can log in or is a superuser: it cannot own the migration schemas', quote_ident(p_owner)
            USING DETAIL = 'A login owner could connect and read every backup.',
                  HINT = format('ALTER ROLE %I NOLOGIN NOSUPERUSER, or pass another p_owner', p_owner);
    END IF;

    -- The operator must be a member to keep running and re-installing (ALTER ... OWNER needs it).
    IF current_user <> p_owner AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_auth_members AS m
         WHERE m.roleid = v_owner AND m.member = (SELECT r.oid FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user))
    THEN
        EXECUTE format('GRANT %I TO %I', p_owner, current_user);
        RETURN QUERY SELECT 'operator_granted_membership'::text, 1;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION migration_control.secure_migration_objects(p_owner text DEFAULT 'migration_owner')
RETURNS TABLE(step text, objects integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_schemas  text[] := ARRAY['migration_tracking', 'migration_backup', 'migration_validation',
                               'migration_control'];
    v_owner    oid;
    v_obj      record;
    v_n        integer;
    v_roles    text;
BEGIN
    -- Hands the four schemas and everything in them to a dedicated NOLOGIN owner, takes every
    -- privilege away from the application roles (PUBLIC included), enables RLS without
    -- policies on the backup tables (they hold session tokens and profile data) and makes the
    -- owner's default privileges grant nothing, so objects created later are not exposed either.
    -- Loops only where DDL must name one object at a time (ownership, RLS flags).
    RETURN QUERY SELECT * FROM migration_control.ensure_migration_owner(p_owner);
    SELECT r.oid INTO v_owner FROM pg_catalog.pg_roles AS r WHERE r.rolname = p_owner;

    -- Ownership: schemas first (the new owner needs CREATE on the schema), then their contents.
    v_n := 0;
    FOR v_obj IN
        SELECT format('ALTER SCHEMA %I OWNER TO %I', n.nspname, p_owner) AS ddl
          FROM pg_catalog.pg_namespace AS n
         WHERE n.nspname = ANY (v_schemas) AND n.nspowner <> v_owner
        UNION ALL
        SELECT format('ALTER %s %I.%I OWNER TO %I',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                      n.nspname, c.relname, p_owner)
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (v_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
           AND c.relowner <> v_owner
           -- sequences owned by a column (serial, identity) follow their table
           AND NOT (c.relkind = 'S' AND EXISTS (
                    SELECT 1 FROM pg_catalog.pg_depend AS d
                     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, p_owner)
          FROM pg_catalog.pg_proc AS p
          JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (v_schemas) AND p.proowner <> v_owner
        UNION ALL
        SELECT format('ALTER TYPE %I.%I OWNER TO %I', n.nspname, t.typname, p_owner)
          FROM pg_catalog.pg_type AS t
          JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
         WHERE n.nspname = ANY (v_schemas) AND t.typowner <> v_owner
           AND t.typtype IN ('e', 'd', 'r', 'm', 'c')
           AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_catalog.pg_class AS c WHERE c.oid = t.typrelid) = 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type AS e WHERE e.typarray = t.oid)
    LOOP
        EXECUTE v_obj.ddl;
        v_n := v_n + 1;
    END LOOP;
    RETURN QUERY SELECT 'ownership_changed'::text, v_n;

    -- Privileges: nothing for the application roles, on anything, in any of the four schemas.
    SELECT string_agg(CASE WHEN a.role_oid = 0 THEN 'PUBLIC' ELSE format('%I', a.role_name) END, ', ')
      INTO v_roles FROM migration_validation.application_roles() AS a
     WHERE a.role_name NOT IN (p_owner, current_user);
    v_n := 0;
    FOR v_obj IN SELECT s FROM unnest(v_schemas) AS s WHERE s IN (SELECT n.nspname FROM pg_catalog.pg_namespace AS n)
    LOOP
        EXECUTE format('REVOKE ALL ON SCHEMA %1$I FROM %2$s; '
                       'REVOKE ALL ON ALL TABLES IN SCHEMA %1$I FROM %2$s; '
                       'REVOKE ALL ON ALL SEQUENCES IN SCHEMA %1$I FROM %2$s; '
                       'REVOKE ALL ON ALL ROUTINES IN SCHEMA %1$I FROM %2$s',
                       v_obj.s, v_roles);
        v_n := v_n + 1;
    END LOOP;
    RETURN QUERY SELECT 'privileges_revoked'::text, v_n;

    -- Backup tables: RLS on, no policy, so even a mistaken GRANT returns no row.
    v_n := 0;
    FOR v_obj IN
        SELECT n.nspname, c.relname
          FROM pg_catalog.pg_class AS c
          JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'migration_backup' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
    LOOP
        EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', v_obj.nspname, v_obj.relname);
        v_n := v_n + 1;
    END LOOP;
    RETURN QUERY SELECT 'backup_rls_enabled'::text, v_n;

    -- Default privileges. Global ones for the dedicated owner (it owns nothing else): no
    -- EXECUTE for PUBLIC on new routines, nothing for the application roles. Per-schema
    -- entries of any role in the four schemas: the application roles removed. (The operator's
    -- global defaults are left alone: what it creates here is secured again by this function,
    -- inside the same install transaction.)
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %1$I REVOKE ALL ON TABLES FROM %2$s; '
                   'ALTER DEFAULT PRIVILEGES FOR ROLE %1$I REVOKE ALL ON SEQUENCES FROM %2$s; '
                   'ALTER DEFAULT PRIVILEGES FOR ROLE %1$I REVOKE ALL ON ROUTINES FROM %2$s; '
                   'ALTER DEFAULT PRIVILEGES FOR ROLE %1$I REVOKE ALL ON SCHEMAS FROM %2$s',
                   p_owner, v_roles);
    v_n := 0;
    FOR v_obj IN
        SELECT DISTINCT r.rolname, n.nspname
          FROM pg_catalog.pg_default_acl AS d
          JOIN pg_catalog.pg_roles AS r ON r.oid = d.defaclrole
          JOIN pg_catalog.pg_namespace AS n ON n.oid = d.defaclnamespace
         WHERE n.nspname = ANY (v_schemas)
    LOOP
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %1$I IN SCHEMA %2$I REVOKE ALL ON TABLES FROM %3$s; '
                       'ALTER DEFAULT PRIVILEGES FOR ROLE %1$I IN SCHEMA %2$I REVOKE ALL ON SEQUENCES FROM %3$s; '
                       'ALTER DEFAULT PRIVILEGES FOR ROLE %1$I IN SCHEMA %2$I REVOKE ALL ON ROUTINES FROM %3$s',
                       v_obj.rolname, v_obj.nspname, v_roles);
        v_n := v_n + 1;
    END LOOP;
    RETURN QUERY SELECT 'default_privileges_revoked'::text, v_n;
END
$$;

CREATE OR REPLACE FUNCTION migration_validation.search_path_entries(p_config text[])
RETURNS text[]
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The schema names of a function's pinned search_path (from pg_proc.proconfig), unquoted;
    -- NULL when the function pins none. An empty path ('' or "") gives an empty array.
    SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM unnest(p_config) AS c WHERE c LIKE 'search_path=%') THEN NULL
                ELSE coalesce((
                    SELECT array_agg(replace(btrim(e, '"'), '""', '"') ORDER BY o)
                      FROM unnest(p_config) AS c,
                           regexp_split_to_table(substr(c, 13), '\s*,\s*') WITH ORDINALITY AS x(e, o)
                     WHERE c LIKE 'search_path=%' AND btrim(e, ' "') <> ''), '{}') END
$$;

CREATE OR REPLACE FUNCTION migration_validation.security_ownership_check(p_schemas text[])
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rows     jsonb;
BEGIN
    -- Check migration_objects_owned of validate_security(): one dedicated, non-login owner for
    -- the migration schemas (p_schemas) and everything in them.
    WITH objs AS (
        SELECT 'schema' AS kind, n.nspname::text AS name, n.nspowner AS owner, n.oid AS nsp
          FROM pg_catalog.pg_namespace AS n WHERE n.nspname = ANY (p_schemas)
        UNION ALL
        SELECT 'relation', format('%I.%I', n.nspname, c.relname), c.relowner, n.oid
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY (p_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        UNION ALL
        SELECT 'routine', p.oid::regprocedure::text, p.proowner, n.oid
          FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY (p_schemas)
    ), owners_ AS (
        SELECT o.owner, count(*) AS n FROM objs AS o WHERE o.kind = 'schema' GROUP BY o.owner
    ), bad AS (
        SELECT o.kind, o.name, pg_catalog.pg_get_userbyid(o.owner) AS owner
          FROM objs AS o
         WHERE o.owner IN (SELECT a.role_oid FROM migration_validation.application_roles() AS a)
            OR (SELECT r.rolcanlogin OR r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = o.owner)
            OR o.owner <> (SELECT n.nspowner FROM pg_catalog.pg_namespace AS n WHERE n.oid = o.nsp)
            OR (SELECT count(*) FROM owners_) > 1
    )
    SELECT jsonb_build_object(
               'owners', (SELECT coalesce(jsonb_agg(DISTINCT pg_catalog.pg_get_userbyid(o.owner)), '[]') FROM objs AS o),
               'objects_checked', (SELECT count(*) FROM objs),
               'schemas_found', (SELECT count(*) FROM objs AS o WHERE o.kind = 'schema'),
               'offending', (SELECT count(*) FROM bad),
               'sample', (SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]') FROM (SELECT * FROM bad ORDER BY 1, 2 LIMIT 20) AS b))
      INTO v_rows;
    RETURN QUERY SELECT 'migration_objects_owned'::text,
        CASE WHEN (v_rows ->> 'offending')::int > 0 OR (v_rows ->> 'schemas_found')::int < 4 THEN 'fail' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'the four schemas and every object in them owned by one NOLOGIN, '
                                                 'non-superuser role that no API request runs as');
END
$$;

CREATE OR REPLACE FUNCTION migration_validation.security_privilege_checks(p_schemas text[])
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rows     jsonb;
BEGIN
    -- Checks migration_objects_not_exposed and migration_default_privileges of validate_security():
    -- no application role can use a schema, read/write a relation or execute a routine in the
    -- migration schemas (p_schemas) now, nor will once more objects are created there.
    WITH roles AS (SELECT a.role_name, a.role_oid FROM migration_validation.application_roles() AS a),
    exposed AS (
        SELECT 'schema' AS kind, n.nspname::text AS name, r.role_name AS grantee, x.privilege_type AS privilege
          FROM pg_catalog.pg_namespace AS n
          CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) AS x
          JOIN roles AS r ON r.role_oid = x.grantee
         WHERE n.nspname = ANY (p_schemas)
        UNION
        SELECT 'schema', n.nspname::text, r.role_name, p.priv
          FROM pg_catalog.pg_namespace AS n CROSS JOIN roles AS r
          CROSS JOIN unnest(ARRAY['USAGE', 'CREATE']) AS p(priv)
         WHERE n.nspname = ANY (p_schemas) AND r.role_oid <> 0
           AND pg_catalog.has_schema_privilege(r.role_oid, n.oid, p.priv)
        UNION
        SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END, format('%I.%I', n.nspname, c.relname),
               r.role_name, x.privilege_type
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(c.relacl, pg_catalog.acldefault(
                    CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", c.relowner))) AS x
          JOIN roles AS r ON r.role_oid = x.grantee
         WHERE n.nspname = ANY (p_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        UNION
        SELECT 'table', format('%I.%I', n.nspname, c.relname), r.role_name, p.priv
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          CROSS JOIN roles AS r
          CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
         WHERE n.nspname = ANY (p_schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND r.role_oid <> 0
           AND (pg_catalog.has_table_privilege(r.role_oid, c.oid, p.priv)
                OR (p.priv IN ('SELECT', 'INSERT', 'UPDATE', 'REFERENCES')
                    AND pg_catalog.has_any_column_privilege(r.role_oid, c.oid, p.priv)))
        UNION
        SELECT 'sequence', format('%I.%I', n.nspname, c.relname), r.role_name, p.priv
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          CROSS JOIN roles AS r CROSS JOIN unnest(ARRAY['USAGE', 'SELECT', 'UPDATE']) AS p(priv)
         WHERE n.nspname = ANY (p_schemas) AND c.relkind = 'S' AND r.role_oid <> 0
           AND pg_catalog.has_sequence_privilege(r.role_oid, c.oid, p.priv)
        UNION
        SELECT 'routine', p.oid::regprocedure::text, r.role_name, x.privilege_type
          FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
          CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))) AS x
          JOIN roles AS r ON r.role_oid = x.grantee
         WHERE n.nspname = ANY (p_schemas)
        UNION
        SELECT 'routine', p.oid::regprocedure::text, r.role_name, 'EXECUTE'
          FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
          CROSS JOIN roles AS r
         WHERE n.nspname = ANY (p_schemas) AND r.role_oid <> 0
           AND pg_catalog.has_function_privilege(r.role_oid, p.oid, 'EXECUTE')
    )
    SELECT jsonb_build_object(
               'roles_checked', (SELECT jsonb_agg(r.role_name ORDER BY r.role_name) FROM roles AS r),
               'exposed', (SELECT count(*) FROM exposed),
               'by_kind', (SELECT coalesce(jsonb_object_agg(k.kind, k.n), '{}')
                             FROM (SELECT e.kind, count(*) AS n FROM exposed AS e GROUP BY e.kind) AS k),
               'sample', (SELECT coalesce(jsonb_agg(to_jsonb(e)), '[]')
                            FROM (SELECT * FROM exposed ORDER BY kind, name, grantee, privilege LIMIT 20) AS e))
      INTO v_rows;
    RETURN QUERY SELECT 'migration_objects_not_exposed'::text,
        CASE WHEN (v_rows ->> 'exposed')::int > 0 THEN 'fail' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'no USAGE on the migration schemas and no privilege on their '
                                                 'tables, sequences or routines for an application role or PUBLIC');

    -- default privileges in force for objects created later
    WITH roles AS (SELECT a.role_name, a.role_oid FROM migration_validation.application_roles() AS a),
    owners AS (SELECT DISTINCT n.nspowner AS owner FROM pg_catalog.pg_namespace AS n WHERE n.nspname = ANY (p_schemas)),
    effective AS (
        -- the owner's global defaults (built-in when no row: EXECUTE for PUBLIC on routines)
        SELECT pg_catalog.pg_get_userbyid(o.owner) AS for_role, NULL::text AS in_schema, t.objtype,
               coalesce(d.defaclacl, pg_catalog.acldefault(t.objtype, o.owner)) AS acl
          FROM owners AS o CROSS JOIN unnest(ARRAY['r', 'S', 'f', 'n']::"char"[]) AS t(objtype)
          LEFT JOIN pg_catalog.pg_default_acl AS d
                 ON d.defaclrole = o.owner AND d.defaclnamespace = 0 AND d.defaclobjtype = t.objtype
        UNION ALL
        -- per-schema entries of any role in the migration schemas
        SELECT pg_catalog.pg_get_userbyid(d.defaclrole), n.nspname::text, d.defaclobjtype, d.defaclacl
          FROM pg_catalog.pg_default_acl AS d JOIN pg_catalog.pg_namespace AS n ON n.oid = d.defaclnamespace
         WHERE n.nspname = ANY (p_schemas)
    ), bad AS (
        SELECT e.for_role, e.in_schema,
               CASE e.objtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'routines'
                              WHEN 'n' THEN 'schemas' ELSE e.objtype::text END AS objects,
               r.role_name AS grantee, x.privilege_type AS privilege
          FROM effective AS e CROSS JOIN LATERAL pg_catalog.aclexplode(e.acl) AS x
          JOIN roles AS r ON r.role_oid = x.grantee
    )
    SELECT jsonb_build_object('offending', (SELECT count(*) FROM bad),
                              'sample', (SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]')
                                           FROM (SELECT * FROM bad ORDER BY 1, 2, 3, 4 LIMIT 20) AS b))
      INTO v_rows;
    RETURN QUERY SELECT 'migration_default_privileges'::text,
        CASE WHEN (v_rows ->> 'offending')::int > 0 THEN 'fail' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'objects the migration owner creates later, and any default '
                                                 'privileges set in the migration schemas, grant nothing to an '
                                                 'application role or PUBLIC',
                                     'hint', 'run SELECT * FROM migration_control.secure_migration_objects()');
END
$$;

CREATE OR REPLACE FUNCTION migration_validation.security_backup_tables_check()
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rows     jsonb;
BEGIN
    -- Check backup_tables_protected of validate_security(): the backup tables hold session tokens
    -- and profile data, so RLS is on and no application role (service_role included) has a
    -- privilege; the views over the backup copies (user_profiles_complete_backup,
    -- user_sessions_backup) show the same rows: no privilege either (RLS does not apply to a view).
    WITH roles AS (SELECT a.role_name, a.role_oid FROM migration_validation.application_roles() AS a),
    tabs AS (
        SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relrowsecurity OR c.relkind = 'v' AS relrowsecurity,
               c.relacl, c.relowner
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'migration_backup' AND c.relkind IN ('r', 'p', 'v')
    ), bad AS (
        SELECT t.name, 'row level security disabled' AS problem FROM tabs AS t WHERE NOT t.relrowsecurity
        UNION
        SELECT t.name, format('%s has %s', r.role_name, x.privilege_type)
          FROM tabs AS t CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(t.relacl, pg_catalog.acldefault('r', t.relowner))) AS x
          JOIN roles AS r ON r.role_oid = x.grantee
        UNION
        SELECT t.name, format('%s has %s', r.role_name, p.priv)
          FROM tabs AS t CROSS JOIN roles AS r CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(priv)
         WHERE r.role_oid <> 0 AND (pg_catalog.has_table_privilege(r.role_oid, t.oid, p.priv)
               OR (p.priv IN ('SELECT', 'INSERT', 'UPDATE') AND pg_catalog.has_any_column_privilege(r.role_oid, t.oid, p.priv)))
    )
    SELECT jsonb_build_object('tables_checked', (SELECT count(*) FROM tabs),
                              'offending', (SELECT count(*) FROM bad),
                              'sample', (SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]')
                                           FROM (SELECT * FROM bad ORDER BY 1, 2 LIMIT 20) AS b))
      INTO v_rows;
    RETURN QUERY SELECT 'backup_tables_protected'::text,
        CASE WHEN (v_rows ->> 'offending')::int > 0 OR (v_rows ->> 'tables_checked')::int = 0 THEN 'fail' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'every table of migration_backup has row level security enabled '
                                                 'and grants nothing to an application role or PUBLIC');
END
$$;

CREATE OR REPLACE FUNCTION migration_validation.security_definer_check(p_schemas text[], p_policy text[])
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_rows     jsonb;
BEGIN
    -- Check security_definer_search_path of validate_security(): SECURITY DEFINER functions of the
    -- migration (p_schemas) and policy (p_policy) schemas pin a search_path no application role
    -- can write to.
    WITH roles AS (SELECT a.role_name, a.role_oid FROM migration_validation.application_roles() AS a),
    defs AS (
        SELECT p.oid, p.oid::regprocedure::text AS function, n.nspname::text AS schema,
               migration_validation.search_path_entries(p.proconfig) AS path,
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS d
                        WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
                   AS in_extension
          FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND (n.nspname = ANY (p_schemas) OR n.nspname = ANY (p_policy))
    ), findings AS (
        SELECT d.function, d.schema, d.in_extension, 'fail' AS severity,
               'search_path not set: callers choose where unqualified names resolve' AS problem
          FROM defs AS d WHERE d.path IS NULL
        UNION ALL
        SELECT d.function, d.schema, d.in_extension, 'fail',
               format('search_path includes %s, where %s can create objects', quote_ident(e), r.role_name)
          FROM defs AS d CROSS JOIN unnest(d.path) AS e
          JOIN pg_catalog.pg_namespace AS n ON n.nspname = e
          CROSS JOIN roles AS r
         WHERE e <> 'pg_temp'
           AND ((r.role_oid = 0 AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(coalesce(n.nspacl,
                        pg_catalog.acldefault('n', n.nspowner))) AS x WHERE x.grantee = 0 AND x.privilege_type = 'CREATE'))
                OR (r.role_oid <> 0 AND pg_catalog.has_schema_privilege(r.role_oid, n.oid, 'CREATE')))
        UNION ALL
        SELECT d.function, d.schema, d.in_extension, 'fail',
               'search_path includes "$user": the schema depends on who owns the function'
          FROM defs AS d WHERE '$user' = ANY (d.path)
        UNION ALL
        SELECT d.function, d.schema, d.in_extension, 'warn',
               'search_path does not end with pg_temp: temporary tables of the caller are searched first'
          FROM defs AS d WHERE cardinality(d.path) > 0 AND d.path[cardinality(d.path)] <> 'pg_temp'
        UNION ALL
        SELECT d.function, d.schema, d.in_extension, 'warn',
               'SECURITY DEFINER in a migration schema: every migration function is meant to be SECURITY INVOKER'
          FROM defs AS d WHERE d.schema = ANY (p_schemas)
    )
    SELECT jsonb_build_object(
               'schemas', to_jsonb(p_schemas || p_policy),
               'definer_functions', (SELECT count(*) FROM defs),
               'failing', (SELECT count(*) FROM findings AS f WHERE f.severity = 'fail' AND NOT f.in_extension),
               'warnings', (SELECT count(*) FROM findings AS f WHERE f.severity = 'warn' OR f.in_extension),
               'sample', (SELECT coalesce(jsonb_agg(to_jsonb(f)), '[]')
                            FROM (SELECT * FROM findings ORDER BY severity, function LIMIT 20) AS f))
      INTO v_rows;
    RETURN QUERY SELECT 'security_definer_search_path'::text,
        CASE WHEN (v_rows ->> 'failing')::int > 0 THEN 'fail'
             WHEN (v_rows ->> 'warnings')::int > 0 THEN 'warn' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'every SECURITY DEFINER function in the migration and policy '
                                                 'schemas pins search_path (e.g. SET search_path = '''' with '
                                                 'qualified names, or pg_catalog, pg_temp)',
                                     'note', 'functions of extensions are reported as warnings');
END
$$;

CREATE OR REPLACE FUNCTION migration_validation.validate_security()
RETURNS TABLE(check_name text, status text, details jsonb)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_schemas  text[] := ARRAY['migration_tracking', 'migration_backup', 'migration_validation',
                               'migration_control'];
    v_policy   text[];
    v_rows     jsonb;
    v_warn     jsonb;
BEGIN
    -- Security of the installed infrastructure and of the application it runs in, as check rows
    -- (the gate runs it on a team's own schema). Application roles = application_roles():
    -- PUBLIC, anon, authenticated, service_role, authenticator, target_config.auth_role.
    -- Privileges are read with has_*_privilege (memberships count) and, for PUBLIC, from the
    -- ACL itself (a NULL ACL means the built-in default, e.g. EXECUTE for PUBLIC on routines).
    SELECT c.policy_schemas INTO v_policy FROM migration_control.target_config AS c;
    v_policy := coalesce(v_policy, ARRAY['public']);

    -- The migration infrastructure (owned, not exposed, backups protected), then the SECURITY
    -- DEFINER functions of the migration and policy schemas; the rows keep this order.
    RETURN QUERY SELECT * FROM migration_validation.security_ownership_check(v_schemas);
    RETURN QUERY SELECT * FROM migration_validation.security_privilege_checks(v_schemas);
    RETURN QUERY SELECT * FROM migration_validation.security_backup_tables_check();
    RETURN QUERY SELECT * FROM migration_validation.security_definer_check(v_schemas, v_policy);

    -- Application tables an API role can reach have RLS on. Kept here, next to the policy
    -- schemas it reads (test_security_hijack's canary also relies on this function calling
    -- format/to_jsonb itself).
    WITH roles AS (SELECT a.role_name, a.role_oid FROM migration_validation.application_roles() AS a
                    WHERE a.role_name NOT IN ('service_role', 'authenticator')),
    reach AS (
        SELECT format('%I.%I', n.nspname, c.relname) AS "table", r.role_name AS grantee, p.priv AS privilege
          FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          CROSS JOIN roles AS r CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p(priv)
         WHERE n.nspname = ANY (v_policy) AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity
           AND ((r.role_oid = 0 AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(coalesce(c.relacl,
                        pg_catalog.acldefault('r', c.relowner))) AS x WHERE x.grantee = 0 AND x.privilege_type = p.priv))
                OR (r.role_oid <> 0 AND (pg_catalog.has_table_privilege(r.role_oid, c.oid, p.priv)
                    OR (p.priv <> 'DELETE' AND pg_catalog.has_any_column_privilege(r.role_oid, c.oid, p.priv)))))
    ), tables AS (
        SELECT r."table", jsonb_agg(DISTINCT r.grantee || ': ' || r.privilege) AS granted
          FROM reach AS r GROUP BY r."table"
    )
    SELECT jsonb_build_object(
               'schemas', to_jsonb(v_policy),
               'tables_without_rls', (SELECT count(*) FROM tables),
               'sample', (SELECT coalesce(jsonb_agg(jsonb_build_object('table', t."table", 'granted', t.granted)), '[]')
                            FROM (SELECT * FROM tables ORDER BY 1 LIMIT 20) AS t))
      INTO v_rows;
    RETURN QUERY SELECT 'application_tables_rls'::text,
        CASE WHEN (v_rows ->> 'tables_without_rls')::int > 0 THEN 'fail' ELSE 'pass' END,
        v_rows || jsonb_build_object('expected', 'every table of the policy schemas that anon, authenticated or '
                                                 'PUBLIC may read or write has row level security enabled',
                                     'hint', 'ALTER TABLE ... ENABLE ROW LEVEL SECURITY (and add policies), or '
                                             'REVOKE the grants');
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_validation FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_control FROM PUBLIC;

-- Secure everything installed so far (this file runs last).
SELECT * FROM migration_control.secure_migration_objects();
