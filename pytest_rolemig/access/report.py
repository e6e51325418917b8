"""Comparing two access matrices, and the report a person or a CI system reads.

A difference is one (legacy role, user, table, command) whose reachable rows
changed: rows gained, rows lost, an example row. It is *declared* when the
mapping file's ``[access_changes]`` names it for that legacy role
(``team_lead = { gains = ["projects:DELETE"] }``); everything else is
unexpected and fails the gate. Rendered as a text table (assertion messages),
Markdown and JSON (files in the report folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_rolemig.access.matrix import ANON, COMMANDS, Matrix
from pytest_rolemig.access.store import EMPTY

Changes = dict[str, dict[str, tuple[str, ...]]]

UPDATED_ACCESS = pytest.StashKey[tuple[str, str]]()
"""(mapping file, ``[access_changes]`` block) written by ``--rolemig-update-access``, for the summary."""


@dataclass(frozen=True)
class Difference:
    """One cell of the matrix that changed between two states."""

    role: str
    user: str
    claim_before: str | None
    claim_after: str | None
    table: str
    command: str
    gained: int  # rows reached after but not before
    lost: int  # rows reached before but not after
    declared: bool
    example: str = ""
    gained_keys: tuple[str, ...] = ()  # the first gained rows, in key order
    lost_keys: tuple[str, ...] = ()
    sets: tuple[int, int] = (0, 0)  # the store's set ids before and after

    def as_json(self) -> dict[str, Any]:
        """The difference for the JSON report, with the first gained and lost row keys."""
        return {"role": self.role, "user": self.user, "claim_before": self.claim_before,
                "claim_after": self.claim_after, "table": self.table, "command": self.command,
                "gained": self.gained, "lost": self.lost, "gained_first": list(self.gained_keys),
                "lost_first": list(self.lost_keys), "declared": self.declared, "example": self.example}


@dataclass
class Comparison:
    """Two matrices compared: what changed, and which changes were not declared."""

    title: str
    expected: str
    before: Matrix
    after: Matrix
    differences: list[Difference] = field(default_factory=list)
    declared_unused: list[str] = field(default_factory=list)
    _groups: dict[tuple[Any, ...], tuple[int, int]] = field(default_factory=dict, repr=False)

    @property
    def unexpected(self) -> list[Difference]:
        """The differences the role mapping did not declare: these fail the comparison."""
        return [d for d in self.differences if not d.declared]

    @property
    def ok(self) -> bool:
        """True when every difference was declared."""
        return not self.unexpected

    # ------------------------------------------------------------ rendering --
    def rows(self, only_unexpected: bool = False) -> list[list[str]]:
        """One row per (role, claims, table, command): the acting users of a role grouped, losses first."""
        chosen = self.unexpected if only_unexpected else self.differences
        groups: dict[tuple[Any, ...], list[Difference]] = {}
        for d in chosen:
            groups.setdefault((d.role, d.claim_before, d.claim_after, d.table, d.command, d.declared), []).append(d)
        out = []
        for (role, was, now, table, command, declared), ds in groups.items():
            # rows, not user-row pairs: acting users of one role mostly gain or lose the same rows
            group = (role, was, now, table, command, declared)
            if group not in self._groups:  # a query; the reports render the rows several times
                self._groups[group] = ((ds[0].gained, ds[0].lost) if len(ds) == 1 else
                                       self.before.store.union_diff([d.sets for d in ds]))
            gained, lost = self._groups[group]
            out.append([f"{role} ({was or '-'} -> {now or '-'})", str(len(ds)), table, command,
                        str(gained), str(lost), "yes" if declared else "NO", ds[0].example])
        return sorted(out, key=lambda r: (r[5] == "0", r[0], r[2], r[3]))

    HEAD = ["role (claim before -> after)", "users", "table", "command", "rows gained", "rows lost",
            "declared", "example row"]

    def text(self, only_unexpected: bool = True, limit: int = 40) -> str:
        """A fixed-width table of the differences, for an assertion message."""
        rows = self.rows(only_unexpected)
        more = len(rows) - limit
        rows = [[c if len(c) <= 110 else c[:107] + "..." for c in r] for r in rows[:limit]]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(self.HEAD)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(self.HEAD, widths, strict=True)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        if more > 0:
            lines.append(f"... and {more} more (see the report files)")
        return "\n".join(lines)

    def markdown(self) -> str:
        """A section for the Markdown report: the verdict, then every difference."""
        verdict = "PASS" if self.ok else f"FAIL: {len(self.unexpected)} undeclared difference(s)"
        out = [f"## {self.title}: {verdict}", "", f"Expected: {self.expected}", "",
               f"States: `{self.before.label}` ({self.before.seconds:.2f} s) vs `{self.after.label}` "
               f"({self.after.seconds:.2f} s); {len(self.differences)} cell(s) changed, "
               f"{len(self.differences) - len(self.unexpected)} of them declared.", ""]
        if self.differences:
            out += ["| " + " | ".join(self.HEAD) + " |", "|" + "---|" * len(self.HEAD)]
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self.rows()]
            out.append("")
        if self.declared_unused:
            out += ["Declared in the mapping but not observed: " + ", ".join(self.declared_unused), ""]
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        """The comparison for the JSON report: verdict, both states' times, every difference."""
        return {"title": self.title, "expected": self.expected, "ok": self.ok,
                "before": self.before.label, "after": self.after.label,
                "seconds": {self.before.label: round(self.before.seconds, 3),
                            self.after.label: round(self.after.seconds, 3)},
                "differences": [d.as_json() for d in self.differences],
                "declared_unused": self.declared_unused}


def _short(key: str) -> str:
    return key if len(key) <= 13 else key[:8] + "..."


def _declared(changes: Changes, role: str, kind: str, table: str, command: str) -> str | None:
    """The ``[access_changes]`` entry covering this change, if any."""
    bare = table.rpartition(".")[2]
    for entry in changes.get(role, {}).get(kind, ()):
        t, _, c = entry.partition(":")
        if t in ("*", table, bare) and c in ("*", command):
            return entry
    return None


def compare(before: Matrix, after: Matrix, title: str, changes: Changes | None = None,
            examples: Any = None, vanished: frozenset[tuple[str, str]] = frozenset()) -> Comparison:
    """Every cell whose rows differ; a change is declared only where ``changes`` names it.

    ``changes`` None means nothing may change (e.g. after a rollback). ``examples``,
    if given, is called with (table, key) and returns the row to show. ``vanished``:
    (table, key) of rows the migration deleted for everybody (merged duplicate role rows,
    reported by the migration gate): losing only those is no access change.
    """
    changes = changes or {}
    used: set[str] = set()
    diffs: list[Difference] = []
    if before.store is not after.store:
        raise ValueError(f"matrices {before.label!r} and {after.label!r} keep their rows in different stores: "
                         "compute the matrices of one comparison with one ReachStore")
    for cell in sorted(set(before.cells) | set(after.cells)):
        was, now = before.cells.get(cell, EMPTY), after.cells.get(cell, EMPTY)
        if was == now:  # equal digests: the same rows
            continue
        role, user, table, command = cell
        gained, lost, gained_keys, lost_keys = before.store.diff(was, now)
        if not gained and lost == len(lost_keys) and {(table, k) for k in lost_keys} <= vanished:
            continue
        gain_ok = _declared(changes, role, "gains", table, command) if gained else "-"
        loss_ok = _declared(changes, role, "loses", table, command) if lost else "-"
        used |= {e for e in (gain_ok, loss_ok) if e and e != "-"}
        key = (gained_keys or lost_keys)[0]
        example = f"{'+' if gained_keys else '-'}{key}"
        if examples is not None:
            row = examples(table, key)
            example += f" {row}" if row else ""
        diffs.append(Difference(role, user, before.claims.get(user), after.claims.get(user), table, command,
                                gained, lost, bool(gain_ok and loss_ok), example, gained_keys, lost_keys,
                                (was, now)))
    unused = sorted(f"{role}: {entry}" for role, kinds in changes.items() for entry in
                    (*kinds.get("gains", ()), *kinds.get("loses", ())) if entry not in used)
    expected = ("access as declared in the mapping's [access_changes], otherwise unchanged" if changes
                else "every user reaches exactly the same rows")
    return Comparison(title, expected, before, after, diffs, unused)


def counts_table(matrices: list[Matrix]) -> str:
    """Markdown: rows reached per role and table, one column group per state (S/I/U/D)."""
    if not matrices:
        return ""
    counts = [m.counts() for m in matrices]
    roles = sorted({r for c in counts for r in c})
    tables = sorted({t for m in matrices for t in m.tables})
    head = ["role", "table"] + [m.label for m in matrices]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for role in roles:
        for table in tables:
            cells = ["/".join(str(c.get(role, {}).get(table, {}).get(cmd, 0)) for cmd in COMMANDS) for c in counts]
            out.append(f"| {role} | {table} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def write_reports(report_dir: Path, comparisons: list[Comparison], matrices: list[Matrix],
                  stem: str = "access-matrix") -> list[Path]:
    """Write ``<stem>.md`` and ``<stem>.json`` into ``report_dir``; return their paths."""
    report_dir.mkdir(parents=True, exist_ok=True)
    md = ["# Access matrix", "",
          "Rows each application user reaches through RLS, acting as PostgREST does "
          "(API role + JWT claims), per table and command. Cells below: SELECT/INSERT/UPDATE/DELETE "
          "rows reached, summed over the role's acting users.", ""]
    md += [c.markdown() for c in comparisons]
    md += ["## Rows reached per state", "", counts_table(matrices), ""]
    md += ["Computing time: " + ", ".join(f"{m.label} {m.seconds:.2f} s" for m in matrices), ""]
    paths = [report_dir / f"{stem}.md", report_dir / f"{stem}.json"]
    paths[0].write_text("\n".join(md), encoding="utf-8")
    paths[1].write_text(json.dumps({
        "comparisons": [c.as_json() for c in comparisons],
        "matrices": {m.label: {"seconds": round(m.seconds, 3), "tables": list(m.tables), "claims": m.claims,
                               "counts": m.counts(),
                               "errors": [dict(zip(("role", "user", "table", "command"), k, strict=True), error=v)
                                          for k, v in sorted(m.errors.items())]}
                     for m in matrices},
    }, indent=1, sort_keys=True), encoding="utf-8")
    return paths


def measured_changes(comparison: Comparison) -> Changes:
    """The ``[access_changes]`` that declare exactly what ``comparison`` measured, per legacy role.

    Tables of ``public`` are written bare (``documents:UPDATE``), others schema-qualified.
    """
    found: dict[str, dict[str, set[str]]] = {}
    for d in comparison.differences:
        if d.role == ANON:  # the anonymous role is not a legacy role: its changes cannot be declared
            continue
        schema, _, bare = d.table.rpartition(".")
        entry = f"{bare if schema in ('', 'public') else d.table}:{d.command}"
        kinds = found.setdefault(d.role, {"gains": set(), "loses": set()})
        if d.gained:
            kinds["gains"].add(entry)
        if d.lost:
            kinds["loses"].add(entry)
    return {role: {k: tuple(sorted(v)) for k, v in kinds.items()} for role, kinds in found.items()}
