"""The migration gate: the promises of a role migration, checked on a rehearsal.

One test per promise, so the CI report reads like a checklist. All tests share
one rehearsal (the ``rolemig_rehearsal`` fixture) on a copy of the template database (the team's schema, the
infrastructure, the mapping and seeded users of every legacy role).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_rolemig import api
from pytest_rolemig.assertions import RolemigAssertionError, assert_checks_pass
from pytest_rolemig.rehearsal import Rehearsal


def _pick(report: Any, names: tuple[str, ...]) -> Any:
    from pytest_rolemig.checks import CheckReport

    return CheckReport(report.source, tuple(c for c in report.checks if c.name in names))


def test_infrastructure_installs_and_initializes(rolemig_rehearsal: Rehearsal) -> None:
    """All four schemas install on the target and each component works for real."""
    assert_checks_pass(rolemig_rehearsal.run("install"), "migration infrastructure does not initialize",
                       "every component (logging, backup, rollback, validation) passes its self-test")


def test_every_legacy_role_is_mapped(rolemig_rehearsal: Rehearsal, rolemig_template: Any) -> None:
    """Every role the schema allows or the data holds has exactly one new role."""
    unmapped = [r for r in api.legacy_roles(rolemig_rehearsal.conn) if r[2] is None]
    if unmapped:
        raise RolemigAssertionError(
            "role mapping is not total: " + ", ".join(r[0] for r in unmapped),
            expected="every legacy role found in the schema (enum, CHECK) or in the data is mapped",
            sections={"Unmapped roles (role: found in)": "\n".join(f"{r[0]}: {', '.join(r[1])}" for r in unmapped),
                      "Fix": f"add a line for each to the [mapping] table of {rolemig_rehearsal.mapping.source}"},
        )
    report = api.pre_migration_checks(rolemig_rehearsal.conn)
    assert_checks_pass(_pick(report, ("no_null_roles", "all_roles_known", "mapping_total", "mapping_targets_valid")),
                       "users or mapping outside the known roles")


def test_backup_is_complete(rolemig_rehearsal: Rehearsal) -> None:
    """The backup holds every profile, session and policy; counts and checksums recompute."""
    backup = rolemig_rehearsal.run("backup")
    assert_checks_pass(api.validate_backup(rolemig_rehearsal.conn, backup.backup_id),
                       f"backup {backup.backup_id} is not complete")
    assert rolemig_rehearsal.before is not None
    assert backup.profiles_count == rolemig_rehearsal.before.profiles_count, "backup missed profile rows"
    assert backup.sessions_count == rolemig_rehearsal.before.sessions_count, "backup missed session rows"


def test_pre_migration_state_is_valid(rolemig_rehearsal: Rehearsal) -> None:
    """Known roles only, a total mapping, a valid backup, no migration running."""
    rolemig_rehearsal.run("backup")
    assert_checks_pass(api.pre_migration_checks(rolemig_rehearsal.conn), "pre-migration state is not valid")


def test_migration_maps_every_user_as_the_mapping_says(
        rolemig_rehearsal: Rehearsal, record_property: Callable[[str, object], None]) -> None:
    """Each user ends with mapping[their legacy role]; no user lost or added.

    A roles table (one row per user and role): a row the migration deleted because the user's
    other row ends on the same new role fails this test, naming the unique index and the users,
    unless the mapping says ``merge_duplicates = "keep_one"``.
    """
    _, result = rolemig_rehearsal.run("migrate")
    assert result.status == "completed", f"migration ended with status {result.status}: {result.error}"
    before, after = rolemig_rehearsal.before, rolemig_rehearsal.after_migration
    assert before is not None and after is not None
    merged = rolemig_rehearsal.merged_after_migration
    if merged and rolemig_rehearsal.mapping.merge_duplicates != "keep_one":
        _fail_on_merged_duplicates(merged, rolemig_rehearsal.mapping.source)
    if merged:
        users = len({m.user or m.key for m in merged})
        record_property("rolemig_note", f"merged duplicates: {len(merged)} role row(s) of {users} user(s) "
                        'deleted by the migration, restored by rollback (merge_duplicates = "keep_one")')
    wrong = before.role_mismatches(after, rolemig_rehearsal.mapping.mapping,
                                   merged=tuple(m.key for m in merged))
    if wrong.count:
        sample = "\n".join(f"{k}: {o} -> expected {e}, got {g}" for k, o, e, g in wrong.sample)
        raise RolemigAssertionError(
            f"{wrong.count} user(s) do not hold the mapped role after the migration",
            expected="role after migration == mapping[role before], for every user",
            sections={"Users (key: before -> expected, got)": sample,
                      "Counts": f"before {wrong.before_users}, after {wrong.after_users}"},
        )
    report = api.post_migration_checks(rolemig_rehearsal.conn, rolemig_rehearsal.results["backup"].backup_id)
    assert_checks_pass(_pick(report, ("every_user_has_new_role", "roles_match_mapping", "user_count_unchanged")),
                       "post-migration role checks failed")


def _fail_on_merged_duplicates(merged: list[Any], source: str) -> None:
    """Users who held two roles the mapping merges lost one role row: say who, and under which index."""
    indexes = sorted({m.message.split("unique index ", 1)[-1].split(";", 1)[0] for m in merged})
    users = sorted({m.user or m.key for m in merged})
    raise RolemigAssertionError(
        f"the mapping merges roles that {len(users)} user(s) hold both of: the migration deleted "
        f"{len(merged)} role row(s) that would have broken unique index {', '.join(indexes)}",
        expected="no user loses a role row, or the mapping acknowledges that merged roles keep one row",
        sections={"Unique constraint": "\n".join(indexes),
                  "Rows deleted (user: old role -> new role, row key)": "\n".join(
                      f"{m.user or '?'}: {m.old_role} -> {m.new_role}, row {m.key} ({m.message.split(':')[0]})"
                      for m in merged[:20]),
                  "What happens": "each such user keeps one row of the new role; rollback restores the "
                                  "deleted rows from the backup",
                  "Fix": f'accept it with merge_duplicates = "keep_one" at the top of {source}, '
                         "or map the roles apart"},
    )


def test_role_ranks_keep_their_order(rolemig_rehearsal: Rehearsal) -> None:
    """Where policies or functions compare enum roles by rank, the mapping keeps ranks apart and in order."""
    rolemig_rehearsal.run("backup")
    labels, comparisons = rolemig_rehearsal.rank_comparisons_before  # the policies as the app has them
    rank = {label: i for i, label in enumerate(labels)}
    mapping = {old: new for old, new in rolemig_rehearsal.mapping.mapping.items()
               if old in rank and new in rank}
    changed = [(a, b) for a in mapping for b in mapping
               if rank[a] < rank[b] and rank[mapping[a]] >= rank[mapping[b]]]
    if not comparisons or not changed:
        return
    raise RolemigAssertionError(
        f"the mapping merges or reorders ranks that {len(comparisons)} polic(ies)/function(s) compare: "
        + ", ".join(c.name for c in comparisons[:5]),
        expected=f"for legacy roles a < b (enum {comparisons[0].role_type}), mapping[a] < mapping[b]",
        sections={
            "Ranks changed (before -> after)": "\n".join(
                f"{a} < {b} -> {mapping[a]} {'=' if mapping[a] == mapping[b] else '>'} {mapping[b]}"
                for a, b in changed[:20]),
            "Comparing ranks (kind name: what)": "\n".join(f"{c.kind} {c.name}: {c.detail}"
                                                           for c in comparisons),
            "Enum order": " < ".join(labels),
            "Fix": "map the legacy roles onto new roles in the same order, or change these policies and "
                   "functions in your migration and declare the access changes in "
                   f"{rolemig_rehearsal.mapping.source}",
        },
    )


def test_no_policy_names_a_legacy_role(rolemig_rehearsal: Rehearsal) -> None:
    """After the migration, no RLS policy still names a legacy-only role."""
    rolemig_rehearsal.run("migrate")
    report = api.post_migration_checks(rolemig_rehearsal.conn, rolemig_rehearsal.results["backup"].backup_id)
    assert_checks_pass(_pick(report, ("no_legacy_roles_in_policies",)), "policies still name legacy roles")
    assert_checks_pass(api.rls_checks(rolemig_rehearsal.conn, "post"), "RLS policies do not match the new roles")


def test_every_user_still_authenticates_and_reaches_own_data(rolemig_rehearsal: Rehearsal, rolemig_config: Any) -> None:
    """As 'authenticated' with their JWT claims, users read their own profile and sessions.

    Every seeded user up to ``rolemig_login_sample`` (each login costs about half a
    millisecond); beyond it a random sample with at least one user of every role.
    """
    rolemig_rehearsal.run("migrate")
    sample = max(1, min(rolemig_config.users, rolemig_config.login_sample))
    assert_checks_pass(api.authentication_checks(rolemig_rehearsal.conn, sample),
                       "users are locked out after the migration")


def test_sessions_survive(rolemig_rehearsal: Rehearsal) -> None:
    """No session row is changed or lost by the migration: nobody is logged out."""
    rolemig_rehearsal.run("migrate")
    assert rolemig_rehearsal.before is not None and rolemig_rehearsal.after_migration is not None
    sessions = rolemig_rehearsal.before.compare_rows(rolemig_rehearsal.after_migration, "sessions")
    if not sessions.same:
        raise RolemigAssertionError(
            f"the migration touched sessions: {sessions.lost} lost, {sessions.changed} changed, "
            f"{sessions.added} added",
            expected="every session row identical before and after the migration",
            sections={"Sessions (key: before -> after)": "\n".join(
                f"{k}: {b or '(none)'} -> {a or '(none)'}" for k, b, a in sessions.sample)},
        )
    report = api.post_migration_checks(rolemig_rehearsal.conn, rolemig_rehearsal.results["backup"].backup_id)
    assert_checks_pass(_pick(report, ("sessions_intact",)), "sessions did not survive")


def test_rollback_restores_everything_exactly(rolemig_rehearsal: Rehearsal, record_property: Any) -> None:
    """Rollback returns profiles, sessions and policies to the backed-up content.

    Profile columns that a BEFORE UPDATE trigger of the application sets on every write (an
    ``updated_at``) change with the migration's and the rollback's writes: they are left out of
    the comparison, and the run's summary names them and their trigger.
    """
    result = rolemig_rehearsal.run("rollback")
    for column, trigger in rolemig_rehearsal.trigger_columns.items():
        record_property("rolemig_note", f"not compared: {rolemig_rehearsal.target.profiles_table}.{column}, "
                                        f"set by trigger {trigger} on every write of the row")
    backup_id = rolemig_rehearsal.results["backup"].backup_id
    assert_checks_pass(api.validate_rollback(rolemig_rehearsal.conn, backup_id, result.rollback_id),
                       "rollback is not exact")
    assert rolemig_rehearsal.before is not None and rolemig_rehearsal.after_rollback is not None
    diffs = rolemig_rehearsal.before.differences(rolemig_rehearsal.after_rollback)
    if diffs:
        raise RolemigAssertionError(
            "after rollback the data differs from before the migration",
            expected="every profile row, session row and policy equal to the pre-migration content "
                     "(compared directly, independent of the project's validation functions)",
            sections={"Differences": "\n".join(diffs)},
        )
