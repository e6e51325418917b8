"""Seed users of every legacy role into the target tables (the entry point of the package)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import psycopg

from pytest_rolemig.errors import ConfigError
from pytest_rolemig.seeding.catalog import SeedSummary, parent_of, read_table
from pytest_rolemig.seeding.constraints import copy_fitting, creates_rows, write_role_rows
from pytest_rolemig.seeding.copies import copy_users, copyable
from pytest_rolemig.seeding.factories import build_session, build_user
from pytest_rolemig.seeding.rows import columns_for, copy_row, copy_rows, new_keys
from pytest_rolemig.target import Target

#: Users built by the factories; the rest of a larger set are server-side copies of them. Each
#: costs about half a millisecond of Python before any gate test can start; 500 already hold
#: every legacy role with every session count many times over.
FACTORY_USERS = 500


def seed_users(conn: psycopg.Connection[Any], target: Target, roles: list[str], count: int,
               max_sessions: int = 3, factory_users: int = FACTORY_USERS) -> SeedSummary:
    """Seed ``count`` users spread round-robin over ``roles``; user i gets ``i % (max_sessions+1)`` sessions.

    About ``factory_users`` come from the factories (rounded up to a multiple of the role
    count and of ``max_sessions + 1``, so copy i of factory user ``i % n`` has the role and
    the session count user i would have had); the rest are copies.
    """
    if not roles:
        raise ConfigError("no legacy roles to seed users for: the mapping and the schema name none")
    profiles = read_table(conn, target.profiles_table, "--rolemig-profiles-table / rolemig_profiles_table")
    for column, setting in ((target.key_column, "key_column"), (target.role_column, "role_column")):
        if column not in profiles.columns:
            raise ConfigError(
                f"column {column} does not exist in {profiles} (--rolemig-{setting.replace('_', '-')} "
                f"/ rolemig_{setting})"
            )
    sessions = (read_table(conn, target.sessions_table, "--rolemig-sessions-table / rolemig_sessions_table")
                if target.sessions_table is not None else None)  # None: no sessions table, no sessions seeded
    if sessions is not None and target.sessions_user_column not in sessions.columns:
        raise ConfigError(
            f"column {target.sessions_user_column} does not exist in {sessions} "
            "(--rolemig-sessions-user-column / rolemig_sessions_user_column)"
        )
    if target.user not in profiles.columns:
        raise ConfigError(f"column {target.user} does not exist in {profiles} "
                          "(--rolemig-user-column / rolemig_user_column)")
    # a roles table (one row per user and role) names the user in its own column; its rows
    # have keys of their own, and the user's parent row is found through that column
    multi = target.user != target.key_column
    parent = parent_of(conn, profiles, target.user)
    cycle = math.lcm(len(roles), max_sessions + 1)  # a copy keeps its source's role and session count
    built = min(count, cycle * max(1, -(-factory_users // cycle)))
    copies = (built < count and not multi and copyable(conn, profiles, sessions, parent, target)
                and not (parent is not None and creates_rows(conn, parent[0], profiles)))
    keys = new_keys(conn, parent[0] if parent else profiles, parent[1] if parent else target.user,
                       built if copies else count)

    users = []
    for i, (key, role) in enumerate(zip(keys, itertools.cycle(roles))):
        user = build_user(role=role)
        user["id"] = key
        user[target.user] = key
        user[target.role_column] = role
        users.append((i, user))
    per_role: dict[str, int] = {}
    for _, user in users:
        per_role[user[target.role_column]] = per_role.get(user[target.role_column], 0) + 1
    if not users:
        return SeedSummary(0, 0, per_role)

    sample = users[0][1]
    if parent is not None:
        parent_table, parent_key = parent
        # the app role is the profiles table's: a parent column of the same name (Supabase's
        # auth.users.role holds the API role) keeps its default
        app_only = {target.role_column}
        cols = columns_for(parent_table, {k: v for k, v in sample.items() if k not in app_only}, {parent_key})
        copy_fitting(conn, parent_table, cols, [{**u, parent_key: u["id"]} for _, u in users], {parent_key})
    write_role_rows(conn, target, profiles, [u for _, u in users], roles if multi else [])

    session_rows = [
        {**build_session(user_id=u["id"]), target.sessions_user_column: u["id"]}
        for i, u in users
        for _ in range(i % (max_sessions + 1))
    ] if sessions is not None else []
    written = 0
    if session_rows and sessions is not None:
        cols = columns_for(sessions, session_rows[0], {target.sessions_user_column})
        written = copy_rows(conn, sessions, cols, (copy_row(sessions, cols, s) for s in session_rows))
    copied_users = 0
    if copies:
        copied_users, copied_sessions = copy_users(conn, target, profiles, sessions, parent,
                                                    [u["id"] for _, u in users], count)
        written += copied_sessions
        for i in range(len(users), len(users) + copied_users):
            per_role[roles[i % len(roles)]] = per_role.get(roles[i % len(roles)], 0) + 1
    return SeedSummary(users=len(users) + copied_users, sessions=written, per_role=per_role)
