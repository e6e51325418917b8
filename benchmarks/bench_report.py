"""Collect what the benchmarks measured and print it as ratios at the end of the run.

Each operation is measured on the same prepared data by the project, by the
bare SQL a DBA would type (the baseline) and by the bare SQL of the least work
the issue also asks for (the floor: a checksum, a log row per user); the ratio
project / baseline (of medians) is what the issue's targets are about, and a
floor ratio above the target says that no design doing that work meets it on
this machine. Targets apply at 1,000,000 users; at smaller sizes the line says
so, because fixed costs weigh more there.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

TARGETS = {"backup": 1.3, "validation_pre": 1.3, "validation_post": 1.3, "migration": 1.5, "migration_cli": 1.5,
           "rollback": 1.5}
TARGET_SIZE = 1_000_000


def label(size: int) -> str:
    """10000 -> '10k', 1000000 -> '1M'."""
    return f"{size // 1_000_000}M" if size % 1_000_000 == 0 else f"{size // 1000}k"


@dataclass
class Results:
    """Everything measured in one run, keyed by (operation, size)."""

    medians: dict[tuple[str, int, str], float] = field(default_factory=dict)
    seeding: dict[int, tuple[int, int, float]] = field(default_factory=dict)  # size -> users, sessions, s
    figures: list[tuple[str, str]] = field(default_factory=list)  # free lines: (name, value)

    def record(self, operation: str, size: int, kind: str, median: float) -> None:
        """Keep one measurement (kind is 'project', 'floor' or 'baseline')."""
        self.medians[(operation, size, kind)] = median

    def ratio(self, operation: str, size: int, kind: str = "project") -> float | None:
        """``kind`` / baseline, when both ran."""
        measured = self.medians.get((operation, size, kind))
        baseline = self.medians.get((operation, size, "baseline"))
        if measured is None or not baseline:
            return None
        return measured / baseline

    def verdict(self, operation: str, size: int) -> str:
        """'ok' / 'target missed' against the operation's target (informative below 1M).

        A miss says so too when the floor alone is above the target.
        """
        ratio = self.ratio(operation, size)
        target = TARGETS.get(operation)
        if ratio is None or target is None:
            return ""
        word = "ok" if ratio <= target else "target missed"
        floor = self.ratio(operation, size, "floor")
        if ratio > target and floor is not None and floor > target:
            word += f"; the floor alone is {floor:.2f}x"
        return word if size >= TARGET_SIZE else f"{word} (target applies at 1M)"

    def lines(self) -> list[str]:
        """The summary printed at the end of the run."""
        out = []
        if self.medians:
            out.append(f"{'operation':<16}{'users':>7}{'project s':>12}{'baseline s':>12}{'ratio':>8}"
                       f"{'floor':>8}{'target':>8}  verdict")
            for op, size in sorted({(o, s) for o, s, _ in self.medians}, key=lambda k: (k[1], k[0])):
                project = self.medians.get((op, size, "project"))
                baseline = self.medians.get((op, size, "baseline"))
                ratio, floor = self.ratio(op, size), self.ratio(op, size, "floor")
                out.append(
                    f"{op:<16}{label(size):>7}{_fmt(project):>12}{_fmt(baseline):>12}"
                    f"{_times(ratio):>8}{_times(floor):>8}{(f'{TARGETS[op]}x' if op in TARGETS else '-'):>8}"
                    f"  {self.verdict(op, size)}"
                )
        for size, (users, sessions, seconds) in sorted(self.seeding.items()):
            out.append(f"seeding {label(size)}: {users} users + {sessions} sessions in {seconds:.2f} s "
                       f"= {users / seconds:,.0f} users/s")
        out.extend(f"{name}: {value}" for name, value in self.figures)
        return out


    def as_json(self) -> dict[str, object]:
        """Every measurement, ratio and figure of the run, for ``benchmarks/results/``."""
        ops = sorted({(o, s) for o, s, _ in self.medians}, key=lambda k: (k[1], k[0]))
        return {
            "operations": [{"operation": op, "users": size,
                            **{kind: self.medians.get((op, size, kind)) for kind in ("project", "baseline", "floor")},
                            "ratio": self.ratio(op, size), "floor_ratio": self.ratio(op, size, "floor"),
                            "target": TARGETS.get(op), "verdict": self.verdict(op, size)} for op, size in ops],
            "seeding": [{"users": users, "sessions": sessions, "seconds": seconds}
                        for users, sessions, seconds in self.seeding.values()],
            "figures": dict(self.figures),
        }

    def write(self, folder: Path, when: datetime) -> list[Path]:
        """``<stamp>.json`` and ``<stamp>.md`` (the table printed at the end), and ``latest.*`` copies."""
        folder.mkdir(parents=True, exist_ok=True)
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        data = {"run_at": when.isoformat(), "platform": platform.platform(), "python": platform.python_version(),
                **self.as_json()}
        text = "\n".join([f"# Benchmark run {when.isoformat()}", "", "```", *self.lines(), "```", ""])
        written = []
        for name in (stamp, "latest"):
            (folder / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
            (folder / f"{name}.md").write_text(text)
            written += [folder / f"{name}.json", folder / f"{name}.md"]
        return written


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
