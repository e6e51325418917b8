"""``rolemig plan``: what the migration would change, found by doing it and rolling back.

The plan runs the real ``execute_role_migration`` inside one transaction that is
always rolled back, so what it reports is what the migration would do, not a
guess: users per legacy -> new role, policies rewritten (old and new text), the
batch count and a time estimate measured on the first batch, and the access each
legacy role gains or loses. Nothing is written; the transaction holds the same
locks the migration would while it runs (``lock_timeout`` keeps it from queueing).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import sql

from pytest_rolemig import api, postgrest
from pytest_rolemig.db.query import one

OPS = ("SELECT", "INSERT", "UPDATE", "DELETE")
_CMD = {op: (op, "ALL") for op in OPS}
"""The policy commands (as describe_policies() names them) that apply to each operation."""

ACCESS_METHOD = (
    "evaluated by PostgreSQL as a sample user of each legacy role: inside the rolled-back transaction, "
    "with SET ROLE to the API role and request.jwt.claims of that user, the policies of each table "
    "for each operation are evaluated on a row the user does not own, before and after the migration "
    "(own-row access does not depend on the role and is not listed); table privileges of the API role "
    "are taken into account"
)


def profiles_ident(cfg: dict[str, Any]) -> sql.Identifier:
    """The profiles table as a qualified identifier."""
    return sql.Identifier(cfg["profiles_schema"], cfg["profiles_table"])


def migrated_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int, bool]]:
    """(schema, table, oid, rls enabled) of the tables the migration may touch, as the SQL defines them."""
    return [(t.schema_name, t.table_name, t.table_oid, t.rls_enabled) for t in api.migrated_tables(conn)]


def policies(conn: psycopg.Connection[Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every policy of the migrated tables: command, permissive, roles, USING and WITH CHECK text."""
    return {(p.schema_name, p.table_name, p.policy_name): {
        "cmd": p.command, "permissive": p.permissive, "roles": list(p.roles), "using": p.using_expr,
        "check": p.check_expr} for p in api.migrated_policies(conn)}


def _combine(pols: list[dict[str, Any]], op: str, clause: str) -> str:
    """Permissive policies OR-ed, restrictive AND-ed, for one operation and clause."""
    def expr(p: dict[str, Any]) -> str:
        text = p["check"] if clause == "check" and p["check"] is not None else p["using"]
        return f"({text})" if text else "true"

    relevant = [p for p in pols if p["cmd"] in _CMD[op]]
    permissive = [expr(p) for p in relevant if p["permissive"]]
    restrictive = [expr(p) for p in relevant if not p["permissive"]]
    if not permissive:
        return "false"
    combined = "(" + " OR ".join(permissive) + ")"
    if restrictive:
        combined += " AND " + " AND ".join(restrictive)
    return f"coalesce(({combined}), false)"


def access(conn: psycopg.Connection[Any], cfg: dict[str, Any], user_key: str, role: str) -> dict[str, Any]:
    """What one user may do on rows of other users, per table and operation (True / False / error text)."""
    auth_role = cfg["auth_role"]
    pols_by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (schema, table, _name), p in policies(conn).items():
        if "public" in p["roles"] or auth_role in p["roles"]:
            pols_by_table.setdefault((schema, table), []).append(p)
    auth = postgrest.from_config(cfg)  # the API role, claims template and pre-request stored with the target
    result: dict[str, Any] = {}
    for schema, table, oid, rls in migrated_tables(conn):
        privileges = one(
            conn, "SELECT " + ", ".join(f"pg_catalog.has_table_privilege(%s, %s::oid, '{op}')" for op in OPS),
            tuple(x for _ in OPS for x in (auth_role, oid)),
        )
        pols = pols_by_table.get((schema, table), [])
        if not rls:
            exprs = ["true"] * len(OPS)
        else:
            exprs = [
                _combine(pols, "SELECT", "using"),
                _combine(pols, "INSERT", "check"),
                f"({_combine(pols, 'UPDATE', 'using')}) AND ({_combine(pols, 'UPDATE', 'check')})",
                _combine(pols, "DELETE", "using"),
            ]
        query = sql.SQL("SELECT {} FROM (SELECT (NULL::{}).*) AS {}").format(
            sql.SQL(", ").join(sql.SQL(e) for e in exprs),  # policy text read from pg_policy
            sql.Identifier(schema, table), sql.Identifier(table),
        )
        name = f"{schema}.{table}"
        conn.execute("SAVEPOINT rolemig_access")
        try:
            postgrest.act_as(conn, auth, user_key, role)
            allowed = one(conn, query)
            for op, ok, priv in zip(OPS, allowed, privileges, strict=True):
                result[f"{name}:{op}"] = bool(ok) and bool(priv)
        except psycopg.Error as exc:
            for op in OPS:
                result[f"{name}:{op}"] = f"error: {str(exc).strip().splitlines()[0]}"
        finally:
            conn.execute("ROLLBACK TO SAVEPOINT rolemig_access")
    conn.execute("RESET ROLE")
    conn.execute("SELECT set_config('request.jwt.claims', '', true)")
    return result


def _by_table(keys: Any) -> dict[str, list[str]]:
    """``{"schema.table": ["SELECT", ...]}`` from ``"schema.table:OP"`` keys, operations in OPS order."""
    out: dict[str, list[str]] = {}
    for key in keys:
        table, op = key.rsplit(":", 1)
        out.setdefault(table, []).append(op)
    return {t: sorted(ops, key=OPS.index) for t, ops in sorted(out.items())}


def _current_role(conn: psycopg.Connection[Any], cfg: dict[str, Any], key: str) -> str | None:
    """The row's role now; None when the migration deleted it (a merged duplicate role row)."""
    query = sql.SQL("SELECT p.{role}::text FROM {profiles} AS p WHERE p.{key}::text = %s").format(
        role=sql.Identifier(cfg["role_column"]), key=sql.Identifier(cfg["key_column"]),
        profiles=profiles_ident(cfg))
    row = conn.execute(query, (key,)).fetchone()
    return row[0] if row else None


def _migrate(conn: psycopg.Connection[Any], batch_size: int, backup_id: str | None,
             max_batches: int | None) -> dict[str, Any]:
    """One call of the migration, its row whether it completed or failed (a dry run reports failures)."""
    try:
        return asdict(api.migrate(conn, batch_size=batch_size, backup_id=backup_id, max_batches=max_batches))
    except api.OperationFailed as exc:
        return asdict(exc.result)


def build_plan(conn: psycopg.Connection[Any], batch_size: int | None, with_access: bool = True,
               lock_timeout: str = "5s") -> dict[str, Any]:
    """Run the migration in a transaction, read what changed, roll back; return the plan."""
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        cfg = api.target_row(conn)
        size = batch_size or cfg["batch_size"]
        counts = [asdict(r) for r in api.role_counts(conn)]
        to_move = sum(r["users"] for r in counts if r["action"] == "moves")
        samples = api.sample_users(conn)
        before_access = {role: access(conn, cfg, uid, role) for role, _, uid in samples} if with_access else {}
        before_pols = policies(conn)

        notes = []
        backup = api.newest_restorable(conn)
        if backup is None:
            try:
                backup = api.backup(conn, "rolemig_plan_dry_run").backup_id
            except api.OperationFailed as exc:  # the migration refuses it, and the plan says so
                backup = exc.result.backup_id
            notes.append("no restorable backup exists: the dry run took one inside its transaction "
                         "(rolled back); run `rolemig backup` before `rolemig migrate`")

        started = time.perf_counter()
        first = _migrate(conn, size, backup, 1)
        sample_seconds = time.perf_counter() - started
        sample_users = int(first["users_migrated"] or 0) + int(first["users_unchanged"] or 0)
        rest_started = time.perf_counter()
        rest = _migrate(conn, size, backup, None)
        full_seconds = sample_seconds + time.perf_counter() - rest_started
        failed = [r for r in (first, rest) if r.get("status") == "failed"]
        batches = int(first["batches"] or 0) + int(rest["batches"] or 0)

        after_pols = policies(conn)
        rewritten = []
        for key in sorted(set(before_pols) | set(after_pols)):
            old, new = before_pols.get(key), after_pols.get(key)
            if old == new:
                continue
            rewritten.append({
                "schema": key[0], "table": key[1], "policy": key[2],
                "old_using": old and old["using"], "new_using": new and new["using"],
                "old_check": old and old["check"], "new_check": new and new["check"],
                "change": "created" if old is None else "dropped" if new is None else "rewritten",
            })

        changes: dict[str, Any] = {}
        if with_access:
            mapped = {r["legacy_role"]: r["new_role"] for r in counts}
            for role, row_key, uid in samples:
                new_role = _current_role(conn, cfg, row_key) or mapped.get(role) or role
                after = access(conn, cfg, uid, new_role)
                before = before_access[role]
                gains = _by_table(k for k in after if after[k] is True and before.get(k) is not True)
                loses = _by_table(k for k in before if before[k] is True and after.get(k) is not True)
                errors = sorted({v for v in list(before.values()) + list(after.values()) if isinstance(v, str)})
                changes[role] = {"new_role": new_role, "sample_user": uid, "gains": gains, "loses": loses,
                                 "errors": errors}

    per_batch = sample_seconds if sample_users else 0.0
    return {
        "dry_run": True,
        "written": False,
        "batch_size": size,
        "users_per_role": counts,
        "users_to_move": to_move,
        "unmapped_roles": [r["legacy_role"] for r in counts if r["action"] == "UNMAPPED"],
        "batches": batches,
        "sample": {"batches": int(first["batches"] or 0), "users": sample_users,
                   "seconds": round(sample_seconds, 4)},
        "estimated_seconds": round(per_batch * max(batches, math.ceil(to_move / size) if size else 0), 3),
        "dry_run_seconds": round(full_seconds, 4),
        "policies_rewritten": rewritten,
        "access_method": ACCESS_METHOD if with_access else None,
        "access_changes": changes,
        "migration_status": [first.get("status"), rest.get("status")],
        "errors": [r.get("error") for r in failed],
        "notes": notes,
    }
