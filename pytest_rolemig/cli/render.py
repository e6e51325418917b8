"""Output for people (aligned tables, one status word per line) and for machines (JSON)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

MARK = {"pass": "ok  ", "fail": "FAIL", "warn": "warn"}


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], max_width: int = 80) -> str:
    """An aligned text table; long cells are cut with an ellipsis."""
    body = [[_cell(v) for v in row] for row in rows]
    body = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in body]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in body]
    if not body:
        lines.append("(none)")
    return "\n".join(lines)


def checks(rows: Iterable[dict[str, Any]], only_problems: bool = False) -> str:
    """Check rows (``status``, ``check_name``, optional ``validation_type``, ``details``), one a line."""
    lines = []
    for row in rows:
        if only_problems and row["status"] == "pass":
            continue
        label = row.get("check_name") or row.get("component") or row.get("step")
        if row.get("validation_type"):
            label = f"{row['validation_type']}/{label}"
        lines.append(f"  [{MARK.get(row['status'], row['status'])}] {label}")
        if row["status"] != "pass" and row.get("details"):
            details = row["details"]
            if isinstance(details, dict) and isinstance(details.get("hint"), str):  # name the CLI command
                from pytest_rolemig.cli.errors import cli_hint

                details = {**details, "hint": cli_hint(details["hint"])}
            lines.append("         " + json.dumps(details, default=str, sort_keys=True)[:400])
    return "\n".join(lines)


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def to_json(data: Any) -> str:
    """JSON for ``--json``: timestamps as ISO 8601, everything else as its natural type."""
    return json.dumps(data, default=_default, indent=2, sort_keys=False)
