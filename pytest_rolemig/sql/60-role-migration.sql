-- Role migration: moves every user from their legacy role to the new role the mapping
-- names, in keyset batches, then rewrites the role names in the RLS policies and narrows
-- the role CHECK constraints to the new roles.
--
-- Provides (schema migration_control):
--   rewrite_role_literals(text, text)     one expression's quoted legacy role names -> new names
--   adjust_role_constraints(text)         widen / narrow the CHECK constraints on the role column
--   revisit_probe_sql()                   "the log says this migration moved user t onto their role"
--   pending_users_sql()                   the "still to migrate" predicate (offline and online path)
--   pending_count(text, timestamptz)      how many users are still to migrate, in one set operation
--   role_unique_indexes(oid, text)        unique indexes spanning the role column and others (merges)
--   batch_statement_sql(...)              the one statement of a batch, as migrate_batch runs it
--   merge_batch_duplicates(...)           a logged batch's merged duplicates: deleted, logged 'merged'
--   move_logged_users(...)                a logged batch's users moved by compare-and-swap
--   batch_statement_name(jsonb)           the name of its prepared statement
--   forget_batch_statement(jsonb)         that prepared statement dropped, at the end of a walk
--   prepare_batch_statement(jsonb)        the batch statement as a prepared statement of the session
--   migrate_batch(...)                    ONE keyset batch: log, then UPDATE (offline and online path)
--   expand_role_literals(text)            one expression's legacy role literals -> legacy OR new role
--   alter_role_policy(...)                ONE policy to its expand or contract form, logged
--   role_policies()                       the policies of the migrated tables, in rewrite order
--   rewrite_role_policies(text, text)     alter_role_policy for every policy of the migrated tables
--   refuse_bad_run(text, integer)         the argument and target refusals every path raises first
--   refuse_unready_mapping()              the mapping refusals every path raises before changing anything
--   refuse_offline_run(text, int, int)    the lock and argument refusals of execute_role_migration
--   choose_backup(text, text[])           the backup execute_role_migration runs with, verified
--   walk_batches(...)                     execute_role_migration's batches, each a subtransaction
--   any_pending(...)                      whether users are left after the batches
--   finish_migration(...)                 contract the policies and narrow the constraints, logged
--   execute_role_migration(...)           the migration run (batches, logging, policies, constraints)
--   run_fingerprint()                     the mapping and the policies, as a run last checked them
--   stop_key(), request_stop(integer), stop_requested()
--                                         ask a backend's run_role_migration to stop after its batch
--   run_resume(text, text, integer)       what a run's next batches need, read once
--   committed_batch(...)                  ONE batch of a run, with what execute_role_migration checked
--   run_role_migration(...)               PROCEDURE: execute_role_migration, one COMMIT per batch (CLI)
--
-- Depends on: migration-logging-system.sql (target_config, new_roles, role_mapping,
-- migration_tracking.start_migration_batch / complete_migration_batch, migration_batch,
-- migration_log, rls_policy_changes), comprehensive-backup-system.sql (backup_log,
-- validate_backup_completeness), migration-rollback-system.sql (rollback_log),
-- migration-validation-functions.sql (target, migrated_tables, quoted_literals) and
-- migration-control-system.sql (verify_target, discover_legacy_roles).
--
-- Rollout, as the rehearsal runs it:
--   1. widen : role CHECK constraints accept legacy + new roles (the data is mixed meanwhile)
--   2. expand: every policy naming a legacy role accepts its new role too, so a user keeps
--              the same access whichever of the two names they (and their token) hold
--   3. batches: users move to their new role, p_max_batches at a time if asked; resumable
--   4. finish: once no user is left on a legacy role, policies are contracted to the new
--              names and the CHECK constraints narrowed to the new roles.
-- Access at every committed point: a call with p_max_batches commits a mixed state (and so
-- does run_role_migration, the CLI's path, after every batch), so it is refused when a policy
-- cannot be expanded. Without
-- p_max_batches such a run is all or nothing: a failing batch undoes the whole run.

CREATE SCHEMA IF NOT EXISTS migration_control;

CREATE OR REPLACE FUNCTION migration_control.rewrite_role_literals(p_expr text, p_mode text DEFAULT 'migrate')
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_out   text;
    v_again text;
BEGIN
    -- Rewrites the quoted string literals of one deparsed expression (pg_get_expr output)
    -- that name a mapped legacy role into the quoted new role; everything else (claim names
    -- such as 'user_role', identifiers, other literals, the ::text casts) is kept byte for
    -- byte. The expression is cut into tokens once, so 'admin' -> 'owner' and 'owner' ->
    -- 'x' can never chain. Modes:
    --   migrate     every literal naming a legacy role whose new name differs
    --   legacy_only only literals naming a legacy role that is not also a new role name
    IF p_mode IS NULL OR p_mode NOT IN ('migrate', 'legacy_only') THEN
        RAISE EXCEPTION 'unknown rewrite mode %', coalesce(quote_literal(p_mode), 'NULL')
            USING DETAIL = 'Modes: migrate, legacy_only.', HINT = 'use rewrite_role_literals(expr, ''migrate'')';
    END IF;
    IF p_expr IS NULL THEN
        RETURN NULL;
    END IF;

    SELECT string_agg(CASE WHEN m.new_role IS NOT NULL AND m.new_role <> l.lit
                                AND (p_mode = 'migrate'
                                     OR NOT EXISTS (SELECT 1 FROM migration_control.new_roles r
                                                    WHERE r.role_name = l.lit))
                           THEN quote_literal(m.new_role)
                           ELSE x.t[1] END, '' ORDER BY x.n),
           string_agg(x.t[1], '' ORDER BY x.n)
    INTO v_out, v_again
    FROM pg_catalog.regexp_matches(p_expr, '"(?:[^"]|"")*"|''(?:[^'']|'''')*''|[^''"]+', 'g') WITH ORDINALITY AS x(t, n)
    CROSS JOIN LATERAL (SELECT CASE WHEN left(x.t[1], 1) = ''''
                                    THEN replace(substr(x.t[1], 2, length(x.t[1]) - 2), '''''', '''') END AS lit) l
    LEFT JOIN migration_control.role_mapping m ON m.legacy_role = l.lit;

    IF v_again IS DISTINCT FROM p_expr THEN
        RAISE EXCEPTION 'cannot tokenize expression for role rewrite: %', p_expr
            USING DETAIL = 'An unbalanced quote left part of the expression unmatched.',
                  HINT = 'rewrite this policy by hand; nothing was changed';
    END IF;
    RETURN v_out;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.adjust_role_constraints(p_mode text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg     migration_control.target_config;
    v_rel     oid;
    v_attnum  smallint;
    v_con     record;
    v_target  text[];
    v_newdef  text;
    v_changes jsonb := '[]';
BEGIN
    -- Rewrites the role-list CHECK constraints of the role column: 'widen' lets them accept
    -- the new roles as well (before the batches), 'narrow' leaves only the new roles (after
    -- every user moved). A role-list constraint is a single-column CHECK on the role column
    -- whose literals are all role names (legacy or new); any other CHECK is left alone. The
    -- constraint keeps its name (DROP + ADD in one ALTER TABLE). Returns what changed.
    IF p_mode IS NULL OR p_mode NOT IN ('widen', 'narrow') THEN
        RAISE EXCEPTION 'unknown constraint mode %', coalesce(quote_literal(p_mode), 'NULL')
            USING DETAIL = 'Modes: widen, narrow.', HINT = 'use adjust_role_constraints(''widen'')';
    END IF;
    v_cfg := migration_validation.target();
    v_rel := to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table));
    SELECT a.attnum INTO v_attnum FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = v_rel AND a.attname = v_cfg.role_column AND NOT a.attisdropped;

    FOR v_con IN
        SELECT c.conname::text AS name, pg_catalog.pg_get_constraintdef(c.oid) AS def,
               (SELECT array_agg(q.literal ORDER BY q.ordinality)
                FROM migration_validation.quoted_literals(pg_catalog.pg_get_constraintdef(c.oid)) q) AS lits
        FROM pg_catalog.pg_constraint c
        WHERE c.conrelid = v_rel AND c.contype = 'c' AND c.conkey = ARRAY[v_attnum]
        ORDER BY c.conname
    LOOP
        CONTINUE WHEN v_con.lits IS NULL OR EXISTS (
            SELECT 1 FROM unnest(v_con.lits) AS l
            WHERE NOT EXISTS (SELECT 1 FROM migration_control.role_mapping m WHERE m.legacy_role = l)
              AND NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = l));
        IF p_mode = 'widen' THEN
            -- the new roles first: PostgreSQL tests a CHECK's list in order, and every row a
            -- batch writes holds a new role (last, they cost a migration of 1,000,000 users
            -- 0.3 to 0.6 s)
            SELECT array_agg(u.r ORDER BY u.o) INTO v_target
            FROM (SELECT r.role_name AS r, r.position AS o FROM migration_control.new_roles r
                  UNION ALL
                  SELECT l, 100000 + min(n) FROM unnest(v_con.lits) WITH ORDINALITY AS x(l, n)
                  WHERE NOT EXISTS (SELECT 1 FROM migration_control.new_roles r WHERE r.role_name = x.l)
                  GROUP BY l) u;
        ELSE
            SELECT array_agg(r.role_name ORDER BY r.position) INTO v_target FROM migration_control.new_roles r;
        END IF;
        CONTINUE WHEN v_target @> v_con.lits AND v_con.lits @> v_target;  -- already in shape

        SELECT format('CHECK ((%I)::text = ANY (ARRAY[%s]))', v_cfg.role_column,
                      string_agg(quote_literal(t) || '::text', ', ' ORDER BY n))
        INTO v_newdef FROM unnest(v_target) WITH ORDINALITY AS u(t, n);
        EXECUTE format('ALTER TABLE %I.%I DROP CONSTRAINT %I, ADD CONSTRAINT %I %s',
                       v_cfg.profiles_schema, v_cfg.profiles_table, v_con.name, v_con.name, v_newdef);
        v_changes := v_changes || jsonb_build_object(
            'constraint', v_con.name, 'action', p_mode, 'old_definition', v_con.def,
            'new_definition', (SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c
                               WHERE c.conrelid = v_rel AND c.conname = v_con.name));
    END LOOP;
    RETURN v_changes;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.revisit_probe_sql()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- "The log says user t was moved onto the role they hold by a completed batch of this
    -- migration since the cutoff" ($1 = migration name, $2 = cutoff): in a chain (a -> b,
    -- b -> c) a user on b is pending unless this holds. Only those rows are marked revisited and
    -- indexed (migration_log_revisited_idx). OFFSET 0 keeps the NOT EXISTS a per-row index
    -- probe, and the batch row is read by a scalar subquery, so stale statistics of the growing
    -- log cannot turn it into a scan of the log per user. Part of pending_users_sql and of the
    -- batch statement in physical order (batch_statement_sql), which applies it only on roles
    -- that are both legacy and new.
    SELECT format(
        'EXISTS (SELECT 1 FROM migration_tracking.migration_log l
                  WHERE l.user_key = t.%1$I::text AND l.revisited AND l.new_role = t.%2$I::text
                    AND l.status = ''migrated'' AND l.logged_at > $2
                    AND (SELECT b.migration_name = $1 AND b.status = ''completed''
                         FROM migration_tracking.migration_batch b WHERE b.batch_id = l.batch_id)
                  OFFSET 0)',
        c.key_column, c.role_column)
    FROM migration_control.target_config c
$$;

CREATE OR REPLACE FUNCTION migration_control.pending_users_sql()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- "User t still has to move", with $1 = migration name and $2 = cutoff (start of the
    -- newest completed rollback): on a legacy role the mapping moves to another name. An
    -- identity-mapped user ('admin' -> 'admin') never has to move, and a user the migration
    -- moved holds a new role, which is no such legacy role, except in a chain (a -> b, b -> c:
    -- b is both): a user on b is pending unless the log says so (revisit_probe_sql). The role
    -- lists are arrays computed once (= ANY, <> ALL): a row filter that cheap is applied before
    -- the probe (as an IN subquery, joined after the filter, the probe ran for every user on a
    -- new role: 2 s at 1,000,000 users). Shared by execute_role_migration and the online
    -- procedure, so each resumes the other's work.
    SELECT format(
        't.%2$I::text = ANY (ARRAY(SELECT m.legacy_role FROM migration_control.role_mapping m
                                    WHERE m.new_role <> m.legacy_role))
         AND (t.%2$I::text <> ALL (ARRAY(SELECT r.role_name FROM migration_control.new_roles r))
              OR NOT %3$s)',
        c.key_column, c.role_column, migration_control.revisit_probe_sql())
    FROM migration_control.target_config c
$$;

CREATE OR REPLACE FUNCTION migration_control.pending_count(p_migration_name text, p_cutoff timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_cfg   migration_control.target_config;
    v_count bigint;
BEGIN
    -- The number of users pending_users_sql() holds true for. The predicate reads the log only
    -- for users on a chain role (see there), so the count is one pass over the table, or an
    -- index scan where the role column has an index; after a migration nobody is on a moving
    -- legacy role and the answer is quick.
    v_cfg := migration_validation.target();
    EXECUTE format('SELECT count(*) FROM %I.%I t WHERE %s',
                   v_cfg.profiles_schema, v_cfg.profiles_table, migration_control.pending_users_sql())
    INTO v_count
    USING p_migration_name, p_cutoff;
    RETURN v_count;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.unchanged_count(p_migration_name text, p_cutoff timestamptz)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
SET enable_nestloop = off  -- the log's statistics are stale while it grows: a nested loop of log
                           -- rows and batch rows took minutes at 1,000,000 users; hashed, 0.2 s
AS $$
DECLARE
    v_cfg   migration_control.target_config;
    v_count bigint;
BEGIN
    -- The users a finished migration left as they were, for its report: those on an
    -- identity-mapped legacy role ('admin' -> 'admin') minus those the migration moved there
    -- (its 'migrated' log rows since the cutoff onto such a role). Identity-mapped users are
    -- never pending and get no log row, so batches do not count them: two counts here, once,
    -- cost less than a log row and a check for each of them.
    v_cfg := migration_validation.target();
    EXECUTE format(
        'SELECT (SELECT count(*) FROM %I.%I t
                  WHERE t.%I::text IN (SELECT m.legacy_role FROM migration_control.role_mapping m
                                        WHERE m.new_role = m.legacy_role))
              - (SELECT count(*) FROM migration_tracking.migration_log l
                  WHERE l.status = ''migrated'' AND l.logged_at > $2
                    AND l.new_role IN (SELECT m.legacy_role FROM migration_control.role_mapping m
                                        WHERE m.new_role = m.legacy_role)
                    AND l.batch_id IN (SELECT b.batch_id FROM migration_tracking.migration_batch b
                                        WHERE b.migration_name = $1 AND b.status = ''completed''))',
        v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.role_column)
    INTO v_count
    USING p_migration_name, p_cutoff;
    RETURN greatest(v_count, 0);
END;
$$;

DROP FUNCTION IF EXISTS migration_control.resume_point(text, timestamptz);
CREATE OR REPLACE FUNCTION migration_control.resume_point(
    p_migration_name text, p_cutoff timestamptz,
    OUT after_position text, OUT verified_backups text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Where a later call of migration p_migration_name picks up, from its completed batches
    -- since the cutoff (the newest completed rollback): the walk position after the latest one
    -- (details ->> 'after', see migrate_batch; a batch written before positions existed gives
    -- its last key), so the walk goes on from there instead of re-probing every finished user
    -- (a call of one batch cost a pass over the whole table), and the backups those batches
    -- ran with (verified in full when the migration started with them).
    SELECT (SELECT coalesce(b.details ->> 'after', b.last_key) FROM migration_tracking.migration_batch b
             WHERE b.migration_name = p_migration_name AND b.status = 'completed'
               AND b.started_at > p_cutoff AND b.last_key IS NOT NULL
             ORDER BY b.completed_at DESC, b.batch_id DESC LIMIT 1),
           ARRAY(SELECT DISTINCT b.details ->> 'backup_id' FROM migration_tracking.migration_batch b
                  WHERE b.migration_name = p_migration_name AND b.status = 'completed'
                    AND b.started_at > p_cutoff AND b.details ? 'backup_id')
$$;

CREATE OR REPLACE FUNCTION migration_control.role_unique_indexes(p_rel oid, p_role_column text)
RETURNS TABLE(index_name name, cols text[])
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The unique indexes of table p_rel that span the role column and other columns (a roles
    -- table, UNIQUE (user_id, role)), each with those other columns: where a batch can merge
    -- duplicates, so migrate_batch cannot move its users in one statement (merge_batch_duplicates).
    SELECT ic.relname,
           array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attname <> p_role_column)
    FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
    WHERE i.indrelid = p_rel AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
    GROUP BY ic.relname
    HAVING bool_or(a.attname = p_role_column) AND count(*) > 1
    ORDER BY ic.relname
$$;

DROP FUNCTION IF EXISTS migration_control.batch_statement_sql(migration_control.target_config, text, text, boolean);
CREATE OR REPLACE FUNCTION migration_control.batch_statement_sql(
    p_cfg migration_control.target_config, p_key_type text, p_role_type text, p_log_first boolean,
    p_by_position boolean)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_batch text;
    v_tail  text;
    -- "the new role is itself a legacy role the mapping moves on" (a chain): the log row's
    -- revisited flag, which pending_users_sql's probe looks for
    v_chain text := 'IN (SELECT c.legacy_role FROM migration_control.role_mapping c WHERE c.new_role <> c.legacy_role)';
BEGIN
    -- The one statement of a migrate_batch call, with $1 = migration name, $2 = cutoff, $3 =
    -- walk position to start at, $4 = batch size, $5 = batch id, $6 = end of the window.
    -- With p_by_position (a plain table) the walk goes in physical order: a position is a
    -- ctid, and a window [$3, $6) of consecutive row positions is read by a TID range scan, so
    -- a batch reads a few neighbouring blocks, as one sequential UPDATE would, instead of a
    -- thousand blocks spread over the table (keyset over a random uuid key: a migration of
    -- 1,000,000 users spent 2x a bare UPDATE there). Otherwise (a partitioned table: a ctid
    -- names a row within one partition only) the walk is a keyset over the primary key: $3 is
    -- the last key done, $6 unused, and the batch is the next $4 pending users in key order.
    -- Pending users only (pending_users_sql): identity-mapped users are never read, locked or
    -- logged (unchanged_count counts them once, at the end).
    -- The batch is the next $4 pending users in walk order (up to the window's end in physical
    -- order). In physical order without p_log_first only the position of the batch's last user
    -- is read first, without a sort: a TID range scan returns rows in physical order (it never
    -- joins a synchronized scan), so LIMIT stops at the batch's last user. One UPDATE then moves
    -- the pending users from $3 up to it, which are that batch (the same snapshot), and logs
    -- what it returned. It reads the role
    -- it replaces, so it is its own compare-and-swap: a user whose role the application changed
    -- meanwhile is re-checked by PostgreSQL and stays pending for a later pass. Reading the
    -- whole batch first, then updating it by position and key, cost a migration of 1,000,000
    -- users a second more. revisited: the new role is a chain role, and only on a chain role
    -- does the UPDATE probe the log. Otherwise the batch is read first; without p_log_first
    -- the statement moves it by compare-and-swap and logs what the UPDATE returned; with it (a
    -- unique index spans the role column) it only logs the batch and returns the keys and old
    -- roles of the users to move, which migrate_batch moves once the merged duplicates are
    -- resolved. Every form returns the counts, the first and last user of the batch, the
    -- position of its last user and the batch's size.
    IF p_by_position AND NOT p_log_first THEN
        RETURN format(
            'WITH edge AS (
                 SELECT pg_catalog.max(b.pos) AS hi, pg_catalog.count(*) AS n
                 FROM (SELECT t.ctid AS pos FROM %3$I.%4$I t
                        WHERE t.ctid >= $3::text::pg_catalog.tid AND t.ctid < $6::text::pg_catalog.tid AND %7$s
                        LIMIT $4) b),
             moved AS (
                 UPDATE %3$I.%4$I AS t SET %2$I = m.new_role::%5$s
                 FROM (SELECT x.legacy_role, x.new_role,
                              x.new_role %8$s AS revisited,
                              x.legacy_role IN (SELECT r.role_name FROM migration_control.new_roles r) AS chained
                       FROM migration_control.role_mapping x WHERE x.new_role <> x.legacy_role
                       OFFSET 0) AS m
                 WHERE t.ctid >= $3::text::pg_catalog.tid AND t.ctid <= (SELECT e.hi FROM edge e)
                   AND t.%2$I::text = m.legacy_role AND (NOT m.chained OR NOT %6$s)
                 RETURNING t.%1$I::text AS user_key, m.legacy_role AS old_role, m.new_role, m.revisited),
             logged AS (
                 INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status, revisited)
                 SELECT $5, mv.user_key, mv.old_role, mv.new_role, ''migrated'', mv.revisited FROM moved mv
                 RETURNING migration_log.user_key)
             SELECT pg_catalog.count(*), (pg_catalog.array_agg(l.user_key))[1],
                    (pg_catalog.array_agg(l.user_key))[pg_catalog.count(*)], (SELECT e.hi::text FROM edge e),
                    (SELECT e.n FROM edge e)
             FROM logged l',
            p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table,
            p_role_type, migration_control.revisit_probe_sql(), migration_control.pending_users_sql(), v_chain);
    END IF;
    v_batch := format(
        'batch AS (
             SELECT t.%1$I AS k, t.%2$I::text AS role, t.%7$s AS pos
             FROM %3$I.%4$I t
             WHERE %6$s AND %8$s
             ORDER BY t.%7$s
             LIMIT $4)',
        p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table,
        p_key_type, migration_control.pending_users_sql(),
        CASE WHEN p_by_position THEN 'ctid' ELSE quote_ident(p_cfg.key_column) END,
        CASE WHEN p_by_position THEN 't.ctid >= $3::text::pg_catalog.tid AND t.ctid < $6::text::pg_catalog.tid'
             ELSE format('($3::text IS NULL OR t.%I > $3::text::%s)', p_cfg.key_column, p_key_type) END);
    -- the batch's first and last user and the position of its last: in physical order from
    -- min and max of the positions, one pass over the batch and two row lookups (three sorts of
    -- the batch took 4% of a migration); a key has no min and max in every type, so the keyset
    -- walk sorts
    IF p_by_position THEN
        v_batch := v_batch || ',
         edge AS (SELECT pg_catalog.min(b.pos) AS lo, pg_catalog.max(b.pos) AS hi, pg_catalog.count(*) AS n FROM batch b)';
        v_tail := '(SELECT b.k::text FROM batch b WHERE b.pos = (SELECT e.lo FROM edge e)),
         (SELECT b.k::text FROM batch b WHERE b.pos = (SELECT e.hi FROM edge e)),
         (SELECT e.hi::text FROM edge e),
         (SELECT e.n FROM edge e)';
    ELSE
        v_tail := '(SELECT b.k::text FROM batch b ORDER BY b.pos LIMIT 1),
         (SELECT b.k::text FROM batch b ORDER BY b.pos DESC LIMIT 1),
         (SELECT b.pos::text FROM batch b ORDER BY b.pos DESC LIMIT 1),
         (SELECT pg_catalog.count(*) FROM batch)';
    END IF;
    IF p_log_first THEN
        RETURN format(
            'WITH %s,
             logged AS (
                 INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status, revisited)
                 SELECT $5, b.k::text, b.role, m.new_role, ''migrated'', m.new_role %s
                 FROM batch b JOIN migration_control.role_mapping m ON m.legacy_role = b.role
                 RETURNING migration_log.user_key, migration_log.old_role, migration_log.status)
             SELECT count(*) FILTER (WHERE l.status = ''migrated''),
                    %s,
                    array_agg(l.user_key ORDER BY l.user_key) FILTER (WHERE l.status = ''migrated''),
                    array_agg(l.old_role ORDER BY l.user_key) FILTER (WHERE l.status = ''migrated'')
             FROM logged l',
            v_batch, v_chain, v_tail);
    END IF;
    RETURN format(
        'WITH %6$s,
         moving AS (
             SELECT b.k, b.role, b.pos, m.new_role,
                    m.new_role %9$s AS revisited
             FROM batch b JOIN migration_control.role_mapping m ON m.legacy_role = b.role),
         moved AS (
             UPDATE %3$I.%4$I AS t SET %2$I = c.new_role::%5$s
             FROM moving AS c
             WHERE t.%7$s = ANY (ARRAY(SELECT x.pos FROM moving x)) AND t.%1$I = c.k AND t.%2$I::text = c.role
             RETURNING t.%1$I::text AS user_key, c.role AS old_role, c.new_role, c.revisited),
         logged AS (
             INSERT INTO migration_tracking.migration_log (batch_id, user_key, old_role, new_role, status, revisited)
             SELECT $5, mv.user_key, mv.old_role, mv.new_role, ''migrated'', mv.revisited FROM moved mv
             RETURNING 1)
         SELECT pg_catalog.count(*), %8$s
         FROM logged l',
        p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table,
        p_role_type, v_batch, CASE WHEN p_by_position THEN 'ctid' ELSE quote_ident(p_cfg.key_column) END,
        v_tail, v_chain);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.merge_batch_duplicates(
    p_cfg migration_control.target_config, p_rel oid, p_key_type text,
    p_migration_name text, p_cutoff timestamptz, p_batch_id text, p_keys text[], p_old text[],
    OUT moving_keys text[], OUT moving_old text[], OUT merged integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_idx    record;
    v_sql    text;
    v_merged text[];
BEGIN
    -- Merged duplicates: where a unique index spans the role column and other columns (a roles
    -- table, UNIQUE (user_id, role)), two rows of one user whose roles map to the same new role
    -- would collide. The defined outcome is "keep one": a row of this batch is deleted when
    -- another row of the same index values ends on the same new role and takes precedence (it
    -- does not change: not pending, or identity-mapped; or it is pending with a smaller key, so
    -- it moved first). The deleted row's log entry becomes 'merged', naming the index and the
    -- row kept; rollback (revert and emergency) inserts it back from the backup. The DELETE
    -- fires the application's triggers, so it runs under the application's search_path too.
    -- p_keys / p_old: the users batch p_batch_id logged as 'migrated', with their old roles.
    -- Returns those still to move (the others were merged) and how many were merged.
    moving_keys := p_keys;
    moving_old := p_old;
    merged := 0;
    FOR v_idx IN
        SELECT u.index_name, u.cols FROM migration_control.role_unique_indexes(p_rel, p_cfg.role_column) u
        WHERE p_keys IS NOT NULL
        ORDER BY u.index_name
    LOOP
        v_sql := format(
            'WITH doomed AS (
                 SELECT x.%1$I AS k, x.%1$I::text AS key_text,
                        (SELECT t.%1$I::text FROM %3$I.%4$I t
                           LEFT JOIN migration_control.role_mapping tm ON tm.legacy_role = t.%2$I::text AND %6$s
                          WHERE %7$s AND t.%1$I <> x.%1$I
                            AND coalesce(tm.new_role, t.%2$I::text) = m.new_role
                            AND (tm.new_role IS NULL OR tm.new_role = tm.legacy_role OR t.%1$I < x.%1$I)
                          ORDER BY (tm.new_role IS NULL OR tm.new_role = tm.legacy_role) DESC, t.%1$I
                          LIMIT 1) AS kept
                 FROM %3$I.%4$I x
                 JOIN migration_control.role_mapping m ON m.legacy_role = x.%2$I::text
                 WHERE x.%1$I = ANY ($3::text[]::%5$s[])),
             gone AS (
                 DELETE FROM %3$I.%4$I AS t USING doomed d
                 WHERE d.kept IS NOT NULL AND t.%1$I = d.k
                 RETURNING d.key_text, d.kept),
             relogged AS (
                 UPDATE migration_tracking.migration_log l
                    SET status = ''merged'',
                        message = pg_catalog.format(''merged into row %%s: unique index %%s (%%s); row deleted, '
                                  'rollback restores it from the backup'', g.kept, $4::text, $5::text)
                   FROM gone g
                  WHERE l.batch_id = $6 AND l.user_key = g.key_text AND l.status = ''migrated''
                 RETURNING l.user_key)
             SELECT pg_catalog.array_agg(r.user_key) FROM relogged r',
            p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table, p_key_type,
            migration_control.pending_users_sql(),
            (SELECT string_agg(format('t.%1$I = x.%1$I', c), ' AND ') FROM unnest(v_idx.cols) AS c));
        PERFORM pg_catalog.set_config('search_path', migration_tracking.application_search_path(), true);
        EXECUTE v_sql INTO v_merged
            USING p_migration_name, p_cutoff, moving_keys, v_idx.index_name,
                  array_to_string(v_idx.cols || p_cfg.role_column, ', '), p_batch_id;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        IF v_merged IS NOT NULL THEN
            SELECT array_agg(k.key ORDER BY k.n), array_agg(k.old ORDER BY k.n) INTO moving_keys, moving_old
            FROM unnest(moving_keys, moving_old) WITH ORDINALITY AS k(key, old, n)
            WHERE NOT k.key = ANY (v_merged);
            merged := merged + cardinality(v_merged);
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.move_logged_users(
    p_cfg migration_control.target_config, p_key_type text, p_role_type text, p_batch_id text,
    p_keys text[], p_old text[], p_migrated bigint)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_sql  text;
    v_done text[];
BEGIN
    -- The move of a batch that was logged first (migrate_batch, with merged duplicates): UPDATE
    -- the users p_keys, logged as 'migrated' in batch p_batch_id, found by primary key, only
    -- while they still hold the logged old role p_old. A user whose role the application
    -- changed meanwhile keeps the application's value and their log row is deleted, so they
    -- stay pending for a later pass. Returns p_migrated, or how many moved when some did not.
    -- The UPDATE fires the application's triggers, which resolve names through the current
    -- search_path: it runs under the application's (application_search_path), set for this
    -- statement only and pinned back right after (an error leaves through the caller's
    -- subtransaction or this function's exit, which both restore the pinned path). So the
    -- statement must not depend on that path: tables and functions are schema-qualified;
    -- types and operators, applied to operands of exact built-in types, resolve in
    -- pg_catalog first, since a path that does not name pg_catalog searches it first (a
    -- path naming it after the application's schemas is the application's choice).
    v_sql := format(
        'WITH upd AS (
             UPDATE %3$I.%4$I AS t SET %2$I = m.new_role::%6$s
             FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS c(k, old_role),
                  migration_control.role_mapping m
             WHERE t.%1$I = ANY ($1::text[]::%5$s[]) AND t.%1$I = c.k::%5$s
               AND t.%2$I::text = c.old_role AND m.legacy_role = c.old_role
             RETURNING t.%1$I::text AS k)
         SELECT pg_catalog.array_agg(upd.k) FROM upd',
        p_cfg.key_column, p_cfg.role_column, p_cfg.profiles_schema, p_cfg.profiles_table,
        p_key_type, p_role_type);
    PERFORM pg_catalog.set_config('search_path', migration_tracking.application_search_path(), true);
    EXECUTE v_sql INTO v_done USING p_keys, p_old;
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    IF cardinality(v_done) IS DISTINCT FROM cardinality(p_keys) THEN
        DELETE FROM migration_tracking.migration_log l
        WHERE l.batch_id = p_batch_id AND l.status = 'migrated'
          AND l.user_key = ANY (p_keys) AND NOT l.user_key = ANY (coalesce(v_done, '{}'));
        RETURN coalesce(cardinality(v_done), 0);
    END IF;
    RETURN p_migrated;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.batch_context(p_batch_size integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg   migration_control.target_config;
    v_rel   oid;
    v_kind  "char";
    v_tpp   double precision;
    v_share double precision;
    v_key   text;
    v_role  text;
    v_log_first boolean;
BEGIN
    -- What every migrate_batch call of a walk needs and nothing in the walk changes, read once
    -- per walk (execute_role_migration, the online procedure) instead of once per batch: the
    -- statement (batch_statement_sql), whether it logs first (a unique index spans the role
    -- column: merged duplicates, see merge_batch_duplicates), the application's search_path
    -- (pg_settings took 1 ms a read), and for a walk in physical order how to size a window of
    -- row positions: the table's rows per block (its statistics, or a count of its first
    -- blocks) and the share of its rows that are pending, from the role column's statistics
    -- (most common values; 1 without them), never below 1/4, so a window sized from it holds
    -- at most four times the users a batch asks for even where the statistics are stale.
    v_cfg := migration_validation.target();
    v_rel := pg_catalog.to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table));
    SELECT c.relkind, CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages END
      INTO v_kind, v_tpp
      FROM pg_catalog.pg_class c WHERE c.oid = v_rel;
    IF v_kind = 'r' AND v_tpp IS NULL THEN
        -- never analysed: count the rows of the first 16 blocks instead
        EXECUTE format('SELECT pg_catalog.count(*)::double precision / greatest(1, least(16, pg_catalog.pg_relation_size(%1$L::regclass)
                                  / pg_catalog.current_setting(''block_size'')::bigint))
                          FROM %1$s t WHERE t.ctid < ''(16,0)''::pg_catalog.tid', v_rel::regclass)
        INTO v_tpp;
    END IF;
    v_tpp := greatest(coalesce(v_tpp, 1), 1);
    SELECT pg_catalog.sum(f.freq) INTO v_share
      FROM pg_catalog.pg_stats s,
           unnest(s.most_common_vals::text::text[], s.most_common_freqs) AS f(role, freq)
     WHERE s.schemaname = v_cfg.profiles_schema AND s.tablename = v_cfg.profiles_table
       AND s.attname = v_cfg.role_column AND NOT s.inherited
       AND f.role IN (SELECT m.legacy_role FROM migration_control.role_mapping m WHERE m.new_role <> m.legacy_role);
    v_share := least(greatest(coalesce(v_share, 1), 0.25), 1);
    SELECT max(pg_catalog.format_type(a.atttypid, a.atttypmod)) FILTER (WHERE a.attname = v_cfg.key_column),
           max(pg_catalog.format_type(a.atttypid, a.atttypmod)) FILTER (WHERE a.attname = v_cfg.role_column)
      INTO v_key, v_role
      FROM pg_catalog.pg_attribute a WHERE a.attrelid = v_rel AND a.attnum > 0 AND NOT a.attisdropped;
    v_log_first := EXISTS (SELECT 1 FROM migration_control.role_unique_indexes(v_rel, v_cfg.role_column));
    RETURN jsonb_build_object(
        'rel', v_rel::bigint, 'key_type', v_key, 'role_type', v_role, 'log_first', v_log_first,
        'by_position', v_kind = 'r', 'rows_per_block', v_tpp, 'pending_share', v_share,
        'app_path', migration_tracking.application_search_path(),
        'sql', migration_control.batch_statement_sql(v_cfg, v_key, v_role, v_log_first, v_kind = 'r'));
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.batch_statement_name(p_context jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The name of the prepared statement for the batch statement of p_context: its text's md5,
    -- so a walk with another statement (another target, another mapping shape) gets its own.
    SELECT 'rolemig_batch_' || pg_catalog.md5(p_context ->> 'sql')
$$;

CREATE OR REPLACE FUNCTION migration_control.forget_batch_statement(p_context jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_name text := migration_control.batch_statement_name(p_context);
BEGIN
    -- Drops the prepared batch statement of p_context (prepare_batch_statement), if any: a
    -- walk leaves nothing in the session.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements s WHERE s.name = v_name) THEN
        EXECUTE format('DEALLOCATE %I', v_name);
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.prepare_batch_statement(p_context jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_name text := migration_control.batch_statement_name(p_context);
    v_text text;
BEGIN
    -- The batch statement of p_context (batch_context) as a prepared statement of this
    -- session, and its name: migrate_batch runs it with a generic plan, once planned, instead
    -- of planning it again for every batch (0.7 ms of a 10 ms batch). Prepared statements
    -- outlive transactions, so the walks of one session share it; forget_batch_statement
    -- drops it at the end of a walk. A statement of that name with another text (code that ran
    -- in this session, such as a trigger of a SECURITY DEFINER function, could have made one
    -- to run as the migrating user) is dropped and prepared again. Call it under the search
    -- path the statement runs with (the application's): a cached plan is parsed again when the
    -- path differs.
    v_text := format('PREPARE %I(text, timestamptz, text, bigint, text, text) AS %s', v_name, p_context ->> 'sql');
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_statements s WHERE s.name = v_name AND s.statement = v_text) THEN
        PERFORM migration_control.forget_batch_statement(p_context);
        EXECUTE v_text;
    END IF;
    RETURN v_name;
END;
$$;

DROP FUNCTION IF EXISTS migration_control.migrate_batch(text, timestamptz, text, integer, text);
DROP FUNCTION IF EXISTS migration_control.migrate_batch(text, timestamptz, text, integer, text, jsonb);
CREATE OR REPLACE FUNCTION migration_control.migrate_batch(
    p_migration_name text, p_cutoff timestamptz, p_after text, p_batch_size integer, p_batch_id text,
    p_context jsonb DEFAULT NULL)
RETURNS TABLE(migrated bigint, merged bigint, first_key text, last_key text, after_position text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET enable_seqscan = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_ctx    jsonb := coalesce(p_context, migration_control.batch_context(p_batch_size));
    v_cfg    migration_control.target_config;
    v_by_pos boolean := (v_ctx ->> 'by_position')::boolean;
    v_tpp    double precision := (v_ctx ->> 'rows_per_block')::double precision;
    v_share  double precision := (v_ctx ->> 'pending_share')::double precision;
    v_from   text := p_after;
    v_to     text;
    v_at     double precision;
    v_rows   double precision;
    v_last   text;
    v_taken  bigint;
    v_total  bigint;
    v_room   bigint;
    v_m      bigint;
    v_first  text;
    v_lastk  text;
    v_keys   text[];
    v_old    text[];
    v_merged integer;
    v_sql    text := v_ctx ->> 'sql';
    v_app    text := v_ctx ->> 'app_path';
    v_stmt   text;
    v_mode   text := pg_catalog.current_setting('plan_cache_mode');
BEGIN
    -- Moves one batch in the caller's transaction and logs it into the running batch
    -- p_batch_id, starting at walk position p_after (NULL: from the start; see
    -- batch_statement_sql: physical order for a plain table, key order otherwise; never
    -- OFFSET). first_key is NULL when nobody is pending from p_after on; after_position is
    -- where the next batch starts. Used by execute_role_migration and the online procedure
    -- alike, each passing batch_context once per walk. Its cost follows the batch size, not the
    -- table or the log, and row locks are held for as short a time as possible, because the
    -- application waits for them: only users whose role changes are locked, from their UPDATE
    -- to the commit (an identity-mapped user never is), and only while they still hold the old
    -- role (compare-and-swap): a user whose role the application changed meanwhile keeps the
    -- application's value and stays pending for a later pass (the walk goes round once more,
    -- and the migration only finishes once nobody is pending).
    -- The batch is the next p_batch_size pending users in walk order. In physical order it is
    -- read from one or more windows of consecutive row positions, each one statement: a window
    -- starts where the last ended and covers a quarter more rows than the users the batch
    -- lacks need at the table's rows per block and pending share (batch_context), so most
    -- batches take one statement; it is measured in rows, not blocks, so a small batch reads
    -- less than a block. The batch goes on into the next window until it is full or the walk
    -- passed the end of the table, so first_key is NULL only at the end of the table. A window
    -- without a pending user doubles the next one, up to 32 times: the new row versions the
    -- batches appended to the table hold nobody pending, and a statement per small window over
    -- them cost a migration of 1,000,000 users 280 statements. With merged duplicates (a unique
    -- index spans the role column) the batch is logged first, then merged and moved
    -- (merge_batch_duplicates, move_logged_users). By key (a partitioned table) it is the
    -- next p_batch_size pending users after key p_after.
    -- jit is off, as in every function here, and it matters most here: the log's statistics,
    -- stale while it grows, priced a batch high enough for JIT compilation, which took longer
    -- than the batch while its row locks were held; enable_seqscan is off for the same reason
    -- (a scan of the whole table per batch). The helpers this calls run with these settings.
    IF v_by_pos AND (v_from IS NULL OR v_from !~ '^\(\d+,\d+\)$') THEN
        v_from := '(0,0)';  -- the start, or a key left by a batch from before positions existed
    END IF;
    migrated := 0;
    merged := 0;
    v_total := 0;
    v_rows := 1.25 * p_batch_size / v_share;
    LOOP
        v_room := p_batch_size - v_total;
        IF v_by_pos THEN
            -- the window [v_from, v_to): v_rows row positions on from v_from, v_tpp to a block
            v_at := (v_from::point)[1] + v_rows;
            v_to := format('(%s,%s)', (v_from::point)[0]::bigint + floor(v_at / v_tpp)::bigint,
                           floor(v_at - floor(v_at / v_tpp) * v_tpp)::bigint);
        END IF;
        IF NOT (v_ctx ->> 'log_first')::boolean THEN
            -- nothing in between may depend on the path: v_sql and v_app were read before it
            PERFORM pg_catalog.set_config('search_path', v_app, true);
            v_stmt := coalesce(v_stmt, migration_control.prepare_batch_statement(v_ctx));
            PERFORM pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true);
            EXECUTE format('EXECUTE %I(%L, %L, %L, %s, %L, %L)', v_stmt, p_migration_name, p_cutoff, v_from,
                           v_room, p_batch_id, v_to)
                INTO v_m, v_first, v_lastk, v_last, v_taken;
            PERFORM pg_catalog.set_config('plan_cache_mode', v_mode, true);
            PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        ELSE
            EXECUTE v_sql INTO v_m, v_first, v_lastk, v_last, v_taken, v_keys, v_old
                USING p_migration_name, p_cutoff, v_from, v_room, p_batch_id, v_to;
            IF v_keys IS NOT NULL THEN
                v_cfg := migration_validation.target();
                SELECT d.moving_keys, d.moving_old, d.merged INTO v_keys, v_old, v_merged
                FROM migration_control.merge_batch_duplicates(v_cfg, (v_ctx ->> 'rel')::oid, v_ctx ->> 'key_type',
                                                              p_migration_name, p_cutoff, p_batch_id, v_keys, v_old) d;
                v_m := v_m - v_merged;
                merged := merged + v_merged;
                IF v_keys IS NOT NULL THEN
                    v_m := migration_control.move_logged_users(v_cfg, v_ctx ->> 'key_type', v_ctx ->> 'role_type',
                                                               p_batch_id, v_keys, v_old, v_m);
                END IF;
            END IF;
        END IF;
        IF v_taken > 0 THEN
            first_key := coalesce(first_key, v_first);
            last_key := v_lastk;
            migrated := migrated + v_m;
            v_total := v_total + v_taken;
        END IF;
        IF NOT v_by_pos THEN
            after_position := v_last;  -- a keyset walk's last key
            EXIT;
        END IF;
        IF v_taken >= v_room THEN
            -- the batch is full: the next one starts right after its last user
            after_position := format('(%s,%s)', (v_last::point)[0]::bigint, (v_last::point)[1]::bigint + 1);
            EXIT;
        END IF;
        after_position := v_to;
        -- short of the batch: on into the next window, unless that is past the end
        EXIT WHEN (v_to::point)[0] >= pg_catalog.pg_relation_size((v_ctx ->> 'rel')::oid)
                                      / pg_catalog.current_setting('block_size')::bigint;
        IF v_taken = 0 THEN
            v_rows := least(v_rows * 2, 40 * p_batch_size / v_share);
        ELSE
            v_rows := 1.25 * (p_batch_size - v_total) / v_share;
        END IF;
        v_from := v_to;
    END LOOP;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.rank_kept(p_literal text, p_op text, p_type text)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Whether "x <op> 'literal'::<enum type>" gives every mapped legacy role r the same outcome
    -- as its new role m(r), by the enum's order: then the comparison keeps access whichever
    -- name a user holds, and needs no expansion between batches. False when p_type is not an
    -- enum holding the literal and every mapped role (nothing is guessed).
    WITH e AS (SELECT x.enumlabel::text AS label, x.enumsortorder AS pos FROM pg_catalog.pg_enum x
                WHERE x.enumtypid = pg_catalog.to_regtype(p_type)),
         lit AS (SELECT e.pos FROM e WHERE e.label = p_literal),
         pairs AS (SELECT a.pos AS was, b.pos AS now FROM migration_control.role_mapping m
                     LEFT JOIN e a ON a.label = m.legacy_role LEFT JOIN e b ON b.label = m.new_role)
    SELECT EXISTS (SELECT 1 FROM lit) AND NOT EXISTS (
               SELECT 1 FROM pairs, lit
                WHERE pairs.was IS NULL OR pairs.now IS NULL
                   OR CASE p_op WHEN '>=' THEN (pairs.was >= lit.pos) <> (pairs.now >= lit.pos)
                                WHEN '>'  THEN (pairs.was > lit.pos) <> (pairs.now > lit.pos)
                                WHEN '<=' THEN (pairs.was <= lit.pos) <> (pairs.now <= lit.pos)
                                WHEN '<'  THEN (pairs.was < lit.pos) <> (pairs.now < lit.pos)
                                ELSE true END)
$$;

CREATE OR REPLACE FUNCTION migration_control.expand_role_literals(p_expr text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_tok      text[];
    v_n        integer;
    v_lit      text;
    v_new      text;
    v_next     text;
    v_cast     text;
    v_in_array boolean := false;
    v_cast_re  constant text := '^::(?:character varying|(?:[A-Za-z_][A-Za-z_0-9]*\.)?[A-Za-z_][A-Za-z_0-9]*)(?:\([0-9]+\))?';
BEGIN
    -- Expand form of one deparsed expression: each quoted legacy role whose new role differs
    -- is made to accept the new role too. Inside ARRAY[...] the new role is added after it
    -- (unless it already follows, so expanding twice changes nothing); after "= " / "<> " the
    -- comparison becomes = ANY / <> ALL of both. After "<", "<=", ">", ">=" with an enum cast
    -- (a rank threshold) it stays as it is when every legacy role and its new role fall on the
    -- same side of it (rank_kept). Any other place is refused: guessing there could change access. Tokenised like rewrite_role_literals (literals, quoted identifiers,
    -- the rest), so claim names and identifiers are never touched.
    IF p_expr IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(x.t[1] ORDER BY x.n) INTO v_tok
    FROM pg_catalog.regexp_matches(p_expr, '"(?:[^"]|"")*"|''(?:[^'']|'''')*''|[^''"]+', 'g') WITH ORDINALITY AS x(t, n);
    IF array_to_string(v_tok, '') IS DISTINCT FROM p_expr THEN
        RAISE EXCEPTION 'cannot tokenize expression for role expansion: %', p_expr
            USING DETAIL = 'An unbalanced quote left part of the expression unmatched.',
                  HINT = 'rewrite this policy by hand; nothing was changed';
    END IF;
    v_n := cardinality(v_tok);
    FOR i IN 1 .. v_n LOOP
        IF left(v_tok[i], 1) <> '''' THEN
            v_in_array := right(v_tok[i], 6) = 'ARRAY['
                          OR (v_in_array AND v_tok[i] ~ (v_cast_re || ', $') OR (v_in_array AND v_tok[i] = ', '));
            CONTINUE;
        END IF;
        v_lit := replace(substr(v_tok[i], 2, length(v_tok[i]) - 2), '''''', '''');
        SELECT m.new_role INTO v_new FROM migration_control.role_mapping m
        WHERE m.legacy_role = v_lit AND m.new_role <> m.legacy_role;
        CONTINUE WHEN v_new IS NULL;
        v_next := coalesce(v_tok[i + 1], '');
        v_cast := coalesce(substring(v_next FROM v_cast_re), '');
        IF v_in_array THEN
            CONTINUE WHEN i + 2 <= v_n AND v_tok[i + 2] = quote_literal(v_new)
                          AND v_next ~ ('^(' || substr(v_cast_re, 2) || ')?, $');
            v_tok[i] := v_tok[i] || v_cast || ', ' || quote_literal(v_new);
        ELSIF i > 1 AND v_tok[i - 1] ~ '(^|[^<>=!])(=|<>) $' THEN
            v_tok[i - 1] := regexp_replace(v_tok[i - 1], '(=|<>) $',
                                CASE WHEN v_tok[i - 1] ~ '<> $' THEN '<> ALL (ARRAY[' ELSE '= ANY (ARRAY[' END);
            v_tok[i] := v_tok[i] || v_cast || ', ' || quote_literal(v_new);
            IF i + 1 <= v_n THEN
                v_tok[i + 1] := v_cast || '])' || substr(v_next, length(v_cast) + 1);
            ELSE
                v_tok := v_tok || '])'::text;
            END IF;
        ELSIF i > 1 AND v_cast <> '' AND v_tok[i - 1] ~ '(^|[^<>=!])(<=|>=|<|>) $'
              AND migration_control.rank_kept(v_lit, substring(v_tok[i - 1] FROM '(<=|>=|<|>) $'),
                                              substr(v_cast, 3)) THEN
            CONTINUE;  -- a rank threshold the mapping keeps: either name gives the same outcome
        ELSE
            RAISE EXCEPTION 'cannot expand role literal % in: %', v_tok[i], p_expr
                USING DETAIL = 'Only literals inside ARRAY[...] or right of = / <> can be widened to accept the new role too.',
                      HINT = 'rewrite the policy as role = ANY (ARRAY[...]), or migrate in one transaction (execute_role_migration without p_max_batches)';
        END IF;
    END LOOP;
    RETURN array_to_string(v_tok, '');
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.alter_role_policy(
    p_schema text, p_table text, p_policy text, p_phase text, p_run_id text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_oid       oid;
    v_using     text;
    v_check     text;
    v_base_u    text;
    v_base_c    text;
    v_last      migration_tracking.rls_policy_changes;
    v_new_using text;
    v_new_check text;
    v_sql       text;
BEGIN
    -- Brings one policy to its expand form (legacy OR new role: expand_role_literals) or its
    -- contract form (new roles only: rewrite_role_literals). Contract starts from the text the
    -- policy had before its expand when the policy still reads as the expand left it, so the
    -- end state is the same whether or not the policy was expanded first. Expressions are
    -- deparsed and re-parsed under this function's search_path, so the names in them stay
    -- schema-qualified and resolve to the same objects. Logs the change in rls_policy_changes
    -- under run id '<phase>:<p_run_id>'; returns whether the policy changed.
    IF p_phase IS NULL OR p_phase NOT IN ('expand', 'contract') THEN
        RAISE EXCEPTION 'unknown policy phase %', coalesce(quote_literal(p_phase), 'NULL')
            USING DETAIL = 'Phases: expand, contract.', HINT = 'use alter_role_policy(..., ''expand'', ...)';
    END IF;
    SELECT p.oid, pg_catalog.pg_get_expr(p.polqual, p.polrelid), pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
    INTO v_oid, v_using, v_check
    FROM pg_catalog.pg_policy p
    WHERE p.polrelid = to_regclass(format('%I.%I', p_schema, p_table)) AND p.polname = p_policy;
    IF v_oid IS NULL THEN
        RETURN false;  -- dropped meanwhile: nothing to do
    END IF;
    IF p_phase = 'expand' THEN
        v_new_using := migration_control.expand_role_literals(v_using);
        v_new_check := migration_control.expand_role_literals(v_check);
    ELSE
        SELECT * INTO v_last FROM migration_tracking.rls_policy_changes c
        WHERE c.schema_name = p_schema AND c.table_name = p_table AND c.policy_name = p_policy
        ORDER BY c.change_id DESC LIMIT 1;
        IF v_last.run_id LIKE 'expand:%' AND v_last.new_using IS NOT DISTINCT FROM v_using
           AND v_last.new_check IS NOT DISTINCT FROM v_check THEN
            v_base_u := v_last.old_using;
            v_base_c := v_last.old_check;
        ELSE
            v_base_u := v_using;
            v_base_c := v_check;
        END IF;
        v_new_using := migration_control.rewrite_role_literals(v_base_u, 'migrate');
        v_new_check := migration_control.rewrite_role_literals(v_base_c, 'migrate');
    END IF;
    IF v_new_using IS NOT DISTINCT FROM v_using AND v_new_check IS NOT DISTINCT FROM v_check THEN
        RETURN false;
    END IF;
    v_sql := format('ALTER POLICY %I ON %I.%I', p_policy, p_schema, p_table);
    IF v_new_using IS DISTINCT FROM v_using THEN
        v_sql := v_sql || format(' USING (%s)', v_new_using);
    END IF;
    IF v_new_check IS DISTINCT FROM v_check THEN
        v_sql := v_sql || format(' WITH CHECK (%s)', v_new_check);
    END IF;
    EXECUTE v_sql;
    INSERT INTO migration_tracking.rls_policy_changes
        (run_id, schema_name, table_name, policy_name, change_type, old_using, new_using, old_check, new_check)
    SELECT p_phase || ':' || p_run_id, p_schema, p_table, p_policy, 'rewrite',
           v_using, pg_catalog.pg_get_expr(p.polqual, p.polrelid),
           v_check, pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)
    FROM pg_catalog.pg_policy p WHERE p.oid = v_oid;
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.role_policies()
RETURNS TABLE(schema_name text, table_name text, policy_name text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- The policies of the migrated tables, in the order both paths alter them one by one
    -- (rewrite_role_policies, and run_online_migration with a transaction each).
    SELECT t.schema_name, t.table_name, p.polname::text
    FROM migration_validation.migrated_tables() t
    JOIN pg_catalog.pg_policy p ON p.polrelid = t.table_oid
    ORDER BY 1, 2, 3
$$;

DROP FUNCTION IF EXISTS migration_control.rewrite_role_policies(text);

CREATE OR REPLACE FUNCTION migration_control.rewrite_role_policies(p_run_id text, p_phase text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_pol   record;
    v_count integer := 0;
BEGIN
    -- alter_role_policy for every policy of the migrated tables, in one transaction: 'expand'
    -- before users move (a policy then accepts the legacy role and its new role), 'contract'
    -- once nobody is left on a legacy role. An expression that cannot be expanded raises, and
    -- the caller's subtransaction undoes the policies already altered. Returns how many changed.
    FOR v_pol IN SELECT * FROM migration_control.role_policies() LOOP
        BEGIN
            IF migration_control.alter_role_policy(v_pol.schema_name, v_pol.table_name, v_pol.policy_name,
                                                   p_phase, p_run_id) THEN
                v_count := v_count + 1;
            END IF;
        EXCEPTION WHEN OTHERS THEN  -- name the policy: the expression alone does not say where it is
            RAISE EXCEPTION 'policy % on %.%: %', quote_ident(v_pol.policy_name), quote_ident(v_pol.schema_name),
                            quote_ident(v_pol.table_name), SQLERRM
                USING ERRCODE = SQLSTATE;
        END;
    END LOOP;
    RETURN v_count;
END;
$$;

DROP FUNCTION IF EXISTS migration_control.execute_role_migration(text, integer, text, integer, boolean);

CREATE OR REPLACE FUNCTION migration_control.refuse_bad_run(p_migration_name text, p_batch_size integer)
RETURNS migration_control.target_config
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg migration_control.target_config;
BEGIN
    -- The refusals every migration path raises about its arguments and its target before it
    -- changes anything: an empty name, a batch size below 1, a target whose tables or columns
    -- are gone. Returns the target.
    IF p_migration_name IS NULL OR btrim(p_migration_name) = '' THEN
        RAISE EXCEPTION 'migration name must not be empty, got %', coalesce(quote_literal(p_migration_name), 'NULL')
            USING DETAIL = 'The name groups the batches so that a later call can resume.',
                  HINT = 'use e.g. ''role_system_migration''';
    END IF;
    IF p_batch_size IS NOT NULL AND p_batch_size < 1 THEN
        RAISE EXCEPTION 'batch size must be a positive integer, got %', p_batch_size
            USING DETAIL = 'p_batch_size is the number of users per batch; NULL takes target_config.batch_size.',
                  HINT = 'use e.g. 1000';
    END IF;
    v_cfg := migration_validation.target();
    PERFORM migration_control.verify_target(v_cfg.profiles_schema, v_cfg.profiles_table, v_cfg.key_column,
                v_cfg.role_column, v_cfg.sessions_schema, v_cfg.sessions_table,
                v_cfg.sessions_user_column, v_cfg.policy_schemas);
    RETURN v_cfg;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.refuse_unready_mapping()
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- every user's role counts, whatever the policies show the caller
AS $$
DECLARE
    v_cfg      migration_control.target_config;
    v_role_typ oid;
    v_bad      text;
BEGIN
    -- The refusals every migration path raises before it changes anything (execute_role_migration
    -- and the online procedure alike), about the mapping: none loaded, a role enum without the
    -- new roles, users on roles the mapping does not know, legacy roles it does not map.
    IF NOT EXISTS (SELECT 1 FROM migration_control.role_mapping) THEN
        RAISE EXCEPTION 'no role mapping loaded'
            USING DETAIL = 'migration_control.role_mapping is empty.',
                  HINT = 'call migration_control.load_role_mapping(mapping, new_roles)';
    END IF;
    v_cfg := migration_validation.target();
    SELECT a.atttypid INTO v_role_typ
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = pg_catalog.to_regclass(format('%I.%I', v_cfg.profiles_schema, v_cfg.profiles_table))
       AND a.attname = v_cfg.role_column;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_type AS t WHERE t.oid = v_role_typ AND t.typtype = 'e') THEN
        SELECT string_agg(r.role_name, ', ' ORDER BY r.position) INTO v_bad
          FROM migration_control.new_roles AS r
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_enum AS e
                            WHERE e.enumtypid = v_role_typ AND e.enumlabel = r.role_name);
        IF v_bad IS NOT NULL THEN
            RAISE EXCEPTION 'enum % lacks new role(s) %', pg_catalog.format_type(v_role_typ, NULL), v_bad
                USING DETAIL = format('The role column %I is an enum; users can only move to labels it has.',
                                      v_cfg.role_column),
                      HINT = format('ALTER TYPE %s ADD VALUE ... for each, and commit, before migrating',
                                    pg_catalog.format_type(v_role_typ, NULL));
        END IF;
    END IF;
    v_bad := migration_control.unknown_roles();
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'users have unknown roles: %', v_bad
            USING DETAIL = 'These roles are neither legacy roles of the mapping nor new roles; nothing was changed.',
                  HINT = 'add them to the role mapping (migration_control.load_role_mapping) or fix those users';
    END IF;
    SELECT string_agg(format('%s (found in %s)', d.role_name, array_to_string(d.sources, ', ')), '; ' ORDER BY d.role_name)
      INTO v_bad FROM migration_control.discover_legacy_roles() AS d WHERE d.mapped_to IS NULL;
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'unmapped legacy roles: %', v_bad
            USING DETAIL = 'Every role the schema allows or the data holds must map onto a new role; nothing was changed.',
                  HINT = 'add them to the role mapping (migration_control.load_role_mapping)';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.refuse_offline_run(
    p_migration_name text, p_batch_size integer, p_max_batches integer)
RETURNS migration_control.target_config
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- The refusals of execute_role_migration, raised before it changes anything: another
    -- migration holds the lock (taken here for the caller's transaction), a bad p_max_batches,
    -- then those every path shares (refuse_bad_run, refuse_unready_mapping). Returns the target.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('pytest_rolemig.migration')) THEN
        RAISE EXCEPTION 'another role migration is running'
            USING DETAIL = format('Migration %L could not take the migration advisory lock.', p_migration_name),
                  HINT = 'wait for the other execute_role_migration call to finish (see migration_tracking.get_migration_status())';
    END IF;
    IF p_max_batches IS NOT NULL AND p_max_batches < 1 THEN
        RAISE EXCEPTION 'max batches must be a positive integer or NULL, got %', p_max_batches
            USING DETAIL = 'p_max_batches stops the run early (a partial migration); NULL runs to the end.',
                  HINT = 'pass NULL to migrate everybody';
    END IF;
    RETURN migration_control.refuse_bad_run(p_migration_name, p_batch_size);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.choose_backup(p_backup_id text, p_verified text[])
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cand record;
    v_bad  text;
BEGIN
    -- The backup execute_role_migration runs with: p_backup_id, or the newest valid one when
    -- NULL; refuses when there is none. A backup is verified in full (counts, checksums: a
    -- pass over all of it) when the migration starts with it; calls that resume the migration
    -- with the same backup (p_verified, from resume_point) trust that, and every rollback
    -- verifies it again before restoring anything. Only failing checks matter here
    -- (backup_failing_checks: the coverage of live users can only warn, and is not computed).
    IF p_backup_id IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM migration_backup.backup_log b
                       WHERE b.backup_id = p_backup_id AND b.status = 'completed') THEN
            RAISE EXCEPTION 'backup % does not exist or is not completed', p_backup_id
                USING DETAIL = 'The migration only runs with a completed, valid backup to roll back to.',
                      HINT = 'see migration_backup.list_available_backups(), or pass NULL for the newest valid backup';
        END IF;
        IF NOT p_backup_id = ANY (p_verified) THEN
            SELECT string_agg(e ->> 'check_name', ', ') INTO v_bad
            FROM jsonb_array_elements(migration_validation.backup_failing_checks(p_backup_id,
                                                                                 migration_validation.target())) e;
            IF v_bad IS NOT NULL THEN
                RAISE EXCEPTION 'backup % does not validate: %', p_backup_id, v_bad
                    USING DETAIL = 'migration_backup.validate_backup_completeness reports these checks as failing.',
                          HINT = 'take a new backup: SELECT * FROM migration_control.prepare_for_migration()';
            END IF;
        END IF;
        RETURN p_backup_id;
    END IF;
    FOR v_cand IN SELECT b.backup_id FROM migration_backup.backup_log b WHERE b.status = 'completed'
                  ORDER BY b.created_at DESC, b.backup_id DESC
    LOOP
        IF v_cand.backup_id = ANY (p_verified)
           OR migration_validation.backup_failing_checks(v_cand.backup_id, migration_validation.target()) = '[]' THEN
            RETURN v_cand.backup_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'no valid backup: refusing to migrate without one'
        USING DETAIL = 'No completed backup in migration_backup.backup_log validates without a failing check.',
              HINT = 'take one first: SELECT * FROM migration_control.prepare_for_migration()';
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.record_batch(
    p_batch_id text, p_batch jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- Completes running batch p_batch_id with what its migrate_batch call returned (p_batch:
    -- migrated, merged, first_key, last_key, after_position), in one UPDATE: the
    -- statement that wrote the batch's log rows counted them, so nothing is recounted from the
    -- log (complete_migration_batch does, for batches logged row by row).
    UPDATE migration_tracking.migration_batch b
       SET status = 'completed', completed_at = clock_timestamp(),
           first_key = p_batch ->> 'first_key', last_key = p_batch ->> 'last_key',
           processed_users = (p_batch ->> 'migrated')::integer + (p_batch ->> 'merged')::integer,
           details = b.details || jsonb_build_object('migrated', (p_batch ->> 'migrated')::bigint,
                                                     'after', p_batch ->> 'after_position')
     WHERE b.batch_id = p_batch_id AND b.status = 'running';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'migration batch % is not running', p_batch_id
            USING DETAIL = 'Only a batch opened by start_migration_batch and not yet completed can be recorded.';
    END IF;
END;
$$;

DROP FUNCTION IF EXISTS migration_control.walk_batches(text, text, text, timestamptz, text, integer, integer, jsonb, integer);
CREATE OR REPLACE FUNCTION migration_control.walk_batches(
    p_migration_name text, p_run_id text, p_backup_id text, p_cutoff timestamptz, p_after text,
    p_batch_size integer, p_max_batches integer, p_widened jsonb, p_expanded integer,
    p_context jsonb DEFAULT NULL,
    OUT batches integer, OUT migrated bigint, OUT failed boolean, OUT failure text, OUT after_position text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_ctx            text;
    v_err_schema     text;
    v_err_table      text;
    v_err_constraint text;
    v_context  jsonb := coalesce(p_context, migration_control.batch_context(p_batch_size));
    v_batch_id text;
    v_after    text := p_after;
    v_wrapped  boolean;
    v_batch    jsonb;
BEGIN
    -- The batches of execute_role_migration (step 3), in its transaction: migrate_batch from the
    -- resume position p_after to the end of the table, then once more from the start (users
    -- behind the resume point: a failed batch, an application write), at most p_max_batches.
    -- Each batch runs in its own subtransaction: an error undoes that batch only, is kept in its
    -- failed batch row (with where it was raised, error_origin) and ends the walk (failed,
    -- failure). The first batch row also records what widen and expand changed (p_widened,
    -- p_expanded). after_position is where the walk stopped (run_role_migration passes it to
    -- its next batch, and its batch context, read once per run, as p_context).
    batches := 0;
    migrated := 0;
    failed := false;
    v_wrapped := v_after IS NULL;
    LOOP
        EXIT WHEN p_max_batches IS NOT NULL AND batches >= p_max_batches;
        v_batch := NULL;
        BEGIN  -- the batch row, undone with this block when the batch finds nobody (a probe)
            v_batch_id := migration_tracking.start_migration_batch(p_migration_name, p_batch_size, p_run_id,
                              jsonb_build_object('phase', 'migrate', 'backup_id', p_backup_id)
                              || CASE WHEN batches = 0 AND p_widened <> '[]'
                                      THEN jsonb_build_object('constraints_widened', p_widened) ELSE '{}' END
                              || CASE WHEN batches = 0 AND p_expanded > 0
                                      THEN jsonb_build_object('policies_expanded', p_expanded) ELSE '{}' END);
            BEGIN
                SELECT to_jsonb(b) INTO v_batch
                FROM migration_control.migrate_batch(p_migration_name, p_cutoff, v_after, p_batch_size, v_batch_id,
                                                     v_context) b;
                IF v_batch ->> 'first_key' IS NOT NULL THEN
                    PERFORM migration_control.record_batch(v_batch_id, v_batch);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_ctx = PG_EXCEPTION_CONTEXT, v_err_schema = SCHEMA_NAME,
                                        v_err_table = TABLE_NAME, v_err_constraint = CONSTRAINT_NAME;
                failure := SQLERRM || migration_tracking.error_origin(v_ctx, v_err_schema, v_err_table,
                                                                      v_err_constraint);
                PERFORM migration_tracking.complete_migration_batch(v_batch_id, 'failed', failure);
                failed := true;
            END;
            IF NOT failed AND v_batch ->> 'first_key' IS NULL THEN
                -- nobody left after v_after: undo the probe's batch row (a DELETE would have its
                -- statement trigger look for log rows of it: a pass over the log)
                RAISE EXCEPTION USING ERRCODE = 'RMPRB';
            END IF;
        EXCEPTION WHEN SQLSTATE 'RMPRB' THEN
            EXIT WHEN v_wrapped;
            v_wrapped := true;
            v_after := NULL;
            CONTINUE;
        END;
        IF failed THEN
            batches := batches + 1;
            EXIT;
        END IF;
        batches := batches + 1;
        migrated := migrated + (v_batch ->> 'migrated')::bigint;
        v_after := v_batch ->> 'after_position';
    END LOOP;
    after_position := v_after;
    IF p_context IS NULL THEN
        PERFORM migration_control.forget_batch_statement(v_context);  -- a caller's context is the caller's
    END IF;
END;
$$;

DROP FUNCTION IF EXISTS migration_control.any_pending(migration_control.target_config, text, timestamptz, boolean);
CREATE OR REPLACE FUNCTION migration_control.any_pending(
    p_cfg migration_control.target_config, p_migration_name text, p_cutoff timestamptz)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_any boolean;
BEGIN
    -- Is anybody left, once execute_role_migration's batches stopped? EXISTS with the pending
    -- predicate stops at the first one; when nobody is left it is one pass over the table (or
    -- an index scan on the role column), since the predicate reads the log for chain roles only.
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I t WHERE %s)', p_cfg.profiles_schema,
                   p_cfg.profiles_table, migration_control.pending_users_sql())
    INTO v_any USING p_migration_name, p_cutoff;
    RETURN v_any;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.finish_migration(
    p_migration_name text, p_batch_size integer, p_run_id text, p_backup_id text,
    p_rewrite_policies boolean, p_batches integer, p_widened jsonb)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_policies integer := 0;
    v_narrowed jsonb;
    v_batch_id text;
BEGIN
    -- The finish of execute_role_migration (step 4), once nobody is left on a legacy role:
    -- policies to the new names (when the call rewrites them), then the CHECK constraints
    -- narrowed, recorded in a 'finalize' batch row when anything changed (or when this call
    -- widened the constraints but ran no batch). An error raises: the caller's subtransaction
    -- undoes the whole step. Returns how many policies changed.
    IF p_rewrite_policies THEN
        v_policies := migration_control.rewrite_role_policies(p_run_id, 'contract');
    END IF;
    v_narrowed := migration_control.adjust_role_constraints('narrow');
    IF v_policies > 0 OR v_narrowed <> '[]' OR (p_batches = 0 AND p_widened <> '[]') THEN
        v_batch_id := migration_tracking.start_migration_batch(p_migration_name, p_batch_size, p_run_id,
                          jsonb_build_object('phase', 'finalize', 'backup_id', p_backup_id,
                                             'policies_rewritten', v_policies,
                                             'constraints_narrowed', v_narrowed)
                          || CASE WHEN p_batches = 0 AND p_widened <> '[]'
                                  THEN jsonb_build_object('constraints_widened', p_widened) ELSE '{}' END);
        PERFORM migration_tracking.complete_migration_batch(v_batch_id);
    END IF;
    RETURN v_policies;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.execute_role_migration(
    p_migration_name text DEFAULT 'role_system_migration',
    p_batch_size integer DEFAULT NULL,
    p_backup_id text DEFAULT NULL,
    p_max_batches integer DEFAULT NULL,
    p_rewrite_policies boolean DEFAULT true,
    p_run_id text DEFAULT NULL)
RETURNS TABLE(run_id text, batches integer, users_migrated bigint, users_unchanged bigint,
              policies_rewritten integer, status text, error text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_cfg         migration_control.target_config;
    v_batch_size  integer;
    v_backup      text;
    v_run         text;
    v_cutoff      timestamptz;
    v_batch_id    text;
    v_after       text;
    v_failed      boolean := false;
    v_verified    text[];
    v_batches     integer := 0;
    v_migrated    bigint := 0;
    v_unchanged   bigint := 0;
    v_policies    integer := 0;
    v_widened     jsonb := '[]';
    v_error       text;
    v_expanded    integer := 0;
    v_no_expand   text;
BEGIN
    -- Migrates every user from the legacy role to mapping(legacy role). Refuses to start
    -- (raise, nothing changed) while another migration holds the lock, when a user's role
    -- is unknown, a legacy role is unmapped, or no valid backup exists. Then: widen the role
    -- CHECK constraints; expand the policies (see the file header); walk the pending users
    -- in keyset batches (walk_batches, migrate_batch: one INSERT
    -- of the batch into migration_log, one UPDATE of the users whose role changes); stop
    -- after p_max_batches if asked (a later call resumes with the users still pending); once
    -- nobody is left, rewrite the policies and narrow the constraints. Each step runs in its
    -- own subtransaction: an error undoes that step only, is kept in a failed batch row and
    -- returned with status 'failed'. The helpers run with this function's row_security = off.
    v_cfg := migration_control.refuse_offline_run(p_migration_name, p_batch_size, p_max_batches);
    v_batch_size := coalesce(p_batch_size, v_cfg.batch_size);
    PERFORM migration_control.refuse_unready_mapping();

    -- users logged as done before the newest completed rollback are pending again
    SELECT coalesce(max(r.started_at), '-infinity') INTO v_cutoff
    FROM migration_backup.rollback_log r WHERE r.status = 'completed';
    SELECT r.after_position, r.verified_backups INTO v_after, v_verified
    FROM migration_control.resume_point(p_migration_name, v_cutoff) r;
    v_backup := migration_control.choose_backup(p_backup_id, v_verified);

    -- a caller that resumes batch by batch (rolemig migrate) passes the run id of its first
    -- call, so that one invocation is one run in the batch log and in migration_runs()
    v_run := coalesce(nullif(btrim(p_run_id), ''),
                      'run_' || to_char(clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
                      || substr(replace(gen_random_uuid()::text, '-', ''), 1, 6));

    -- 1. widen
    BEGIN
        v_widened := migration_control.adjust_role_constraints('widen');
    EXCEPTION WHEN OTHERS THEN
        v_error := 'widening role constraints failed: ' || SQLERRM;
        v_batch_id := migration_tracking.start_migration_batch(p_migration_name, v_batch_size, v_run,
                          jsonb_build_object('phase', 'widen', 'backup_id', v_backup));
        PERFORM migration_tracking.complete_migration_batch(v_batch_id, 'failed', v_error);
        RETURN QUERY SELECT v_run, 0, 0::bigint, 0::bigint, 0, 'failed'::text, v_error;
        RETURN;
    END;

    -- 2. expand (not when the caller rewrites the policies itself) and 3. walk, in one block:
    -- a call whose first batch fails, or that could not expand, is undone as a whole (a failed
    -- call changes nothing but the widened constraints and its failed batch row)
    BEGIN
        IF p_rewrite_policies THEN
            BEGIN
                v_expanded := migration_control.rewrite_role_policies(v_run, 'expand');
            EXCEPTION WHEN OTHERS THEN
                v_no_expand := SQLERRM;
            END;
            IF v_no_expand IS NOT NULL AND p_max_batches IS NOT NULL THEN
                RAISE EXCEPTION 'refusing a batched migration: %', v_no_expand
                    USING DETAIL = 'Between two batches some users hold the new role and some the legacy one; '
                                   'a policy that cannot accept both would change their access. Nothing was changed.',
                          HINT = 'rewrite the policy as role = ANY (ARRAY[...]), or migrate in one transaction '
                                 '(execute_role_migration without p_max_batches)';
            END IF;
        END IF;

        SELECT w.batches, w.migrated, w.failed, w.failure
          INTO v_batches, v_migrated, v_failed, v_error
          FROM migration_control.walk_batches(p_migration_name, v_run, v_backup, v_cutoff, v_after,
                                              v_batch_size, p_max_batches, v_widened, v_expanded) w;
        IF v_failed AND (v_no_expand IS NOT NULL OR v_migrated = 0) THEN
            RAISE EXCEPTION USING ERRCODE = 'RMUND';  -- undo the whole call, caught just below
        END IF;
    EXCEPTION WHEN SQLSTATE 'RMUND' THEN
        IF v_no_expand IS NOT NULL THEN
            v_error := format('%s (the run was undone: no user moved, because %s)', v_error, v_no_expand);
        END IF;
        v_batch_id := migration_tracking.start_migration_batch(p_migration_name, v_batch_size, v_run,
                          jsonb_build_object('phase', 'migrate', 'backup_id', v_backup));
        PERFORM migration_tracking.complete_migration_batch(v_batch_id, 'failed', v_error);
        v_migrated := 0;
    END;

    IF v_failed THEN
        RETURN QUERY SELECT v_run, v_batches, v_migrated, v_unchanged, 0, 'failed'::text, v_error;
        RETURN;
    END IF;
    IF migration_control.any_pending(v_cfg, p_migration_name, v_cutoff) THEN
        RETURN QUERY SELECT v_run, v_batches, v_migrated, v_unchanged, 0, 'partial'::text, NULL::text;
        RETURN;
    END IF;

    -- 4. finish: policies, then constraints; one subtransaction
    BEGIN
        v_policies := migration_control.finish_migration(p_migration_name, v_batch_size, v_run, v_backup,
                                                         p_rewrite_policies, v_batches, v_widened);
    EXCEPTION WHEN OTHERS THEN
        v_error := 'finishing the migration failed: ' || SQLERRM;
        v_batch_id := migration_tracking.start_migration_batch(p_migration_name, v_batch_size, v_run,
                          jsonb_build_object('phase', 'finalize', 'backup_id', v_backup));
        PERFORM migration_tracking.complete_migration_batch(v_batch_id, 'failed', v_error);
        RETURN QUERY SELECT v_run, v_batches, v_migrated, v_unchanged, 0, 'failed'::text, v_error;
        RETURN;
    END;

    -- identity-mapped users were never batched: counted once, now that the migration is done
    v_unchanged := migration_control.unchanged_count(p_migration_name, v_cutoff);
    RETURN QUERY SELECT v_run, v_batches, v_migrated, v_unchanged, v_policies, 'completed'::text, NULL::text;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.run_fingerprint()
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- What execute_role_migration checks and expands before its batches and no batch changes:
    -- the role mapping and the policies (every policy of the database, as stored, not
    -- deparsed: a superset of those it expands, read in a fraction of the time the list of
    -- migrated tables takes). run_role_migration compares it between two committed batches;
    -- when a deploy changed a policy or the mapping was reloaded meanwhile, the next batch
    -- goes through execute_role_migration again (every refusal, the policies expanded).
    SELECT md5(coalesce((SELECT string_agg(m.legacy_role || '>' || m.new_role, ',' ORDER BY m.legacy_role)
                           FROM migration_control.role_mapping m), '')
               || '|' || coalesce((SELECT string_agg(format('%s.%s:%s:%s', p.polrelid, p.polname,
                                                            p.polqual::text, p.polwithcheck::text),
                                                     ',' ORDER BY p.polrelid, p.polname)
                                     FROM pg_catalog.pg_policy p),
                                  ''))
$$;

CREATE OR REPLACE FUNCTION migration_control.stop_key()
RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- With a backend's pid, the advisory lock that asks that backend's run_role_migration to
    -- stop after its current batch.
    SELECT pg_catalog.hashtext('pytest_rolemig.stop')
$$;

CREATE OR REPLACE FUNCTION migration_control.request_stop(p_pid integer)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Asks the run_role_migration running in backend p_pid to stop after its current batch:
    -- a session lock of the caller's, held until the caller disconnects or unlocks it.
    SELECT pg_catalog.pg_advisory_lock(migration_control.stop_key(), p_pid)
$$;

CREATE OR REPLACE FUNCTION migration_control.stop_requested()
RETURNS boolean
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Whether another session holds this backend's stop lock (request_stop). Tried and given
    -- back at once, so a request never waits for the batch in flight.
    SELECT NOT (pg_catalog.pg_try_advisory_lock_shared(migration_control.stop_key(), pg_catalog.pg_backend_pid())
                AND pg_catalog.pg_advisory_unlock_shared(migration_control.stop_key(), pg_catalog.pg_backend_pid()))
$$;

CREATE OR REPLACE FUNCTION migration_control.run_resume(p_migration_name text, p_run_id text, p_batch_size integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cutoff timestamptz;
    v_after  text;
BEGIN
    -- What run_role_migration's lean batches need of run p_run_id, read once after
    -- execute_role_migration started it (the same values execute_role_migration reads):
    -- the rollback cutoff, the walk position, the backup, the batch size and context, and
    -- the run fingerprint.
    SELECT coalesce(max(r.started_at), '-infinity') INTO v_cutoff
    FROM migration_backup.rollback_log r WHERE r.status = 'completed';
    SELECT r.after_position INTO v_after FROM migration_control.resume_point(p_migration_name, v_cutoff) r;
    RETURN jsonb_build_object(
        'cutoff', v_cutoff, 'after', v_after,
        'backup_id', (SELECT b.details ->> 'backup_id' FROM migration_tracking.migration_batch b
                       WHERE b.run_id = p_run_id AND b.details ? 'backup_id'
                       ORDER BY b.started_at DESC LIMIT 1),
        'batch_size', coalesce(p_batch_size, (migration_validation.target()).batch_size),
        'context', migration_control.batch_context(coalesce(p_batch_size, (migration_validation.target()).batch_size)),
        'fingerprint', migration_control.run_fingerprint());
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.committed_batch(
    p_migration_name text, p_run_id text, p_resume jsonb, p_after text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in execute_role_migration
AS $$
DECLARE
    v_walk record;
BEGIN
    -- One batch of run p_run_id after walk position p_after, in the caller's transaction
    -- (run_role_migration commits it), with what run_resume read (p_resume): the migration
    -- lock for this transaction, then walk_batches for one batch (from the start again once
    -- the end is passed). Returns {"changed": true} and moves nobody when the run fingerprint
    -- differs from p_resume's (the caller then goes through execute_role_migration again),
    -- else the walk's batches (0: nobody pending), migrated, failed, failure and position.
    IF NOT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('pytest_rolemig.migration')) THEN
        RETURN jsonb_build_object('failed', true, 'batches', 0, 'migrated', 0,
                                  'failure', 'another role migration took the migration lock between two batches');
    END IF;
    IF migration_control.run_fingerprint() IS DISTINCT FROM p_resume ->> 'fingerprint' THEN
        RETURN jsonb_build_object('changed', true);
    END IF;
    SELECT * INTO v_walk
    FROM migration_control.walk_batches(p_migration_name, p_run_id, p_resume ->> 'backup_id',
                                        (p_resume ->> 'cutoff')::timestamptz, p_after,
                                        (p_resume ->> 'batch_size')::integer, 1, '[]', 0, p_resume -> 'context') w;
    RETURN jsonb_build_object('changed', false, 'batches', v_walk.batches, 'migrated', v_walk.migrated,
                              'failed', v_walk.failed, 'failure', v_walk.failure, 'after', v_walk.after_position);
END;
$$;

CREATE OR REPLACE PROCEDURE migration_control.run_role_migration(
    p_migration_name text DEFAULT 'role_system_migration',
    p_batch_size integer DEFAULT NULL,
    p_backup_id text DEFAULT NULL,
    p_max_batches integer DEFAULT NULL,
    p_progress boolean DEFAULT false,
    INOUT p_result jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_call    record;
    v_resume  jsonb;
    v_step    jsonb;
    v_after   text;
    v_run     text;
    v_backup  text := p_backup_id;
    v_status  text;
    v_error   text;
    v_stop    boolean := false;
    v_batches integer := 0;
    v_migrated bigint := 0;
    v_unchanged bigint := 0;
    v_policies integer := 0;
BEGIN
    -- execute_role_migration's migration with one COMMIT per batch, as `rolemig migrate` runs
    -- it: users keep their access at every commit, and a stop (p_max_batches, a stop request,
    -- a cancel, a dead client) leaves whole batches only. The first transaction is an
    -- execute_role_migration call of one batch (every refusal, the backup verified, the
    -- constraints widened, the policies expanded, the run started); the next batches run
    -- with what that call checked (committed_batch), each in its own transaction, as long as
    -- the run fingerprint (mapping, policies) is unchanged; when it changed, or the walk is
    -- through, execute_role_migration runs again (its refusals, the expand, then a batch or
    -- the finish: policies to the new names, constraints narrowed, users_unchanged counted).
    -- Stops after the current batch when another session called request_stop(this pid).
    -- With p_progress, a NOTICE 'rolemig progress: {...}' follows every commit. p_result is
    -- execute_role_migration's row summed over the run (status 'completed', 'partial', 'failed').
    -- No SECURITY DEFINER and no SET clause (either forbids COMMIT): every name is qualified.
    -- CALL it outside a transaction block, or the first COMMIT fails before anything changed.
    COMMIT;
    <<run>>
    LOOP
        SELECT * INTO v_call
        FROM migration_control.execute_role_migration(p_migration_name, p_batch_size, v_backup, 1, true, v_run);
        COMMIT;
        v_run := v_call.run_id;
        v_batches := v_batches + v_call.batches;
        v_migrated := v_migrated + v_call.users_migrated;
        v_unchanged := v_unchanged + v_call.users_unchanged;
        v_policies := v_policies + v_call.policies_rewritten;
        v_status := v_call.status;
        v_error := v_call.error;
        IF p_progress AND v_call.batches > 0 THEN
            RAISE NOTICE 'rolemig progress: %', pg_catalog.jsonb_build_object('run_id', v_run, 'batches', v_batches,
                                                                           'users_migrated', v_migrated);
        END IF;
        EXIT run WHEN v_status <> 'partial' OR v_batches >= p_max_batches;
        v_resume := migration_control.run_resume(p_migration_name, v_run, p_batch_size);
        v_backup := v_resume ->> 'backup_id';
        v_after := v_resume ->> 'after';
        LOOP
            v_stop := migration_control.stop_requested();
            EXIT run WHEN v_stop OR v_batches >= p_max_batches;
            v_step := migration_control.committed_batch(p_migration_name, v_run, v_resume, v_after);
            COMMIT;
            EXIT WHEN (v_step ->> 'changed')::boolean;  -- mapping or policies changed: the full call again
            IF (v_step ->> 'failed')::boolean THEN
                v_status := 'failed';
                v_error := v_step ->> 'failure';
                EXIT run;
            END IF;
            EXIT WHEN (v_step ->> 'batches')::integer = 0;  -- walked through: the full call finishes
            v_batches := v_batches + (v_step ->> 'batches')::integer;
            v_migrated := v_migrated + (v_step ->> 'migrated')::bigint;
            v_after := v_step ->> 'after';
            IF p_progress THEN
                RAISE NOTICE 'rolemig progress: %', pg_catalog.jsonb_build_object('run_id', v_run, 'batches', v_batches,
                                                                               'users_migrated', v_migrated);
            END IF;
        END LOOP;
        v_stop := migration_control.stop_requested();
        EXIT run WHEN v_stop;
    END LOOP;
    IF v_resume IS NOT NULL THEN
        PERFORM migration_control.forget_batch_statement(v_resume -> 'context');
    END IF;
    p_result := pg_catalog.jsonb_build_object('run_id', v_run, 'batches', v_batches, 'users_migrated', v_migrated,
                                              'users_unchanged', v_unchanged, 'policies_rewritten', v_policies,
                                              'status', v_status, 'error', v_error, 'stopped', v_stop);
END;
$$;

REVOKE ALL ON PROCEDURE migration_control.run_role_migration(text, integer, text, integer, boolean, jsonb) FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_control FROM PUBLIC;
