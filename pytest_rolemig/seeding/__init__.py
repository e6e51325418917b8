"""Seed users of every legacy role into the target tables, through ``COPY``.

Users come from the factories in :mod:`pytest_rolemig.seeding.factories`; the seeder
reads the target tables' columns from the catalog and writes each factory field
whose name matches a column, fills other required columns by type, and leaves
columns with defaults alone. If the profiles key references a parent table
(Supabase's ``auth.users``), the parent rows are written first.

Building a factory user costs about half a millisecond of Python, so only the
first :data:`FACTORY_USERS` are built that way; larger sets are completed by
PostgreSQL with one ``INSERT ... SELECT`` per table that copies those users
(profile, parent row, sessions) under new keys, with unique columns made unique.

Modules: :mod:`.users` (``seed_users``), :mod:`.catalog` (tables as the seeder reads them),
:mod:`.rows` (COPY rows), :mod:`.constraints` (rows the application accepts), :mod:`.copies`
(server-side copies), :mod:`.factories` (factory-boy), :mod:`.bulk` (millions of users for the
benchmarks, set-based).
"""

from pytest_rolemig.seeding.catalog import Column, SeedSummary, Table, parent_of, read_table, split_name
from pytest_rolemig.seeding.users import FACTORY_USERS, seed_users

__all__ = ["FACTORY_USERS", "Column", "SeedSummary", "Table", "parent_of", "read_table", "seed_users", "split_name"]
