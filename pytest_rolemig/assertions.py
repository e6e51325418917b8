"""pytest assertions over the SQL validation functions, with readable failures.

Each helper runs one check function and raises :class:`RolemigAssertionError`
(an ``AssertionError``) whose message has titled sections: which check failed,
what was expected, and the offending rows the SQL reported.
"""

from __future__ import annotations

import json
from typing import Any

from pytest_rolemig import api
from pytest_rolemig.checks import CheckReport


class RolemigAssertionError(AssertionError):
    """A migration check failed; the message shows which, what was expected, and the rows."""

    def __init__(self, title: str, report: CheckReport | None = None, *, expected: str = "",
                 sections: dict[str, str] | None = None) -> None:
        self.title = title
        self.report = report
        parts = [title]
        if expected:
            parts += ["", "Expected:", f"  {expected}"]
        if report is not None:
            for check in report.failures + (report.warnings if not report.failures else ()):
                label = f"{check.group}/{check.name}" if check.group else check.name
                parts += ["", f"Check {label}: {check.status}", _indent(_details(check.details))]
        for head, body in (sections or {}).items():
            parts += ["", f"{head}:", _indent(body)]
        super().__init__("\n".join(parts))


def _details(details: dict[str, Any]) -> str:
    return json.dumps(details, indent=2, default=str, sort_keys=True)[:4000]


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def assert_checks_pass(report: CheckReport, title: str, expected: str = "", strict: bool = False) -> CheckReport:
    """Raise if any check failed (with ``strict``, also if any warned) or if there were no checks."""
    if not report.checks:
        raise RolemigAssertionError(f"{title}: {report.source} returned no checks at all")
    bad = report.failures + (report.warnings if strict else ())
    if bad:
        names = ", ".join(c.name for c in bad)
        raise RolemigAssertionError(f"{title}: {names}", report, expected=expected)
    return report


def assert_pre_migration_valid(conn: api.Conn) -> CheckReport:
    """Every user has a known, mapped legacy role; the mapping is total; a valid backup exists."""
    return assert_checks_pass(
        api.pre_migration_checks(conn), "pre-migration state is not valid",
        "every user holds a legacy role the mapping maps into the new roles, a validated backup "
        "exists, and no other migration is running",
    )


def assert_backup_complete(conn: api.Conn, backup_id: str) -> CheckReport:
    """The backup's rows, counts and checksums match what was recorded."""
    return assert_checks_pass(
        api.validate_backup(conn, backup_id), f"backup {backup_id} is not complete",
        "counts and checksums recomputed from the backup equal those recorded at backup time",
    )


def assert_post_migration_valid(conn: api.Conn, backup_id: str | None = None) -> CheckReport:
    """Every user holds the mapping of their backed-up role; no policy names a legacy role."""
    return assert_checks_pass(
        api.post_migration_checks(conn, backup_id), "post-migration state is not valid",
        "each user's role equals the mapping of the role in the backup, the user count is "
        "unchanged, no policy names a legacy-only role, every session survived",
    )


def assert_users_authenticate(conn: api.Conn, sample_size: int = 50) -> CheckReport:
    """Sampled users, acting as ``authenticated`` through RLS, reach their own profile and sessions."""
    return assert_checks_pass(
        api.authentication_checks(conn, sample_size), "users can no longer reach their own data",
        "as the 'authenticated' role with their JWT claims, each sampled user reads exactly their "
        "own profile and all of their sessions",
    )


def assert_rls_policies_valid(conn: api.Conn, phase: str = "auto") -> CheckReport:
    """RLS is on where expected and policies name only the roles of this phase."""
    return assert_checks_pass(
        api.rls_checks(conn, phase), f"RLS policies are not valid for phase {phase!r}",
        "RLS enabled on every table with policies; policies name only roles of the phase",
    )


def assert_rollback_exact(conn: api.Conn, backup_id: str, rollback_id: str | None = None) -> CheckReport:
    """After a rollback, profiles, sessions and policies equal the backup, by content."""
    return assert_checks_pass(
        api.validate_rollback(conn, backup_id, rollback_id), f"rollback of backup {backup_id} is not exact",
        "every backed-up profile, session and policy is back to its backed-up content",
    )
