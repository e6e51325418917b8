"""How fast the gate is for a pull request, what a per-test clone costs, and Python memory vs user count.

- the gate: ``pytest --rolemig --rolemig-users 10000`` in a subprocess, server start
  included (target: under 10 s on a quiet machine, issue #20), with the child's peak RSS;
- a per-test clone: ``CREATE DATABASE ... TEMPLATE`` of the gate's template and of a
  bulk-seeded one (target: under 50 ms, issue #20);
- memory: tracemalloc peak of the plugin's Python paths on each prepared size. The
  API calls and the gate's rehearsal (its snapshots stay in the database) fetch one
  result row or a few examples, so their peak must not grow with the user count; the
  in-memory oracle snapshot, which tests on small data use, reads every user and is
  reported so its growth is visible. The access matrix (two states, compared) keeps
  the reached keys in its store, in the database: its peak must not grow either.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bench_report import label

from pytest_rolemig import api
from pytest_rolemig.access.data import seed_access_rows
from pytest_rolemig.access.matrix import choose_actors, compute_matrix
from pytest_rolemig.access.report import compare
from pytest_rolemig.access.store import ReachStore
from pytest_rolemig.db.templates import create_database, drop_database, unique_name
from pytest_rolemig.rehearsal import Rehearsal
from pytest_rolemig.roundtrip.oracle import take_snapshot

GATE_USERS = 10_000
GATE_TARGET_S = 10
"""Issue #20: the gate at 10k users, server start included, on a quiet machine."""
CLONE_TARGET_MS = 50
"""Issue #20: one per-test clone (``CREATE DATABASE ... TEMPLATE`` and a connection)."""


def test_gate_wall_time(benchmark: Any, results: Any, tmp_path: Path) -> None:
    """One run of the gate as a user runs it, from a folder with no configuration."""
    command = [sys.executable, "-m", "pytest", "--rolemig", "--rolemig-users", str(GATE_USERS),
               "-q", "-p", "no:cacheprovider", "-p", "no:benchmark"]
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["load"] = os.getloadavg()[0]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        outcome["seconds"] = time.perf_counter() - began
        outcome["returncode"] = done.returncode
        outcome["tail"] = done.stdout[-2000:]

    benchmark.group = "gate"
    benchmark.pedantic(run, rounds=1)
    assert outcome["returncode"] == 0, outcome["tail"]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    verdict = "ok" if outcome["seconds"] < GATE_TARGET_S else "target missed"
    benchmark.extra_info.update({"users": GATE_USERS, "seconds": round(outcome["seconds"], 2),
                                 "child_peak_rss_mib": round(peak_mib, 1)})
    results.figures.append(("gate, 10k users (server start included)",
                            f"{outcome['seconds']:.1f} s wall, target < {GATE_TARGET_S} s: {verdict}; "
                            f"peak RSS of the pytest child {peak_mib:.0f} MiB; "
                            f"load average before it {outcome['load']:.2f} (run first in the benchmark)"))


@pytest.mark.parametrize("source", ["gate template (130 users)", "bulk-seeded"])
def test_clone_time(benchmark: Any, results: Any, rolemig_server: Any, rolemig_template: Any,
                    prepared: Any, source: str) -> None:
    """``CREATE DATABASE ... TEMPLATE`` + connect, as the ``rolemig_db`` fixture does per test."""
    template = rolemig_template.name if source.startswith("gate") else prepared.seeded
    names: list[str] = []

    def clone() -> None:
        name = unique_name("bench_clone")
        names.append(name)
        create_database(rolemig_server, name, template=template)
        psycopg.connect(rolemig_server.dsn(name)).close()

    def teardown() -> None:
        drop_database(rolemig_server, names.pop())

    benchmark.group = f"clone {label(prepared.size)}"
    benchmark.pedantic(clone, teardown=teardown, rounds=5 if prepared.size <= 10_000 else 2)
    if benchmark.stats is None:
        return
    median_ms = benchmark.stats.stats.median * 1000
    shown = source if source.startswith("gate") else f"{label(prepared.size)} users"
    if source.startswith("gate") or prepared.size <= 10_000:  # the target: the gate, at 10k users
        verdict = f"target < {CLONE_TARGET_MS} ms: " + ("ok" if median_ms < CLONE_TARGET_MS else "target missed")
    else:
        verdict = "no target (the gate's target is at 10k users)"
    figure = (f"clone of {shown}", f"{median_ms:.0f} ms median, {verdict}")
    if not any(name == figure[0] for name, _ in results.figures):  # the gate template: once per run
        results.figures.append(figure)


def _peak(call: Any) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _rehearse(conn: Any, config: Any, mapping: Any) -> None:
    """The gate's rehearsal through rollback, with the comparisons its tests make."""
    rehearsal = Rehearsal(conn, config.target, mapping)
    rehearsal.run("rollback")
    assert rehearsal.before is not None and rehearsal.after_migration and rehearsal.after_rollback
    assert rehearsal.before.role_mismatches(rehearsal.after_migration, mapping.mapping).count == 0
    assert rehearsal.before.differences(rehearsal.after_rollback) == []


def _access_matrix(conn: Any, config: Any) -> None:
    """Two access matrices of one state, compared, as the access gate does for each step."""
    actors = choose_actors(conn, config.target, per_role=2)
    seed_access_rows(conn, config.target, [a.key for a in actors if a.key])
    with ReachStore.beside(conn) as store:
        before = compute_matrix(conn, config.target, actors, "before", store)
        assert compare(before, compute_matrix(conn, config.target, actors, "again", store), "again").ok


def test_python_memory(results: Any, rolemig_server: Any, rolemig_config: Any, rolemig_mapping: Any,
                       prepared: Any) -> None:
    """tracemalloc peak per Python path: API calls on the migrated state, the rehearsal on the seeded one."""
    name, seeded = unique_name("bench_mem"), unique_name("bench_mem_seeded")
    create_database(rolemig_server, name, template=prepared.migrated)
    create_database(rolemig_server, seeded, template=prepared.seeded)
    try:
        with psycopg.connect(rolemig_server.dsn(name), autocommit=True) as conn:
            peaks = {
                "api.validate(post_migration)": _peak(lambda: api.validate(conn, "post_migration")),
                "api.rollback": _peak(lambda: api.rollback(conn, prepared.backup_id, "bench")),
                "api.validate_rollback": _peak(lambda: api.validate_rollback(conn, prepared.backup_id)),
                "oracle.take_snapshot (in memory, for tests)": _peak(
                    lambda: take_snapshot(conn, rolemig_config.target)),
            }
        with psycopg.connect(rolemig_server.dsn(seeded), autocommit=True) as conn:
            peaks["gate rehearsal (stored snapshots)"] = _peak(
                lambda: _rehearse(conn, rolemig_config, rolemig_mapping))
            peaks["access matrix, two states compared (keys in the store)"] = _peak(
                lambda: _access_matrix(conn, rolemig_config))
    finally:
        drop_database(rolemig_server, name)
        drop_database(rolemig_server, seeded)
    for path, peak in peaks.items():
        results.figures.append((f"python peak, {path}, {label(prepared.size)} users",
                                f"{peak / 1024:,.0f} KiB"))
    # the API paths, the gate's rehearsal and the access matrix fetch rows of a report, never every user:
    # well under a MiB whatever the size
    flat = ("api.validate(post_migration)", "api.rollback", "api.validate_rollback",
            "gate rehearsal (stored snapshots)", "access matrix, two states compared (keys in the store)")
    for path in flat:
        assert peaks[path] < 1024 * 1024, f"{path} peaked at {peaks[path]} bytes: it fetches user rows"
