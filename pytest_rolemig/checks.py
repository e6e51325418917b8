"""Rows of the SQL check functions, as Python objects that render readably."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """One row of a check function: name, pass/fail/warn, and the details it gives."""

    name: str
    status: str
    details: dict[str, Any] = field(default_factory=dict, hash=False)
    group: str | None = None

    @property
    def failed(self) -> bool:
        """Whether the check failed (a warning is not a failure)."""
        return self.status == "fail"


@dataclass(frozen=True)
class CheckReport:
    """All rows one SQL check function returned."""

    source: str
    checks: tuple[Check, ...]

    @classmethod
    def from_rows(cls, source: str, rows: Iterable[tuple[Any, ...]]) -> CheckReport:
        """Rows of ``(name, status, details)``, or ``(group, name, status, details)``."""
        checks = []
        for row in rows:
            if len(row) == 4:  # (group, name, status, details) as run_comprehensive_validation
                group, name, status, details = row
            else:
                group, (name, status, details) = None, row[:3]
            checks.append(Check(name=name, status=status, details=details or {}, group=group))
        return cls(source=source, checks=tuple(checks))

    @property
    def failures(self) -> tuple[Check, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if c.failed)

    @property
    def warnings(self) -> tuple[Check, ...]:
        """The checks that warned."""
        return tuple(c for c in self.checks if c.status == "warn")

    @property
    def ok(self) -> bool:
        """No failure, and at least one check ran (an empty report proves nothing)."""
        return not self.failures and bool(self.checks)

    def get(self, name: str) -> Check:
        """The check called ``name``; a KeyError listing the names there are."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"{self.source} returned no check named {name!r}; it returned "
                       f"{[c.name for c in self.checks]}")

    def render(self, only_problems: bool = False) -> str:
        """One line per check (``[FAIL] group/name``), the details of each that did not pass."""
        lines = []
        for c in self.checks:
            if only_problems and c.status == "pass":
                continue
            label = f"{c.group}/{c.name}" if c.group else c.name
            lines.append(f"[{c.status.upper():4}] {label}")
            if c.status != "pass":
                lines.append("       " + json.dumps(c.details, default=str, sort_keys=True)[:2000])
        return "\n".join(lines)
