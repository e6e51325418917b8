-- Master setup: installs the whole migration infrastructure in dependency order.
--
--   psql "$DATABASE_URL" -f sql/setup-migration-infrastructure.sql
--
-- Run from anywhere (\ir resolves beside this file). Everything happens in one
-- transaction: on any error nothing is left behind. Installing twice is harmless.
-- The Python installer (pytest_rolemig/installer.py) reads the \ir lines below
-- and applies the same files in the same order.

\set ON_ERROR_STOP on
BEGIN;

\ir migration-logging-system.sql
\ir comprehensive-backup-system.sql
\ir migration-rollback-system.sql
\ir migration-validation-functions.sql
\ir migration-control-system.sql
\ir role-migration.sql
\ir online-migration.sql
\ir migration-security.sql

-- Fails with a clear message when the application's tables are not there.
SELECT * FROM migration_control.ensure_target_configured();
SELECT * FROM migration_control.get_infrastructure_status();

COMMIT;
