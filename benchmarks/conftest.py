"""Benchmark fixtures: prepared databases per user count, a fresh clone per round, the ratio report.

Run with ``pytest benchmarks`` (the suite's ``testpaths`` is ``tests``, so the
main suite never runs these). For each size the demo template is copied and
bulk-seeded once (``INSERT ... SELECT generate_series``), then kept in three
states, each a template database: seeded, backed up, migrated. Only the seeded
state is analysed (a production database has statistics on its own tables); the
later states are as the step left them, as an operator who rolls back right after
a migration meets them (a plan that relied on fresh statistics of the log hid a
2.6 s rollback at 10,000 users behind a VACUUM ANALYZE here). A timed round
gets its own copy of the state it starts from (``CREATE DATABASE ... TEMPLATE``,
not timed), so project and baseline run on identical data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bench_report import Results, label

from pytest_rolemig import api
from pytest_rolemig.db.templates import create_database, drop_database, unique_name
from pytest_rolemig.seeding.bulk import bulk_seed_users

_RESULTS = pytest.StashKey[Results]()
DEFAULT_SIZES = (10_000, 100_000)
MILLION = 1_000_000


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--rolemig-bench-million`` adds the 1,000,000-user size; ``--rolemig-bench-sizes`` replaces the list."""
    group = parser.getgroup("rolemig-bench")
    group.addoption("--rolemig-bench-million", action="store_true", default=False,
                    help="also benchmark 1,000,000 users (about 1.5 GB per prepared state, minutes per step)")
    group.addoption("--rolemig-bench-sizes", default=None,
                    help="comma-separated user counts instead of 10000,100000 (e.g. 2000 for a smoke run)")


def sizes(config: pytest.Config) -> list[int]:
    """The user counts this run benchmarks."""
    given = config.getoption("rolemig_bench_sizes")
    chosen = [int(s) for s in given.split(",")] if given is not None else list(DEFAULT_SIZES)
    if config.getoption("rolemig_bench_million") and MILLION not in chosen:
        chosen.append(MILLION)
    return chosen


def pytest_configure(config: pytest.Config) -> None:
    """One results store per run."""
    config.stash[_RESULTS] = Results()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The gate's wall time first: its target holds on a quiet machine, and later the run's own
    prepared databases keep the server busy (autovacuum of a migrated 1,000,000-user copy)."""
    items.sort(key=lambda item: item.name != "test_gate_wall_time")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test asking for ``bench_size`` runs once per size (session-scoped: states are built once)."""
    if "bench_size" in metafunc.fixturenames:
        metafunc.parametrize("bench_size", sizes(metafunc.config), scope="session", ids=label)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the ratios (and seeding, clone, gate and memory figures) at the end of the run."""
    results = config.stash[_RESULTS]
    lines = results.lines()
    if lines:
        terminalreporter.section("rolemig: project vs bare SQL")
        for line in lines:
            terminalreporter.write_line(line)
        written = results.write(Path(__file__).parent / "results", datetime.now(timezone.utc))
        terminalreporter.write_line(f"written: {', '.join(str(p) for p in written[:2])} (and latest.*)")


@pytest.fixture(scope="session")
def results(pytestconfig: pytest.Config) -> Results:
    """The run's results store (printed at the end)."""
    return pytestconfig.stash[_RESULTS]


@dataclass
class Prepared:
    """The template databases for one size, and what building them cost."""

    size: int
    seeded: str
    backed_up: str
    migrated: str
    backup_id: str


def rounds_for(size: int) -> int:
    """Rounds per measurement, the median reported: three at every size. With one round at 1M a
    baseline alone varied by a fifth between two runs, enough to flip a verdict either way."""
    return 3


@pytest.fixture(scope="session")
def prepared(bench_size: int, rolemig_server: Any, rolemig_template: Any, results: Results,
             rolemig_config: Any) -> Iterator[Prepared]:
    """Seeded, backed-up and migrated copies of the demo with ``bench_size`` users."""
    tag = label(bench_size).lower()
    seeded, backed_up, migrated = (unique_name(f"bench_{tag}_{s}") for s in ("seeded", "backup", "migrated"))
    made: list[str] = []
    try:
        create_database(rolemig_server, seeded, template=rolemig_template.name)
        made.append(seeded)
        with psycopg.connect(rolemig_server.dsn(seeded), autocommit=True) as conn:
            already = rolemig_template.seeded.users
            with conn.transaction():
                seed = bulk_seed_users(conn, rolemig_config.target, rolemig_template.legacy_roles,
                                       bench_size - already)
            conn.execute("VACUUM ANALYZE")
        results.seeding[bench_size] = (seed.users, seed.sessions, seed.seconds)

        create_database(rolemig_server, backed_up, template=seeded)
        made.append(backed_up)
        with psycopg.connect(rolemig_server.dsn(backed_up), autocommit=True) as conn:
            backup_id = api.backup(conn, "bench").backup_id

        create_database(rolemig_server, migrated, template=backed_up)
        made.append(migrated)
        with psycopg.connect(rolemig_server.dsn(migrated), autocommit=True) as conn:
            api.migrate(conn, backup_id=backup_id, batch_size=rolemig_config.target.batch_size)
        yield Prepared(bench_size, seeded, backed_up, migrated, backup_id)
    finally:
        for name in reversed(made):
            drop_database(rolemig_server, name)


@pytest.fixture(scope="session")
def fresh_copy(rolemig_server: Any) -> Callable[[str], tuple[Callable[[], Any], Callable[..., None]]]:
    """``fresh_copy(template)`` -> (setup, teardown) for ``benchmark.pedantic``: one copy per round."""

    def make(template: str) -> tuple[Callable[[], Any], Callable[..., None]]:
        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            name = unique_name("bench_round")
            create_database(rolemig_server, name, template=template)
            conn = psycopg.connect(rolemig_server.dsn(name), autocommit=True)
            conn.execute("SELECT 1")  # connection start-up is not part of the operation
            return (conn,), {"name": name}

        def teardown(conn: Any, name: str) -> None:
            conn.close()
            drop_database(rolemig_server, name)

        return setup, teardown

    return make


def measure(benchmark: Any, results: Results, operation: str, size: int, kind: str,
            target: Callable[..., Any], setup: Callable[[], Any], teardown: Callable[..., None]) -> None:
    """Time ``target`` (fresh state per round), record its median, put the ratio in extra_info."""
    benchmark.group = f"{operation} {label(size)}"
    benchmark.extra_info.update({"operation": operation, "users": size, "kind": kind})
    benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=rounds_for(size), warmup_rounds=0)
    if benchmark.stats is None:  # --benchmark-disable: the operation ran once, as a smoke test
        return
    median = benchmark.stats.stats.median
    results.record(operation, size, kind, median)
    ratio = results.ratio(operation, size, kind)
    if kind != "baseline" and ratio is not None:
        benchmark.extra_info["baseline_median_s"] = results.medians[(operation, size, "baseline")]
        benchmark.extra_info["ratio"] = round(ratio, 3)
    if kind == "project" and ratio is not None:
        benchmark.extra_info["verdict"] = results.verdict(operation, size)


@pytest.fixture
def stopwatch() -> Callable[[Callable[[], Any]], float]:
    """Wall time of one call, in seconds (for figures that are not pytest-benchmark rounds)."""

    def run(call: Callable[[], Any]) -> float:
        began = time.perf_counter()
        call()
        return time.perf_counter() - began

    return run
