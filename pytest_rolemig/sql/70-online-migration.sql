-- Online role migration: the same move as role-migration.sql, but safe under live traffic.
--
-- Provides (schema migration_control):
--   online_precheck(text, integer, text)  the refusals of execute_role_migration; returns the backup id
--   online_batch(...)                     ONE keyset batch (UPDATE + log + batch row), no commit
--   online_alter_policy(...)              alter_role_policy under lock_timeout
--   online_constraints_retried(...)       PROCEDURE: widen / narrow constraints, retried on lock timeouts
--   online_claim(...)                     the call's refusals, then the run's advisory lock
--   online_prepare(...)                   claim, precheck, cutoff, pending; the lock released on refusal
--   online_policy_attempt(...)            one try at one policy, timed out or failed as a value
--   online_batch_attempt(...)             one try at the next batch, timed out or failed as a value
--   online_retry_wait(...)                after a lock timeout: give up, or back off for a retry
--   online_record_phase(...)              the phase's record, only when something happened
--   run_online_migration(...)             PROCEDURE: expand (widen, policies, batches) or contract
--
-- Depends on: migration-logging-system.sql (tracking tables, start/complete_migration_batch),
-- comprehensive-backup-system.sql (backup_log, validate_backup_completeness),
-- migration-rollback-system.sql (rollback_log), migration-validation-functions.sql (target,
-- migrated_tables), migration-control-system.sql (verify_target, discover_legacy_roles) and
-- role-migration.sql (alter_role_policy, adjust_role_constraints, pending_count,
-- migrate_batch, role_policies).
--
-- Why a PROCEDURE and not a Python driver loop: a function runs in its caller's transaction,
-- so execute_role_migration holds the row locks of every batch until its end. A procedure
-- called with a top-level CALL in autocommit mode may COMMIT, so each batch (and each policy
-- change) is its own transaction, and the whole rollout is one SQL statement that psql, the
-- CLI or any driver can run; no client has to stay in a loop for the data to stay consistent.
-- Consequences of the choice: the procedure has no SECURITY DEFINER and no SET clause (either
-- forbids COMMIT), so every name in it is schema-qualified and the work that deparses or parses
-- SQL lives in the helper functions above, which do pin search_path; CALL it outside an explicit
-- transaction block (psycopg autocommit=True, psql without BEGIN), or COMMIT fails at once,
-- before anything is locked or changed.
--
-- Rollout:
--   CALL migration_control.run_online_migration();                      -- expand (resumable)
--   ... wait until no token carries a legacy role name ...
--   CALL migration_control.run_online_migration(p_phase => 'contract'); -- new names only
-- expand   : widen the role CHECK constraints; rewrite each policy so that it accepts the legacy
--            role AND its new role ('billing_admin'::text in a list -> 'billing_admin'::text,
--            'admin'::text; = 'org_owner'::text -> = ANY (ARRAY['org_owner'::text, 'owner'::text]));
--            then move the users in keyset batches, one COMMIT per batch. Access is the same for a
--            user holding the legacy or the new role, in the database and in the token.
-- contract : refused while users are pending; each policy goes back to the text it had before the
--            expand, rewritten to the new names (rewrite_role_literals, the offline path's rewrite),
--            then the CHECK constraints are narrowed.
-- Safety: one run at a time (session-level advisory lock on the key execute_role_migration and
-- the rollbacks use, so they exclude each other; released on every exit, and by the server when
-- the backend dies); every lock-taking statement runs under lock_timeout and is retried with
-- exponential backoff, so it never queues for long in front of application queries; a batch
-- that cannot get its row locks in time is retried the same way. Resume = run it again: the
-- pending predicate skips users a committed batch already logged, so no batch is applied twice,
-- and a completed migration re-run changes nothing.

CREATE SCHEMA IF NOT EXISTS migration_control;

-- replaced by migration_control.pending_users_sql (role-migration.sql), shared with the offline path
DROP FUNCTION IF EXISTS migration_control.online_pending_sql();

CREATE OR REPLACE FUNCTION migration_control.online_precheck(
    p_migration_name text, p_batch_size integer, p_backup_id text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET row_security = off  -- as in create_comprehensive_backup: fail rather than see a subset
AS $$
DECLARE
    v_cand   record;
    v_backup text;
BEGIN
    -- The refusals of execute_role_migration, raised before anything changes: bad arguments
    -- and target (refuse_bad_run), the mapping (refuse_unready_mapping), no valid backup.
    -- Returns the backup the run relies on (p_backup_id, or the newest valid one).
    PERFORM migration_control.refuse_bad_run(p_migration_name, p_batch_size);
    PERFORM migration_control.refuse_unready_mapping();
    FOR v_cand IN SELECT b.backup_id FROM migration_backup.backup_log b
                  WHERE b.status = 'completed' AND (p_backup_id IS NULL OR b.backup_id = p_backup_id)
                  ORDER BY b.created_at DESC, b.backup_id DESC
    LOOP
        IF NOT EXISTS (SELECT 1 FROM migration_backup.validate_backup_completeness(v_cand.backup_id) v
                       WHERE v.status = 'fail') THEN
            v_backup := v_cand.backup_id;
            EXIT;
        END IF;
    END LOOP;
    IF v_backup IS NULL THEN
        RAISE EXCEPTION 'no valid backup%: refusing to migrate without one',
                        CASE WHEN p_backup_id IS NOT NULL THEN ' ' || p_backup_id ELSE '' END
            USING DETAIL = 'The backup must be completed and validate without a failing check.',
                  HINT = 'take one first: SELECT * FROM migration_control.prepare_for_migration()';
    END IF;
    RETURN v_backup;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_batch(
    p_migration_name text, p_run_id text, p_batch_size integer, p_backup_id text,
    p_cutoff timestamptz, p_lock_timeout_ms integer, p_after_key text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_batch_id text;
    v_batch    jsonb;
BEGIN
    -- One batch in the caller's transaction: the first p_batch_size pending users in walk order
    -- after position p_after_key (physical order for a plain table, key order otherwise, never
    -- OFFSET; NULL starts at the beginning, and the pending predicate skips whoever a committed
    -- batch already moved), logged and moved to their new role, with their completed batch
    -- row, all or nothing (migration_control.migrate_batch, which execute_role_migration runs
    -- too). Only the rows whose role changes are locked, by its UPDATE, under lock_timeout.
    -- Returns {"done": true} when nobody is pending after the position (no row written), else
    -- the batch's counts and keys and the position the next batch starts after ("after").
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    v_batch_id := migration_tracking.start_migration_batch(p_migration_name, p_batch_size, p_run_id,
                      jsonb_build_object('phase', 'migrate', 'mode', 'online', 'backup_id', p_backup_id));
    SELECT to_jsonb(b) INTO v_batch
    FROM migration_control.migrate_batch(p_migration_name, p_cutoff, p_after_key, p_batch_size, v_batch_id) b;
    IF v_batch ->> 'first_key' IS NULL THEN
        DELETE FROM migration_tracking.migration_batch b WHERE b.batch_id = v_batch_id;
        RETURN jsonb_build_object('done', true);
    END IF;
    PERFORM migration_control.record_batch(v_batch_id, v_batch);
    RETURN jsonb_build_object('done', false, 'batch_id', v_batch_id, 'migrated', v_batch -> 'migrated',
                              'first_key', v_batch ->> 'first_key', 'last_key', v_batch ->> 'last_key',
                              'after', v_batch ->> 'after_position');
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_alter_policy(
    p_schema text, p_table text, p_policy text, p_phase text, p_run_id text, p_lock_timeout_ms integer)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- alter_role_policy under lock_timeout: ALTER POLICY takes an ACCESS EXCLUSIVE lock, and a
    -- statement waiting for it would queue every application query behind it. A timeout
    -- raises lock_not_available for the caller to retry.
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    RETURN migration_control.alter_role_policy(p_schema, p_table, p_policy, p_phase, p_run_id);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_constraints(p_mode text, p_lock_timeout_ms integer)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- adjust_role_constraints (widen / narrow) under lock_timeout: ALTER TABLE takes an ACCESS
    -- EXCLUSIVE lock. A timeout raises lock_not_available for the caller to retry.
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    RETURN migration_control.adjust_role_constraints(p_mode);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_backoff(p_attempt integer)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    -- Sleep before retry number p_attempt: exponential (20 ms doubling, capped at 2 s) with
    -- jitter. A function with a pinned search_path, so the procedure's call cannot be hijacked
    -- through an operator or function planted in public.
    SELECT pg_catalog.pg_sleep(least(2000, 20 * power(2, least(p_attempt, 7)) * (0.5 + random())) / 1000.0)
$$;

CREATE OR REPLACE PROCEDURE migration_control.online_constraints_retried(
    p_mode text, p_lock_timeout_ms integer, p_max_retries integer,
    INOUT p_changed jsonb DEFAULT '[]', INOUT p_retries integer DEFAULT 0, INOUT p_error text DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_attempt   integer := 0;
    v_timed_out boolean;
BEGIN
    -- online_constraints(p_mode) in a transaction of its own, retried with backoff while the
    -- ACCESS EXCLUSIVE lock it needs times out, at most p_max_retries times; a retry adds to
    -- p_retries, any other error (or giving up) lands in p_error. Called by
    -- run_online_migration, whose transactions it commits (so no SET clause: a procedure
    -- with one may not COMMIT; every name is schema-qualified instead).
    LOOP
        v_timed_out := false;
        BEGIN
            p_changed := migration_control.online_constraints(p_mode, p_lock_timeout_ms);
        EXCEPTION WHEN lock_not_available THEN v_timed_out := true;
                  WHEN OTHERS THEN p_error := SQLERRM;
        END;
        COMMIT;
        EXIT WHEN NOT v_timed_out OR p_error IS NOT NULL;
        v_attempt := v_attempt + 1;
        p_retries := p_retries + 1;
        IF v_attempt > p_max_retries THEN
            p_error := pg_catalog.format('gave up after %s lock timeouts of %s ms', v_attempt, p_lock_timeout_ms);
            EXIT;
        END IF;
        PERFORM migration_control.online_backoff(v_attempt);
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_claim(
    p_migration_name text, p_phase text, p_lock_timeout_ms integer, p_max_retries integer, p_lock_key bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- The refusals of run_online_migration about its call, before it takes anything: an unknown
    -- phase, a lock budget out of range; then the session-level advisory lock p_lock_key (one run
    -- at a time), or the refusal naming the backend that holds it. The caller releases the lock.
    IF p_phase IS NULL OR p_phase NOT IN ('expand', 'contract') THEN
        RAISE EXCEPTION 'unknown phase %', coalesce(pg_catalog.quote_literal(p_phase), 'NULL')
            USING DETAIL = 'expand: widen constraints, policies accept legacy and new roles, move the users; '
                           'contract: policies and constraints name the new roles only.',
                  HINT = 'CALL migration_control.run_online_migration(p_phase => ''expand'')';
    END IF;
    IF p_lock_timeout_ms IS NULL OR p_lock_timeout_ms < 1 OR p_max_retries IS NULL OR p_max_retries < 0 THEN
        RAISE EXCEPTION 'lock timeout must be >= 1 ms and retries >= 0, got % ms and %', p_lock_timeout_ms, p_max_retries
            USING HINT = 'e.g. p_lock_timeout_ms => 100, p_max_retries => 50';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(p_lock_key) THEN
        RAISE EXCEPTION 'another role migration is running'
            USING DETAIL = pg_catalog.format('Migration %L (%s) could not take the migration advisory lock; held by backend %s.',
                                  p_migration_name, p_phase,
                                  (SELECT pg_catalog.string_agg(h.pid::text, ', ')
                                     FROM migration_control.migration_lock_holders() AS h(pid))),
                  HINT = 'wait for it to finish, or stop it (pg_terminate_backend) and CALL this again to resume';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_prepare(
    p_migration_name text, p_batch_size integer, p_backup_id text, p_phase text, p_lock_timeout_ms integer,
    p_max_retries integer, p_lock_key bigint, OUT backup_id text, OUT batch_size integer, OUT cutoff timestamptz, OUT pending bigint, OUT run_id text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_cfg migration_control.target_config;
    v_err text;
BEGIN
    -- What run_online_migration checks and reads before its first change: online_claim (the
    -- call's refusals, then the advisory lock p_lock_key), online_precheck (arguments, target,
    -- mapping, the backup it returns), the cutoff of the pending predicate (the newest completed
    -- rollback), the pending count, and for contract that nobody is pending. A refusal once the
    -- lock is held releases it and raises, saying that nothing was changed. batch_size:
    -- p_batch_size, or the target's; run_id: the new run's.
    PERFORM migration_control.online_claim(p_migration_name, p_phase, p_lock_timeout_ms, p_max_retries, p_lock_key);
    BEGIN
        backup_id := migration_control.online_precheck(p_migration_name, p_batch_size, p_backup_id);
        v_cfg := migration_validation.target();
        SELECT coalesce(max(r.started_at), '-infinity') INTO cutoff
        FROM migration_backup.rollback_log r WHERE r.status = 'completed';
        pending := migration_control.pending_count(p_migration_name, cutoff);
        IF p_phase = 'contract' AND pending > 0 THEN
            RAISE EXCEPTION '% users are still on a legacy role: refusing to contract', pending
                USING DETAIL = 'Contract makes policies accept the new role names only; pending users would lose access.',
                      HINT = 'CALL migration_control.run_online_migration() (expand) to the end first';
        END IF;
    EXCEPTION WHEN OTHERS THEN
        v_err := SQLERRM;
    END;
    IF v_err IS NOT NULL THEN
        PERFORM pg_catalog.pg_advisory_unlock(p_lock_key);
        RAISE EXCEPTION '%', v_err USING HINT = 'nothing was changed';
    END IF;
    batch_size := coalesce(p_batch_size, v_cfg.batch_size);
    run_id := 'online_' || pg_catalog.to_char(pg_catalog.clock_timestamp(), 'YYYYMMDD_HH24MISS') || '_'
              || pg_catalog.substr(pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), 1, 6);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_policy_attempt(
    p_schema text, p_table text, p_policy text, p_phase text, p_run_id text, p_lock_timeout_ms integer,
    OUT changed boolean, OUT timed_out boolean, OUT failure text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- One try of run_online_migration at one policy (online_alter_policy), in a subtransaction
    -- of the transaction the procedure commits right after: changed or not, or timed out on its
    -- lock (the procedure retries), or failed, with the error naming the policy.
    changed := false;
    timed_out := false;
    changed := migration_control.online_alter_policy(p_schema, p_table, p_policy, p_phase, p_run_id,
                                                     p_lock_timeout_ms);
EXCEPTION WHEN lock_not_available THEN timed_out := true;
          WHEN OTHERS THEN failure := pg_catalog.format('policy %I on %I.%I: %s', p_policy, p_schema, p_table, SQLERRM);
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_batch_attempt(
    p_migration_name text, p_run_id text, p_batch_size integer, p_backup_id text,
    p_cutoff timestamptz, p_lock_timeout_ms integer, p_after_key text)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
DECLARE
    v_ctx            text;
    v_err_schema     text;
    v_err_table      text;
    v_err_constraint text;
BEGIN
    -- One try of run_online_migration at the next batch (online_batch), in a subtransaction of
    -- the transaction the procedure commits right after: online_batch's result, or
    -- {"timed_out": true} when the row locks were not granted in time (the procedure retries),
    -- or {"error": ...} with where it was raised (error_origin).
    RETURN migration_control.online_batch(p_migration_name, p_run_id, p_batch_size, p_backup_id, p_cutoff,
                                          p_lock_timeout_ms, p_after_key);
EXCEPTION WHEN lock_not_available THEN
    RETURN jsonb_build_object('timed_out', true);
WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_ctx = PG_EXCEPTION_CONTEXT, v_err_schema = SCHEMA_NAME,
                            v_err_table = TABLE_NAME, v_err_constraint = CONSTRAINT_NAME;
    RETURN jsonb_build_object('error', SQLERRM || migration_tracking.error_origin(v_ctx, v_err_schema, v_err_table,
                                                                                  v_err_constraint));
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_retry_wait(p_attempt integer, p_max_retries integer, p_give_up text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- After the p_attempt-th lock timeout of one step of run_online_migration, its transaction
    -- committed (so nothing is held while waiting): p_give_up, the error that ends the run, once
    -- p_max_retries retries are spent; else NULL, after the backoff (online_backoff).
    IF p_attempt > p_max_retries THEN
        RETURN p_give_up;
    END IF;
    PERFORM migration_control.online_backoff(p_attempt);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION migration_control.online_record_phase(
    p_migration_name text, p_batch_size integer, p_run_id text, p_phase text, p_backup_id text,
    p_policies integer, p_retries integer, p_widened jsonb, p_narrowed jsonb, p_err text, p_step text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
BEGIN
    -- The phase record of a run_online_migration call (its batches have rows of their own):
    -- what the phase changed or retried, and the step and error it failed at. Only when
    -- something happened, so re-running a finished migration writes nothing.
    IF p_err IS NOT NULL OR p_policies > 0 OR p_widened <> '[]' OR p_narrowed <> '[]' OR p_retries > 0 THEN
        PERFORM migration_tracking.complete_migration_batch(
            migration_tracking.start_migration_batch(p_migration_name, p_batch_size, p_run_id,
                jsonb_build_object('phase', p_phase, 'mode', 'online', 'backup_id', p_backup_id,
                                   'policies_changed', p_policies, 'lock_retries', p_retries,
                                   'constraints_widened', p_widened, 'constraints_narrowed', p_narrowed,
                                   'failed_step', CASE WHEN p_err IS NOT NULL THEN p_step END)),
            CASE WHEN p_err IS NULL THEN 'completed' ELSE 'failed' END, p_err);
    END IF;
END;
$$;

CREATE OR REPLACE PROCEDURE migration_control.run_online_migration(
    p_migration_name text DEFAULT 'role_system_migration',
    p_batch_size integer DEFAULT NULL,
    p_backup_id text DEFAULT NULL,
    p_phase text DEFAULT 'expand',
    p_lock_timeout_ms integer DEFAULT 100,
    p_max_retries integer DEFAULT 50,
    p_pause_ms integer DEFAULT 0,
    p_max_batches integer DEFAULT NULL,
    INOUT p_result jsonb DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_lock_key  constant bigint := pg_catalog.hashtext('pytest_rolemig.migration');
    v_backup    text;
    v_batch_size integer;
    v_run       text;
    v_cutoff    timestamptz;
    v_batch     jsonb;
    v_last_key  text;
    v_batches   integer := 0;
    v_migrated  bigint := 0;
    v_unchanged bigint := 0;
    v_policies  integer := 0;
    v_retries   integer := 0;
    v_attempt   integer;
    v_try       record;
    v_err       text;
    v_step      text;
    v_pol       record;
    v_pending   bigint;
    v_counted   boolean := false;
    v_swept     boolean := false;
    v_widened   jsonb := '[]';
    v_narrowed  jsonb := '[]';
BEGIN
    -- Runs one phase of the online migration (see the file header), each step in its own
    -- transaction. The first statement is a COMMIT: inside an explicit transaction block it
    -- fails before the advisory lock is taken. Every error path releases the lock, records
    -- what failed and raises; a killed backend loses at most its uncommitted step.
    COMMIT;
    SELECT o.backup_id, o.batch_size, o.cutoff, o.pending, o.run_id INTO v_backup, v_batch_size, v_cutoff, v_pending, v_run
    FROM migration_control.online_prepare(p_migration_name, p_batch_size, p_backup_id, p_phase, p_lock_timeout_ms,
                                          p_max_retries, v_lock_key) o;
    COMMIT;

    -- 1. constraints (expand: widen first; contract: narrow last, below)
    IF p_phase = 'expand' THEN
        v_step := 'widen constraints';
        CALL migration_control.online_constraints_retried('widen', p_lock_timeout_ms, p_max_retries,
                                                          v_widened, v_retries, v_err);
    END IF;

    -- 2. policies, one transaction each
    IF v_err IS NULL THEN
        v_step := p_phase || ' policies';
        FOR v_pol IN SELECT * FROM migration_control.role_policies() LOOP
            v_attempt := 0;
            LOOP
                SELECT * INTO v_try FROM migration_control.online_policy_attempt(v_pol.schema_name, v_pol.table_name,
                                             v_pol.policy_name, p_phase, v_run, p_lock_timeout_ms);
                COMMIT;
                v_err := v_try.failure;
                EXIT WHEN NOT v_try.timed_out OR v_err IS NOT NULL;
                v_attempt := v_attempt + 1;
                v_retries := v_retries + 1;
                RAISE NOTICE 'policy % on %.%: lock timeout (% ms), retry %', v_pol.policy_name,
                             v_pol.schema_name, v_pol.table_name, p_lock_timeout_ms, v_attempt;
                v_err := migration_control.online_retry_wait(v_attempt, p_max_retries,
                             pg_catalog.format('policy %I on %I.%I: gave up after %s lock timeouts of %s ms',
                                 v_pol.policy_name, v_pol.schema_name, v_pol.table_name, v_attempt, p_lock_timeout_ms));
                EXIT WHEN v_err IS NOT NULL;
            END LOOP;
            EXIT WHEN v_err IS NOT NULL;
            IF v_try.changed THEN
                v_policies := v_policies + 1;
            END IF;
        END LOOP;
    END IF;

    -- 3. expand: the users, one COMMIT per batch
    IF v_err IS NULL AND p_phase = 'expand' THEN
        v_step := 'batches';
        v_attempt := 0;
        LOOP
            EXIT WHEN p_max_batches IS NOT NULL AND v_batches >= p_max_batches;
            v_batch := migration_control.online_batch_attempt(p_migration_name, v_run, v_batch_size, v_backup,
                                                              v_cutoff, p_lock_timeout_ms, v_last_key);
            COMMIT;
            v_err := v_batch ->> 'error';
            EXIT WHEN v_err IS NOT NULL;
            IF (v_batch ->> 'timed_out')::boolean THEN
                v_attempt := v_attempt + 1;
                v_retries := v_retries + 1;
                v_err := migration_control.online_retry_wait(v_attempt, p_max_retries,
                             pg_catalog.format('batch gave up after %s row-lock timeouts of %s ms', v_attempt, p_lock_timeout_ms));
                EXIT WHEN v_err IS NOT NULL;
                CONTINUE;
            END IF;
            IF (v_batch ->> 'done')::boolean THEN
                -- The keyset reached the end. A batch leaves a user pending when the application
                -- changed that user's role while the batch waited for the row (the new value is
                -- kept, not overwritten), and the keyset has walked past them: one more pass from
                -- the first key picks them up. Only when some are pending, and only once.
                v_pending := migration_control.pending_count(p_migration_name, v_cutoff);
                v_counted := true;
                EXIT WHEN v_pending = 0 OR v_last_key IS NULL OR v_swept;
                v_swept := true;
                v_counted := false;
                v_last_key := NULL;
                CONTINUE;
            END IF;
            v_attempt := 0;
            v_batches := v_batches + 1;
            v_migrated := v_migrated + (v_batch ->> 'migrated')::bigint;
            v_last_key := v_batch ->> 'after';
            IF p_pause_ms > 0 THEN
                PERFORM pg_catalog.pg_sleep(p_pause_ms::double precision OPERATOR(pg_catalog./) 1000::double precision);
            END IF;
        END LOOP;
        -- the batches shared one prepared statement (migrate_batch): the walk leaves none behind
        PERFORM migration_control.forget_batch_statement(migration_control.batch_context(v_batch_size));
    END IF;

    -- 4. contract: narrow the constraints last
    IF v_err IS NULL AND p_phase = 'contract' THEN
        v_step := 'narrow constraints';
        CALL migration_control.online_constraints_retried('narrow', p_lock_timeout_ms, p_max_retries,
                                                          v_narrowed, v_retries, v_err);
    END IF;

    IF v_err IS NULL AND NOT v_counted THEN
        v_pending := migration_control.pending_count(p_migration_name, v_cutoff);
    END IF;
    IF v_err IS NULL AND v_pending = 0 AND p_phase = 'expand' THEN
        -- identity-mapped users are never batched: counted once, when nobody is left to move
        v_unchanged := migration_control.unchanged_count(p_migration_name, v_cutoff);
    END IF;
    PERFORM migration_control.online_record_phase(p_migration_name, p_batch_size, v_run, p_phase, v_backup,
                                                  v_policies, v_retries, v_widened, v_narrowed, v_err, v_step);
    COMMIT;
    PERFORM pg_catalog.pg_advisory_unlock(v_lock_key);
    IF v_err IS NOT NULL THEN
        RAISE EXCEPTION 'online migration (%) failed at %: %', p_phase, v_step, v_err
            USING DETAIL = pg_catalog.format('Run %s committed %s batches (%s users moved) and %s policy changes before the error.',
                                  v_run, v_batches, v_migrated, v_policies),
                  HINT = 'fix the cause and CALL run_online_migration again to resume, or roll back with migration_backup.execute_rollback';
    END IF;
    p_result := pg_catalog.jsonb_build_object('run_id', v_run, 'phase', p_phase, 'backup_id', v_backup,
                                   'status', CASE WHEN v_pending > 0 THEN 'partial' ELSE 'completed' END,
                                   'batches', v_batches, 'users_migrated', v_migrated, 'users_unchanged', v_unchanged,
                                   'policies_changed', v_policies, 'lock_retries', v_retries, 'pending', v_pending);
END;
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA migration_control FROM PUBLIC;
REVOKE ALL ON PROCEDURE migration_control.run_online_migration(text, integer, text, text, integer, integer, integer, integer, jsonb) FROM PUBLIC;
