"""Drive the online migration procedure and act as application users while it runs.

``run_online_migration`` is a PROCEDURE that commits per batch, so it must be CALLed on an
autocommit connection; :func:`call` does that and returns its result document. The helpers
below are what the fault-injection tests and the load harness share: run a CALL in a thread
on its own connection, wait until that backend is stopped at a precise point (waiting for a
lock the test holds), and act as an authenticated user through RLS the way PostgREST does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from pytest_rolemig import postgrest

LOCK_KEY_SQL = "pg_catalog.hashtext('pytest_rolemig.migration')::bigint"
"""The advisory lock key shared by execute_role_migration, the rollbacks and the online procedure."""


def call(conn: psycopg.Connection[Any], **params: Any) -> dict[str, Any]:
    """CALL migration_control.run_online_migration(...) with named parameters; its p_result
    (:func:`pytest_rolemig.api.run_online_migration`)."""
    from pytest_rolemig import api

    return api.run_online_migration(conn, **params)


class Background:
    """Run one SQL statement on its own autocommit connection in a thread; keep its pid and outcome."""

    def __init__(self, dsn: str, query: str, params: Any = None) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.pid: int = self.conn.info.backend_pid
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(query, params), daemon=True)
        self._thread.start()

    def _run(self, query: str, params: Any) -> None:
        try:
            cur = self.conn.execute(query, params)
            self.result = cur.fetchall() if cur.description else None
        except BaseException as exc:  # noqa: BLE001 - reported to the test through .error
            self.error = exc

    def join(self, timeout: float = 60) -> Background:
        """Wait for the statement, close its connection and return self; raise if it is still running."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"background statement of backend {self.pid} still running after {timeout} s")
        try:
            self.conn.close()
        except psycopg.Error:
            pass
        return self


def wait_until(conn: psycopg.Connection[Any], query: str, params: Any = None, timeout: float = 30) -> Any:
    """Poll ``query`` until its first column is truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(query, params).fetchone()
        if row and row[0]:
            return row[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition never held within {timeout} s: {query}")
        time.sleep(0.02)


def wait_blocked(conn: psycopg.Connection[Any], pid: int, timeout: float = 30) -> str:
    """Wait until backend ``pid`` waits on a heavyweight lock or sleeps in a retry backoff."""
    return str(wait_until(
        conn,
        """SELECT a.wait_event_type || ':' || a.wait_event FROM pg_catalog.pg_stat_activity a
           WHERE a.pid = %s AND (a.wait_event_type = 'Lock' OR a.wait_event = 'PgSleep')""",
        (pid,), timeout))


def terminate(conn: psycopg.Connection[Any], pid: int, timeout: float = 30) -> None:
    """pg_terminate_backend(pid) and wait until the backend is gone (its locks released)."""
    conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
    wait_until(conn, "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = %s)",
               (pid,), timeout)


def act_as(conn: psycopg.Connection[Any], user_id: str, claim_role: str | None = None,
           auth: postgrest.AuthSettings | None = None) -> None:
    """Inside the current transaction: become the user with the claims PostgREST sets.

    ``auth`` defaults to the settings stored with the target (API role, claims template,
    pre-request function): see :func:`pytest_rolemig.postgrest.act_as`.
    """
    postgrest.act_as(conn, auth or postgrest.auth_settings(conn), str(user_id), claim_role)
