"""Load harness: migrate N users online while C clients keep acting as authenticated users.

    rolemig-load --users 100000 --clients 8

Starts its own ephemeral PostgreSQL, loads the demo schema, installs the infrastructure, seeds
users set-based (generate_series into auth.users, public.user_profiles, auth.sessions), then runs
C client threads (own connection each) that, as a random user through RLS, read their profile,
touch their session and write a support ticket: first for a baseline period, then while
``run_online_migration`` (expand) runs, then for a short tail. Reports client errors, p50/p99/max
latency before and during, the longest lock wait seen and how long the batches took (mean, p50,
max). Bounded: stops by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from pytest_rolemig import api

ROLES = ["super_admin", "admin", "org_owner", "org_admin", "billing_admin", "manager", "team_lead",
         "editor", "author", "contributor", "moderator", "support_agent", "viewer"]


@dataclass
class Client:
    """One application client: its latencies (seconds) per phase and its errors."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {"before": [], "during": [], "after": []})
    errors: list[str] = field(default_factory=list)
    requests: int = 0


def seed(conn: psycopg.Connection[Any], users: int) -> None:
    """Set-based seeding: users with a legacy role each, one session per user."""
    conn.execute(
        """INSERT INTO auth.users (id, email)
           SELECT gen_random_uuid(), 'load' || g || '@example.test' FROM generate_series(1, %s) g""", (users,))
    conn.execute(
        """INSERT INTO public.user_profiles (id, email, display_name, role)
           SELECT u.id, u.email, 'user ' || u.email, (%s::text[])[1 + (row_number() OVER () %% 13)]
           FROM auth.users u""", (ROLES,))
    conn.execute("INSERT INTO auth.sessions (user_id, user_agent) SELECT id, 'load' FROM auth.users")
    conn.execute("ANALYZE")


def request(conn: psycopg.Connection[Any], user: str) -> None:
    """One authenticated request as PostgREST makes it: role + claims, then the app's statements."""
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                     (json.dumps({"sub": user, "role": "authenticated"}),))
        row = conn.execute("SELECT id, role FROM public.user_profiles WHERE id = %s", (user,)).fetchone()
        if row is None:
            raise AssertionError(f"user {user} cannot read their own profile")
        if not conn.execute("SELECT id FROM auth.sessions WHERE user_id = %s", (user,)).fetchall():
            raise AssertionError(f"user {user} lost their session")
        conn.execute("UPDATE public.user_profiles SET last_seen_at = now() WHERE id = %s", (user,))
        conn.execute("INSERT INTO public.support_tickets (requester_id, subject) VALUES (%s, 'load')", (user,))


def run_client(dsn: str, users: list[str], client: Client, phase: list[str], stop: threading.Event) -> None:
    """One client thread: requests as random users until ``stop``, timed under the current phase."""
    rng = random.Random()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            user = rng.choice(users)
            start = time.perf_counter()
            try:
                request(conn, user)
            except Exception as exc:  # noqa: BLE001 - every failure is a client error to report
                client.errors.append(f"{type(exc).__name__}: {exc}")
            client.latencies[phase[0]].append(time.perf_counter() - start)
            client.requests += 1


def watch_locks(dsn: str, longest: list[float], stop: threading.Event) -> None:
    """Longest continuous heavyweight-lock wait of any backend, sampled every 10 ms."""
    waiting: dict[tuple[int, Any], float] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            now = time.perf_counter()
            seen = {(pid, start) for pid, start in conn.execute(
                "SELECT pid, query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock'")}
            for key in seen:
                waiting.setdefault(key, now)
                longest[0] = max(longest[0], now - waiting[key])
            for key in set(waiting) - seen:
                del waiting[key]
            time.sleep(0.01)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank), 0.0 when there are none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(dsn: str, users: int, clients: int, baseline: float = 3.0, batch_size: int = 1000,
        pause_ms: int = 0, timeout: float = 600) -> dict[str, Any]:
    """On a database with the demo schema and infrastructure: seed, load, migrate, report."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        seed(admin, users)
        api.backup(admin, "load")
        keys = [str(k) for (k,) in admin.execute("SELECT id FROM public.user_profiles")]
    phase = ["before"]
    stop = threading.Event()
    longest = [0.0]
    states = [Client() for _ in range(clients)]
    threads = [threading.Thread(target=run_client, args=(dsn, keys, c, phase, stop), daemon=True) for c in states]
    threads.append(threading.Thread(target=watch_locks, args=(dsn, longest, stop), daemon=True))
    for t in threads:
        t.start()
    try:
        time.sleep(baseline)
        phase[0] = "during"
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as migrator:
            migrator.execute(f"SET statement_timeout = {int(timeout * 1000)}")
            result = api.run_online_migration(migrator, p_batch_size=batch_size, p_pause_ms=pause_ms)
            migration_seconds = time.perf_counter() - started
            batch_seconds = api.batch_seconds(migrator, result["run_id"])
        phase[0] = "after"
        time.sleep(min(baseline, 1.0))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    lat = {p: [x for c in states for x in c.latencies[p]] for p in ("before", "during")}
    errors = [e for c in states for e in c.errors]
    report: dict[str, Any] = {
        "users": users, "clients": clients, "batch_size": batch_size,
        "migration": result, "migration_seconds": round(migration_seconds, 2),
        "batch_ms": {name: round((value or 0.0) * 1000, 1)
                     for name, value in zip(("mean", "p50", "max"), batch_seconds, strict=True)},
        "requests": sum(c.requests for c in states), "client_errors": len(errors), "error_sample": errors[:5],
        "longest_lock_wait_ms": round(longest[0] * 1000, 1),
    }
    for p, values in lat.items():
        report[p] = {"requests": len(values), "p50_ms": round(pct(values, 0.50) * 1000, 2),
                     "p99_ms": round(pct(values, 0.99) * 1000, 2),
                     "max_ms": round(max(values, default=0.0) * 1000, 2),
                     "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else 0.0}
    report["targets"] = {
        "zero_client_errors": not errors,
        "no_request_over_1s": max(lat["before"] + lat["during"], default=0.0) < 1.0,
        "p99_during_at_most_twice_before": report["during"]["p99_ms"] <= 2 * report["before"]["p99_ms"],
    }
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the harness on its own ephemeral server, print the JSON report; exit 1 on client errors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of load before the migration")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--pause-ms", type=int, default=0, help="sleep between batches")
    parser.add_argument("--timeout", type=float, default=600, help="upper bound for the migration, seconds")
    args = parser.parse_args(argv)

    from pytest_rolemig.db.install import install
    from pytest_rolemig.db.server import EphemeralServer, find_binaries
    from pytest_rolemig.db.templates import load_schema_file
    from pytest_rolemig.mapping import load_mapping
    from pytest_rolemig.resources import demo_mapping, demo_schema_files

    server = EphemeralServer(find_binaries()).start()
    try:
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE rolemig_load")
        dsn = server.dsn("rolemig_load")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for path in demo_schema_files():
                load_schema_file(conn, path)
            install(conn, mapping=load_mapping(demo_mapping()))
        report = run(dsn, args.users, args.clients, args.baseline, args.batch_size, args.pause_ms, args.timeout)
    finally:
        server.stop()
    print(json.dumps(report, indent=2))
    return 0 if report["client_errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
