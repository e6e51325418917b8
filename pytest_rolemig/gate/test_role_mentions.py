"""Every place a role hides: after the migration, nothing outside the role column names a legacy role.

A migration rewrites the role column and the policies. A legacy role name can also live in a
column default or a sign-up function that still writes it for new users, a view or an RPC
function that filters by it, a CHECK constraint or an enum of another table, an index
predicate, a trigger, a rule, or a copy of the role in other data (``auth.users``' app
metadata, pending invitations, a settings row). ``find_role_mentions()`` scans the catalog
and the data for each; a place a team keeps on purpose (an audit trail) is declared in the
mapping file's ``[acknowledged_mentions]``.
"""

from __future__ import annotations

import json
from collections import defaultdict

from pytest_rolemig import api
from pytest_rolemig.assertions import RolemigAssertionError
from pytest_rolemig.rehearsal import Rehearsal

REWRITTEN_KINDS = ("policy", "check constraint")
"""Kinds the migration itself rewrites (policies; the role column's CHECK)."""


def _lines(mentions: list[api.RoleMention]) -> list[str]:
    """One line per object: kind, name, the roles it names, and the text around the first."""
    grouped: dict[tuple[str, str], list[api.RoleMention]] = defaultdict(list)
    for m in mentions:
        grouped[(m.kind, m.name)].append(m)
    return [f"{kind} {name}: {', '.join(sorted({m.role for m in found}))} ({found[0].context.strip()})"
            for (kind, name), found in sorted(grouped.items())]


def test_no_legacy_role_name_hides_anywhere_after_migration(rolemig_rehearsal: Rehearsal) -> None:
    """No policy, function, view, default, constraint, index, trigger, rule, enum or data names a legacy role."""
    rolemig_rehearsal.run("migrate")
    acknowledged = rolemig_rehearsal.mapping.acknowledged_mentions
    after = rolemig_rehearsal.mentions_after_migration  # taken right after it: later tests roll back
    left = [m for m in after if m.name not in acknowledged]
    if not left:
        return
    before = rolemig_rehearsal.mentions_before
    rewritten = sum(1 for m in before if m.kind in REWRITTEN_KINDS)
    names = sorted({m.name for m in left})
    paste = "\n".join(["[acknowledged_mentions]"]
                      + [f'{json.dumps(n)} = "why this keeps legacy role names"' for n in names])
    raise RolemigAssertionError(
        f"{len(names)} object(s) still name a legacy role after the migration: {', '.join(names[:5])}"
        + (", ..." if len(names) > 5 else ""),
        expected="nothing outside the role column names a legacy-only role after the migration, "
                 "unless the mapping file's [acknowledged_mentions] declares it",
        sections={
            "Still naming legacy roles (kind name: roles (context))": "\n".join(_lines(left)),
            "Before the migration": f"{len(before)} mention(s) in {len({m.name for m in before})} object(s); "
                                    f"{rewritten} in policies and CHECK constraints, which the migration rewrites",
            "Fix": "change each in your migration (a default, a function body, a view, a copy of the role in "
                   f"other data); declare those you keep on purpose in {rolemig_rehearsal.mapping.source}:\n"
                   + paste,
        },
    )
