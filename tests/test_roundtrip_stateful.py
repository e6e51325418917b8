"""The round trip as a state machine: any order of backups, partial and full migrations, both
rollbacks, a failed batch and the application's own writes, with invariants after every step.

Each run of the machine is one transaction on a scratch copy of the template (users removed),
rolled back in ``teardown``. Rules compare the independent dump of
:mod:`pytest_rolemig.roundtrip` with what the contract (docs/sql-api.md) promises:

- revert rollback: compare-and-swap on the role column only (a user whose role is the mapping of
  the backed-up role gets the backed-up role back; any other changed role is a conflict, left
  alone and counted); policies and constraints as backed up; everything else as it was;
- emergency rollback: every profile column, policy and constraint exactly as backed up;
- neither writes sessions; a failed batch changes no row and leaves a failed batch row.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace

import pytest
from hypothesis import note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import sql
from test_roundtrip_property import FORGETS_A_COLUMN, FORGETS_A_ROLE

from pytest_rolemig import api
from pytest_rolemig.roundtrip import DEFAULT_EDGES, Dump, RoundTrip, property_settings, scratch_roundtrip, update_row
from pytest_rolemig.strategies import GeneratedUser, UserSet, changes

EXAMPLES = int(os.environ.get("ROLEMIG_STATEFUL_EXAMPLES", "40"))

# Known bugs (reported; each shown by a strict xfail test at the end).
#
# 1. discover_legacy_roles: discover_legacy_roles takes the
# role CHECK of the *newest* backup as the original one, so after a backup taken mid- or
# post-migration (widened / narrowed CHECK naming new roles) a new role counts as an unmapped
# legacy role: the migration refuses to resume and mapping_total fails. The machine tolerates
# exactly that refusal, only in that state, and checks it changed nothing.
#
# 2. A rollback logs a 'rolled_back' row only for users with a 'migrated' row logged after the
# backup it restores; a role it changes for another reason (restoring a later backup after an
# earlier one was restored) is not logged, so migration_log's latest entry no longer agrees with
# the data. The log invariant tolerates exactly that: a disagreeing entry older than a rollback.
BACKUP_AFTER_MIGRATION_BUG = "unmapped legacy roles"
STEPS = int(os.environ.get("ROLEMIG_STATEFUL_STEPS", "15"))


def _without_not_valid(constraints):
    return {k: v.removesuffix(" NOT VALID") for k, v in constraints.items()}


def make_machine(rt: RoundTrip, setup_sql: str | None = None):
    """A state machine class bound to ``rt`` (its connection, tables and mapping)."""
    mapping = rt.mapping.mapping
    new_roles = set(rt.mapping.new_roles)
    shape = rt.shape
    prof, sess = shape.profiles, shape.sessions
    role_col = shape.role_column
    unique = [c.name for c in prof.columns if c.unique]
    profile_change = changes(prof, exclude=(prof.key, role_col, *unique), edges=DEFAULT_EDGES).filter(bool)
    session_change = changes(sess, exclude=(sess.key, shape.session_user_column),
                             edges=DEFAULT_EDGES).filter(bool)
    roles_query = sql.SQL("SELECT {k}::text, {r}::text FROM {t}").format(
        k=sql.Identifier(prof.key), r=sql.Identifier(role_col), t=sql.Identifier(prof.schema, prof.name))

    class RoundTripMachine(RuleBasedStateMachine):
        backups = Bundle("backups")

        def __init__(self) -> None:
            super().__init__()
            self.conn = rt.conn
            self.transaction = rt.conn.transaction(force_rollback=True)
            self.transaction.__enter__()
            if setup_sql:
                self.conn.execute(setup_sql)
            self.legacy: dict[str, str] = {}
            self.snapshots: dict[str, tuple[Dump, str]] = {}
            self.phase = "legacy"  # legacy | mixed | new

        def teardown(self) -> None:
            self.transaction.__exit__(None, None, None)

        # ------------------------------------------------------------ helpers
        def roles(self) -> dict[str, str | None]:
            return dict(self.conn.execute(roles_query).fetchall())

        def pending(self) -> list[str]:
            """Users still on a legacy role that the migration changes."""
            return sorted(k for k, r in self.roles().items() if r in mapping and mapping[r] != r)

        def known_bug_applies(self) -> bool:
            """The newest completed backup's role CHECK names a new role that is not a legacy one."""
            row = self.conn.execute(
                "SELECT target -> 'role_checks' FROM migration_backup.backup_log WHERE status = 'completed' "
                "ORDER BY created_at DESC, backup_id DESC LIMIT 1").fetchone()
            text = str(row[0]) if row else ""
            return any(f"'{r}'" in text for r in new_roles - set(mapping))

        def migrate(self, **options) -> api.MigrationResult | None:
            """``api.migrate`` in a savepoint; None when it refused because of the known bug."""
            before = rt.dump()
            try:
                with self.conn.transaction():  # a refusal (raise) rolls back to here only
                    try:
                        return api.migrate(self.conn, **options)
                    except api.OperationFailed as failed:  # status 'failed': its batch row must stay
                        reported = failed
                raise reported
            except api.OperationFailed:
                raise
            except Exception as exc:
                if BACKUP_AFTER_MIGRATION_BUG in str(exc) and self.known_bug_applies():
                    note("known bug: migration refused after a backup whose CHECK names new roles")
                    self.assert_same(before, rt.dump(), "a refused migration changed data")
                    return None
                raise

        def assert_same(self, expected: Dump, after: Dump, what: str) -> None:
            diffs = expected.differences(after)
            assert not diffs, f"{what}:\n  " + "\n  ".join(diffs)

        def check_migration_step(self, before: Dump, after: Dump, limit: int | None) -> None:
            """Changed users went from a legacy role to its mapping; nothing else changed."""
            old, new = before.roles(role_col), after.roles(role_col)
            changed = sorted(k for k in old if old[k] != new.get(k))
            for key in changed:
                assert old[key] in mapping and new[key] == mapping[old[key]], (
                    f"user {key} went from {old[key]!r} to {new[key]!r}; the mapping says "
                    f"{mapping.get(old[key])!r}")
            if limit is not None:
                assert len(changed) <= limit, f"one batch of {limit} changed {len(changed)} users"
            self.assert_same(replace(before, profiles=after.profiles, policies=after.policies,
                                     constraints=after.constraints), after, "the migration changed sessions")
            i = before.profile_columns.index(role_col)
            for key, row in before.profiles.items():
                assert row[:i] + row[i + 1:] == after.profiles[key][:i] + after.profiles[key][i + 1:], (
                    f"the migration changed columns other than {role_col} of user {key}")

        # -------------------------------------------------------------- rules
        @initialize(users=rt.strategy(min_users=1, max_users=6, max_sessions=3, edits=False))
        def load_users(self, users) -> None:
            rt.load(users)
            self.legacy = {users.key(u): users.role(u) for u in users.users}

        @rule(target=backups)
        def backup(self) -> str:
            result = api.backup(self.conn, "stateful")
            self.snapshots[result.backup_id] = (rt.dump(), self.phase)
            return result.backup_id

        @precondition(lambda self: self.snapshots)
        @rule(batch_size=st.integers(min_value=1, max_value=3))
        def migrate_one_batch(self, batch_size: int) -> None:
            before = rt.dump()
            result = self.migrate(batch_size=batch_size, max_batches=1)
            if result is None:
                return
            assert result.status in ("partial", "completed"), result
            self.check_migration_step(before, rt.dump(), batch_size)
            self.phase = "new" if result.status == "completed" else "mixed"

        @precondition(lambda self: self.snapshots)
        @rule(batch_size=st.integers(min_value=1, max_value=5))
        def migrate_all(self, batch_size: int) -> None:
            before = rt.dump()
            result = self.migrate(batch_size=batch_size)
            if result is None:
                return
            assert result.status == "completed", result
            self.check_migration_step(before, rt.dump(), None)
            self.phase = "new"

        @precondition(lambda self: self.snapshots and self.pending())
        @rule(data=st.data())
        def failed_batch(self, data: st.DataObject) -> None:
            victim = data.draw(st.sampled_from(self.pending()), label="victim")
            before = rt.dump()
            self.conn.execute(
                "CREATE FUNCTION public.rolemig_injected_failure() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure for user %', OLD; END $$")
            self.conn.execute(sql.SQL(
                "CREATE TRIGGER rolemig_injected_failure BEFORE UPDATE ON {t} FOR EACH ROW "
                "WHEN (OLD.{k}::text = {v}) EXECUTE FUNCTION public.rolemig_injected_failure()").format(
                t=sql.Identifier(prof.schema, prof.name), k=sql.Identifier(prof.key), v=sql.Literal(victim)))
            failed = "SELECT count(*) FROM migration_tracking.migration_batch WHERE status = 'failed'"
            failed_before = self.conn.execute(failed).fetchone()[0]
            try:
                try:
                    result = self.migrate(batch_size=1000)
                except api.OperationFailed as exc:
                    assert "injected failure" in str(exc), exc
                else:
                    if result is None:
                        return  # refused before any batch (known bug): nothing ran, nothing changed
                    raise AssertionError(f"the migration did not report the failed batch: {result}")
            finally:
                self.conn.execute(sql.SQL("DROP TRIGGER rolemig_injected_failure ON {}").format(
                    sql.Identifier(prof.schema, prof.name)))
                self.conn.execute("DROP FUNCTION public.rolemig_injected_failure()")
            after = rt.dump()
            # no row changed (the CHECK constraint may have been widened: that step succeeded)
            self.assert_same(replace(before, constraints=after.constraints), after, "a failed batch changed data")
            assert self.conn.execute(failed).fetchone()[0] == failed_before + 1, "no failed batch row"
            error = self.conn.execute(
                "SELECT error FROM migration_tracking.migration_batch WHERE status = 'failed' "
                "ORDER BY started_at DESC LIMIT 1").fetchone()[0]
            assert "injected failure" in error

        @rule()
        def validate(self) -> None:
            roles = self.roles()
            pre = api.pre_migration_checks(self.conn)
            for name in ("no_null_roles", "mapping_targets_valid") + (() if self.known_bug_applies()
                                                                      else ("mapping_total",)):
                assert pre.get(name).status == "pass", pre.render(only_problems=True)
            # users already on new roles are known (a warning says so), never unknown
            assert pre.get("all_roles_known").status in ("pass", "warn"), pre.render(only_problems=True)
            assert pre.get("all_roles_known").details.get("unknown_roles") in ({}, None), pre.render()
            post = api.post_migration_checks(self.conn)
            want = "pass" if all(r in new_roles for r in roles.values()) else "fail"
            assert post.get("every_user_has_new_role").status == want, post.render()

        @rule(backup=backups)
        def rollback(self, backup: str) -> None:
            snap, phase = self.snapshots[backup]
            current = rt.dump()
            with self.conn.transaction():
                result = api.rollback(self.conn, backup, "stateful")
            after = rt.dump()
            named = self.conn.execute("SELECT backup_id FROM migration_backup.rollback_log WHERE rollback_id = %s",
                                      (result.rollback_id,)).fetchone()[0]
            assert named == backup
            # compare-and-swap on the role column, from the snapshot taken when the backup was made
            want, conflicts = dict(current.profiles), 0
            i = current.profile_columns.index(role_col)
            for key, row in snap.profiles.items():
                was, now = row[i], current.profiles[key][i]
                if now != was and now == mapping.get(was):
                    want[key] = want[key][:i] + (was,) + want[key][i + 1:]
                elif now != was:
                    conflicts += 1
            expected = replace(snap, profiles=want, sessions=current.sessions)
            if conflicts:  # a restored CHECK the conflicting rows violate is added NOT VALID
                expected = replace(expected, constraints=_without_not_valid(expected.constraints))
                after = replace(after, constraints=_without_not_valid(after.constraints))
            self.assert_same(expected, after, f"revert rollback of {backup} did not restore it")
            assert result.conflicts == conflicts, f"{result.conflicts} conflicts reported, {conflicts} expected"
            self.phase = phase if not conflicts else "mixed"

        @rule(backup=backups)
        def emergency_rollback(self, backup: str) -> None:
            snap, phase = self.snapshots[backup]
            current = rt.dump()
            with self.conn.transaction():
                result = api.rollback(self.conn, backup, emergency=True)
            named = self.conn.execute("SELECT backup_id FROM migration_backup.rollback_log WHERE rollback_id = %s",
                                      (result.rollback_id,)).fetchone()[0]
            assert named == backup
            self.assert_same(replace(snap, sessions=current.sessions), rt.dump(),
                             f"emergency rollback of {backup} did not restore it")
            self.phase = phase

        @rule(data=st.data())
        def application_edits_a_profile(self, data: st.DataObject) -> None:
            key = data.draw(st.sampled_from(sorted(self.legacy)), label="user")
            update_row(self.conn, prof, key, data.draw(profile_change, label="change"))

        @precondition(lambda self: self.conn.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(sess.schema, sess.name))).fetchone()[0])
        @rule(data=st.data())
        def application_touches_a_session(self, data: st.DataObject) -> None:
            keys = sorted(rt.dump().sessions)
            key = data.draw(st.sampled_from(keys), label="session")
            update_row(self.conn, sess, key, data.draw(session_change, label="change"))

        # --------------------------------------------------------- invariants
        @invariant()
        def every_user_has_a_role_valid_for_the_phase(self) -> None:
            roles = self.roles()
            assert set(roles) == set(self.legacy), "users appeared or disappeared"
            assert all(r is not None for r in roles.values()), "a user has no role"
            for key, role in roles.items():
                allowed = {"legacy": {self.legacy[key]}, "new": {mapping[self.legacy[key]]},
                           "mixed": {self.legacy[key], mapping[self.legacy[key]]}}[self.phase]
                assert role in allowed, f"user {key} has role {role!r} in phase {self.phase}; allowed {allowed}"

        @invariant()
        def logs_agree_with_the_data(self) -> None:
            roles = self.roles()
            latest = {r[0]: r[1:] for r in self.conn.execute(
                "SELECT DISTINCT ON (l.user_key) l.user_key, l.new_role, l.logged_at < (SELECT max(r.completed_at) "
                "       FROM migration_backup.rollback_log r WHERE r.status = 'completed') "
                "FROM migration_tracking.migration_log l "
                "WHERE l.status IN ('migrated', 'unchanged', 'rolled_back') ORDER BY l.user_key, l.log_id DESC")}
            for key, role in roles.items():
                logged, before_a_rollback = latest.get(key, (self.legacy.get(key), False))
                if logged != role and before_a_rollback:
                    note(f"known bug: a rollback changed user {key} to {role!r} without a migration_log entry")
                    continue

                assert logged == role, (f"user {key} holds {role!r} but the latest migration_log entry says "
                                        f"{logged!r}" if key in latest else
                                        f"user {key} holds {role!r} without any migration_log entry")

        @invariant()
        def no_batch_is_left_running(self) -> None:
            running = self.conn.execute(
                "SELECT count(*) FROM migration_tracking.migration_batch WHERE status = 'running'").fetchone()[0]
            assert running == 0

    return RoundTripMachine


@pytest.fixture(scope="module")
def roundtrip(rolemig_server, rolemig_template, rolemig_config, rolemig_mapping):
    with scratch_roundtrip(rolemig_server, rolemig_template.name, rolemig_config.target, rolemig_mapping,
                           prefix="rolemig_hyp_sm") as rt:
        yield rt


def _settings(examples: int, **overrides):
    return property_settings(examples, stateful_step_count=STEPS, **overrides)


def test_any_sequence_of_migration_steps_keeps_the_promises(roundtrip):
    run_state_machine_as_test(make_machine(roundtrip), settings=_settings(EXAMPLES))


def _steps(exc: BaseException) -> str:
    return "\n".join(getattr(exc, "__notes__", []))


def test_machine_fails_and_shrinks_on_a_rollback_that_forgets_a_role(roundtrip):
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(make_machine(roundtrip, FORGETS_A_ROLE),
                                  settings=_settings(200, database=None))
    steps = _steps(failure.value)
    assert "revert rollback of bk_" in str(failure.value)
    assert "column role: expected 'support_agent', got 'moderator'" in str(failure.value)
    # shrunk to: one support_agent user, a backup, a migration, the rollback
    assert steps.count("GeneratedUser(") == 1 and "'role': 'support_agent'" in steps
    assert "state.rollback(backup=" in steps and "state.emergency_rollback" not in steps


def test_machine_fails_and_shrinks_on_an_emergency_rollback_that_forgets_a_column(roundtrip):
    with pytest.raises(AssertionError) as failure:
        run_state_machine_as_test(make_machine(roundtrip, FORGETS_A_COLUMN),
                                  settings=_settings(200, database=None))
    steps = _steps(failure.value)
    assert "emergency rollback of bk_" in str(failure.value)
    assert "column display_name: expected" in str(failure.value)
    # shrunk to: one user, a backup, the application renaming them, the emergency rollback
    assert steps.count("GeneratedUser(") == 1
    assert "state.application_edits_a_profile(" in steps and "state.emergency_rollback(backup=" in steps
    assert "state.migrate" not in steps


@pytest.mark.xfail(strict=True, reason="known bug: " + BACKUP_AFTER_MIGRATION_BUG + " after a backup taken "
                   "mid-migration (discover_legacy_roles reads the newest backup's CHECK as the original)")
def test_known_bug_migration_resumes_after_a_backup_taken_mid_migration(roundtrip):
    machine = make_machine(roundtrip)()
    try:
        users = UserSet(tuple(
            GeneratedUser(profile={"id": str(uuid.UUID(int=i)), "role": role, "email": f"u{i}@example.com"})
            for i, role in enumerate(("super_admin", "org_owner", "viewer"), 1)), roundtrip.shape)
        machine.load_users(users)
        machine.backup()
        api.migrate(machine.conn, batch_size=1, max_batches=1)
        machine.backup()  # mid-migration: the CHECK is widened to legacy + new roles
        with machine.conn.transaction():
            result = api.migrate(machine.conn, batch_size=1)
        assert result.status == "completed"
    finally:
        machine.teardown()


@pytest.mark.xfail(strict=True, reason="known bug: a rollback that changes a role without a migrated row "
                   "after its backup logs nothing, so migration_log disagrees with the data")
def test_known_bug_restoring_a_later_backup_after_an_earlier_one_is_logged(roundtrip):
    machine = make_machine(roundtrip)()
    try:
        users = UserSet((GeneratedUser(profile={"id": str(uuid.UUID(int=1)), "role": "super_admin",
                                                "email": "u@example.com"}),), roundtrip.shape)
        machine.load_users(users)
        before_migration = machine.backup()
        api.migrate(machine.conn)
        after_migration = machine.backup()
        api.rollback(machine.conn, before_migration, emergency=True)
        api.rollback(machine.conn, after_migration, emergency=True)
        latest = machine.conn.execute("SELECT new_role FROM migration_tracking.migration_log "
                                      "ORDER BY log_id DESC LIMIT 1").fetchone()[0]
        assert machine.roles() == {str(uuid.UUID(int=1)): "owner"}
        assert latest == "owner"
    finally:
        machine.teardown()
