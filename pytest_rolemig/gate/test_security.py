"""The security gate: the migration infrastructure opens no door in the team's database.

Runs ``migration_validation.validate_security()`` on the rehearsal's copy of the team's schema
(with the infrastructure installed): migration objects unreachable by the API roles, backups
protected, SECURITY DEFINER functions with a pinned search_path, RLS on every table the API
roles can reach. One test per promise; read-only, so it does not disturb the rehearsal.
"""

from __future__ import annotations

from pytest_rolemig import api
from pytest_rolemig.assertions import assert_checks_pass
from pytest_rolemig.checks import CheckReport
from pytest_rolemig.rehearsal import Rehearsal


def _security(rehearsal: Rehearsal, names: tuple[str, ...]) -> CheckReport:
    report = api.security_checks(rehearsal.conn)
    return CheckReport(report.source, tuple(c for c in report.checks if c.name in names))


def test_migration_objects_are_unreachable_by_api_roles(rolemig_rehearsal: Rehearsal) -> None:
    """anon, authenticated, service_role and PUBLIC can use no migration schema, table or function."""
    assert_checks_pass(
        _security(rolemig_rehearsal, ("migration_objects_owned", "migration_objects_not_exposed",
                                      "migration_default_privileges", "backup_tables_protected")),
        "the migration infrastructure is reachable by an API role",
        "the four migration schemas belong to a dedicated NOLOGIN owner; no API role or PUBLIC holds a "
        "privilege on them or their objects; backup tables have RLS on. Fix: "
        "SELECT * FROM migration_control.secure_migration_objects()",
    )


def test_security_definer_functions_pin_search_path(rolemig_rehearsal: Rehearsal) -> None:
    """No SECURITY DEFINER function lets its caller choose where names resolve."""
    assert_checks_pass(
        _security(rolemig_rehearsal, ("security_definer_search_path",)),
        "a SECURITY DEFINER function has a mutable or writable search_path",
        "every SECURITY DEFINER function in the migration and policy schemas has SET search_path "
        "(e.g. '' with schema-qualified names) naming no schema an API role can create objects in",
    )


def test_api_reachable_tables_have_row_level_security(rolemig_rehearsal: Rehearsal) -> None:
    """Every table of the policy schemas that anon/authenticated can read or write has RLS enabled."""
    assert_checks_pass(
        _security(rolemig_rehearsal, ("application_tables_rls",)),
        "a table the API roles can reach has row level security disabled",
        "ALTER TABLE ... ENABLE ROW LEVEL SECURITY on each table granted to anon, authenticated or PUBLIC",
    )
