-- Master setup: installs the whole migration infrastructure in dependency order.
--
--   psql "$DATABASE_URL" -f pytest_rolemig/sql/setup-migration-infrastructure.sql
--
-- (from a checkout; where pip put it: python -m pytest_rolemig.resources)
--
-- Run from anywhere (\ir resolves beside this file). Everything happens in one
-- transaction: on any error nothing is left behind. Installing twice is harmless.
-- The component files are numbered in install order; the Python installer
-- (pytest_rolemig/db/install.py) checks that the \ir lines below follow the numbers and
-- applies the same files in the same order.

\set ON_ERROR_STOP on
BEGIN;

\ir 10-migration-logging-system.sql
\ir 20-comprehensive-backup-system.sql
\ir 30-migration-rollback-system.sql
\ir 40-migration-validation-functions.sql
\ir 50-migration-control-system.sql
\ir 60-role-migration.sql
\ir 70-online-migration.sql
\ir 80-migration-security.sql

-- Fails with a clear message when the application's tables are not there.
SELECT * FROM migration_control.ensure_target_configured();
SELECT * FROM migration_control.get_infrastructure_status();

COMMIT;
