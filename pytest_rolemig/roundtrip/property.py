"""The round trip backup -> migrate -> rollback as a property, reusable on any target schema.

One :class:`RoundTrip` runs one example inside one transaction that is always
rolled back: load a generated user set, dump the tables, back up, let the
application change some rows, migrate, roll back, dump again, compare. The
infrastructure's functions run inside the caller's transaction, so an example
costs no database copy, and the next example starts from the same empty tables.

The comparison uses a :class:`Dump` read here, column by column as text
(``col::text``), with the policies and constraints from the catalog; it shares
no code with the backup (``to_jsonb``) or the validation functions, so a bug
they share cannot hide. The project's own ``validate_rollback_success`` is
checked as well. :func:`run_property` runs the property with Hypothesis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from pytest_rolemig import api
from pytest_rolemig.assertions import RolemigAssertionError
from pytest_rolemig.background import Background
from pytest_rolemig.errors import ConfigError
from pytest_rolemig.mapping import RoleMapping
from pytest_rolemig.roundtrip.dump import Dump, apply_edits, load, take_dump, update_row
from pytest_rolemig.roundtrip.shapes import (
    Edges,
    GeneratedUser,
    UserSet,
    UsersShape,
    empty_users,
    read_shape,
    read_table_shape,
)
from pytest_rolemig.roundtrip.strategies import user_sets
from pytest_rolemig.target import Target

MODES = ("revert", "emergency")

#: Edge values the infrastructure is known to lose, each with the reason (reported, and shown failing
#: by a strict xfail test in tests/test_roundtrip_property.py). The round trip leaves them out until
#: they are fixed: delete an entry here and the property covers it again. None at present (the JSON
#: null and json text of emergency rollback were fixed by the backup's ``json_text``).
KNOWN_BUGS: dict[str, str] = {}
DEFAULT_EDGES = Edges(**{name: False for name in KNOWN_BUGS})


# --------------------------------------------------------------- property ---


class RoundTripError(RolemigAssertionError):
    """The round trip did not give the data back; the message lists the differences and the users."""


def describe_users(users: UserSet, limit: int = 20) -> str:
    """The user set as the failure report shows it: one user per line."""
    lines = [repr(u) for u in users.users[:limit]]
    if len(users) > limit:
        lines.append(f"... and {len(users) - limit} more")
    return "\n".join(lines) or "(no users)"


@dataclass
class Outcome:
    """What one example did (counts only; the data was rolled back)."""

    users: int
    sessions: int
    edits: int
    backup_id: str
    rollback_id: str
    mode: str
    digest: str


class RoundTrip:
    """Runs the round trip on one connection, one example per transaction, always rolled back.

    ``strict`` (the default) lets a row the database refuses fail the example;
    without it such an example is rejected (for schemas with constraints the
    generator does not know). ``setup_sql`` runs at the start of every example,
    inside its transaction (e.g. to install a deliberately broken function).
    """

    def __init__(self, conn: Any, shape: UsersShape, mapping: RoleMapping, target: Target, *,
                 batch_size: int | None = 3, strict: bool = True, setup_sql: str | None = None,
                 project_validation: bool = True) -> None:
        if not conn.autocommit:
            raise ConfigError("the round trip needs an autocommit connection (it opens its own transactions)")
        self.conn, self.shape, self.mapping, self.target = conn, shape, mapping, target
        self.batch_size, self.strict, self.setup_sql = batch_size, strict, setup_sql
        self.project_validation = project_validation
        self.examples = 0
        self.trigger_columns: dict[str, str] = {}  # set per example, after its setup
        self.stopping = False  # set when the run ends: the next example is not started

    @property
    def roles(self) -> list[str]:
        """Legacy roles users are drawn from (the mapping's, in its order)."""
        return list(self.mapping.mapping)

    def strategy(self, **kwargs: Any) -> st.SearchStrategy[UserSet]:
        """:func:`~pytest_rolemig.roundtrip.strategies.user_sets` for this target's tables and roles.

        Edge values listed in :data:`KNOWN_BUGS` are left out unless ``edges`` says otherwise.
        """
        kwargs.setdefault("edges", DEFAULT_EDGES)
        return user_sets(self.shape, self.roles, **kwargs)

    def dump(self) -> Dump:
        """The independent dump of the target tables and policies, now.

        Without the profile columns a BEFORE UPDATE trigger of the application sets (an
        ``updated_at``): the migration and the rollback write the row, so they change.
        """
        return take_dump(self.conn, self.shape, self.target.policy_schemas).without(self.trigger_columns)

    @contextmanager
    def example(self) -> Iterator[Any]:
        """A transaction that is always rolled back: the state every example starts from."""
        with self.conn.transaction(force_rollback=True):
            if self.setup_sql:
                self.conn.execute(self.setup_sql)
            yield self.conn

    def load(self, users: UserSet) -> None:
        """Load ``users`` in a savepoint; outside ``strict``, a refused row rejects the example."""
        try:
            with self.conn.transaction():
                load(self.conn, users)
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            if self.strict:
                raise
            reject()

    def fail(self, title: str, users: UserSet, mode: str, diffs: Sequence[str], **more: str) -> RoundTripError:
        """The error raised when the round trip breaks its promise."""
        return RoundTripError(
            title,
            expected=("backup -> migrate -> rollback gives every profile row, policy and constraint back "
                      + ("exactly as backed up (emergency rollback restores every profile column)"
                         if mode == "emergency" else "as before the migration (revert undoes only the migration)")
                      + "; session rows stay as the application left them"),
            sections={"Differences (from the independent dump)": "\n".join(diffs) or "(none)", **more,
                      f"Users ({len(users)}, {users.session_count} sessions)": describe_users(users)},
        )

    def check(self, users: UserSet, mode: str = "revert") -> Outcome:
        """One example: load, back up, edit, migrate, roll back (``mode``), compare; rolled back after."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if self.stopping:  # not a failure: Hypothesis lets it through without shrinking
            raise KeyboardInterrupt("the test run is ending")
        with self.example():
            self.load(users)
            self.trigger_columns = api.trigger_written_columns(self.conn)
            loaded = self.dump()
            if len(loaded.profiles) != len(users) or len(loaded.sessions) != users.session_count:
                raise self.fail("the generated users did not load as generated", users, mode,
                                [f"{len(loaded.profiles)} profiles, {len(loaded.sessions)} sessions loaded"])
            backup = api.backup(self.conn, "roundtrip")
            edits = apply_edits(self.conn, users)
            before = self.dump() if edits else loaded
            migration = api.migrate(self.conn, backup_id=backup.backup_id, batch_size=self.batch_size)
            migrated = self.dump()
            self._check_migrated(users, mode, before, migrated, migration)
            rollback = api.rollback(self.conn, backup.backup_id, "roundtrip property",
                                    emergency=(mode == "emergency"))
            after = self.dump()
            # emergency: every profile column as backed up; revert: only the migration undone.
            # Either way sessions stay as the application left them (no rollback writes sessions).
            expected = replace(loaded, sessions=before.sessions) if mode == "emergency" else before
            diffs = expected.differences(after)
            if diffs:
                raise self.fail(f"{mode} rollback did not restore the data ({len(diffs)} difference(s))",
                                users, mode, diffs)
            if self.project_validation:
                report = api.validate_rollback(self.conn, backup.backup_id, rollback.rollback_id)
                if report.failures:
                    raise self.fail("validate_rollback_success disagrees with the independent dump",
                                    users, mode, [], **{"Checks": report.render(only_problems=True)})
            self.examples += 1
            return Outcome(len(users), users.session_count, edits, backup.backup_id, rollback.rollback_id,
                           mode, after.digest())

    def _check_migrated(self, users: UserSet, mode: str, before: Dump, migrated: Dump,
                        migration: api.MigrationResult) -> None:
        """After the migration: every user on mapping[role], every other column and session untouched."""
        problems = []
        if migration.status != "completed":
            problems.append(f"migration status {migration.status!r}: {migration.error}")
        role = self.shape.role_column
        want = {users.key(u): self.mapping.mapping[users.role(u)] for u in users.users}
        got = migrated.roles(role)
        for key in sorted(set(want) | set(got)):
            if got.get(key) != want.get(key):
                problems.append(f"user {key}: role {got.get(key)!r}, mapping says {want.get(key)!r}")
        for key, row in before.profiles.items():
            other = migrated.profiles.get(key)
            changed = [f"{c} ({x!r} -> {y!r})" for c, x, y in zip(before.profile_columns, row, other or row,
                                                                 strict=True) if x != y and c != role]
            if changed:
                problems.append(f"user {key}: the migration changed {', '.join(changed)}, not only {role}")
        if before.sessions != migrated.sessions:
            problems.append("the migration changed session rows")
        if problems:
            raise self.fail("the migration did not do what the mapping says", users, mode, problems[:30])


@contextmanager
def scratch_roundtrip(server: Any, template: str, target: Target, mapping: RoleMapping,
                      prefix: str = "rolemig_roundtrip", **options: Any) -> Iterator[RoundTrip]:
    """A :class:`RoundTrip` on a fresh copy of ``template`` with its users removed; dropped after."""
    from pytest_rolemig.db.templates import clone

    with clone(server, template, prefix) as conn:
        shape = read_shape(conn, target)
        empty_users(conn, shape)
        yield RoundTrip(conn, shape, mapping, target, **options)


def property_settings(max_examples: int, **overrides: Any) -> settings:
    """Settings for database examples: no deadline, slow data generation allowed, no explain phase.

    The explain phase re-runs the failing example many times to comment on it; with a
    database round trip per run it costs more than the shrinking, and the report prints
    the minimal user set without it.
    """
    overrides.setdefault("phases", [p for p in Phase if p is not Phase.explain])
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example],
                    **overrides)


def run_property(roundtrip: RoundTrip, *, max_examples: int = 25, modes: Sequence[str] = MODES,
                 users: st.SearchStrategy[UserSet] | None = None, **settings_overrides: Any) -> None:
    """Run the round trip property with Hypothesis; a failure shrinks to a minimal user set."""
    strategy = users if users is not None else roundtrip.strategy()

    @property_settings(max_examples, **settings_overrides)
    @given(users=strategy, mode=st.sampled_from(list(modes)))
    def roundtrip_property(users: UserSet, mode: str) -> None:
        roundtrip.check(users, mode)

    roundtrip_property()


class PropertyRuns:
    """The property once per rollback mode, one mode after the other, in a background thread.

    The gate's round-trip tests each report one mode: they wait for it here and get how many
    examples ran and what the property raised (a falsifying example keeps Hypothesis' notes).
    """

    def __init__(self, roundtrip: RoundTrip, max_examples: int, modes: Sequence[str] = MODES) -> None:
        self.roundtrip, self.max_examples, self.modes = roundtrip, max_examples, tuple(modes)
        self.outcomes: dict[str, tuple[int, BaseException | None]] = {}
        self.work = Background("rolemig-roundtrip", self._run_all)

    def _run_all(self) -> None:
        for mode in self.modes:
            before = self.roundtrip.examples
            error: BaseException | None = None
            try:
                run_property(self.roundtrip, max_examples=self.max_examples, modes=(mode,))
            except Exception as exc:
                error = exc
            self.outcomes[mode] = (self.roundtrip.examples - before, error)

    def outcome(self, mode: str) -> tuple[int, BaseException | None]:
        """Examples that ran in ``mode`` and the error the property raised (None: it held)."""
        self.work.result()
        return self.outcomes[mode]

    def stop(self) -> None:
        """Start no further example and wait for the one running (the run is ending)."""
        self.roundtrip.stopping = True
        self.work.wait()


__all__ = ["DEFAULT_EDGES", "Dump", "KNOWN_BUGS", "MODES", "Outcome", "PropertyRuns", "RoundTrip", "RoundTripError",
           "apply_edits", "describe_users", "empty_users", "load", "property_settings", "read_shape",
           "read_table_shape", "run_property", "scratch_roundtrip", "take_dump", "update_row", "GeneratedUser"]
