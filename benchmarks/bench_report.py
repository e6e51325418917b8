"""Collect what the benchmarks measured and print it as ratios at the end of the run.

Each operation is measured twice on the same prepared data, by the project and
by the bare SQL a DBA would type; the ratio project / baseline (of medians) is
what the issue's targets are about. Targets apply at 1,000,000 users; at
smaller sizes the line says so, because fixed costs weigh more there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        """Keep one measurement (kind is 'project' or 'baseline')."""
        self.medians[(operation, size, kind)] = median

    def ratio(self, operation: str, size: int) -> float | None:
        """project / baseline, when both ran."""
        project = self.medians.get((operation, size, "project"))
        baseline = self.medians.get((operation, size, "baseline"))
        if project is None or not baseline:
            return None
        return project / baseline

    def verdict(self, operation: str, size: int) -> str:
        """'ok' / 'target missed' against the operation's target (informative below 1M)."""
        ratio = self.ratio(operation, size)
        target = TARGETS.get(operation)
        if ratio is None or target is None:
            return ""
        word = "ok" if ratio <= target else "target missed"
        return word if size >= TARGET_SIZE else f"{word} (target applies at 1M)"

    def lines(self) -> list[str]:
        """The summary printed at the end of the run."""
        out = []
        if self.medians:
            out.append(f"{'operation':<16}{'users':>7}{'project s':>12}{'baseline s':>12}{'ratio':>8}"
                       f"{'target':>8}  verdict")
            for op, size in sorted({(o, s) for o, s, _ in self.medians}, key=lambda k: (k[1], k[0])):
                project = self.medians.get((op, size, "project"))
                baseline = self.medians.get((op, size, "baseline"))
                ratio = self.ratio(op, size)
                out.append(
                    f"{op:<16}{label(size):>7}{_fmt(project):>12}{_fmt(baseline):>12}"
                    f"{(f'{ratio:.2f}x' if ratio else '-'):>8}{(f'{TARGETS[op]}x' if op in TARGETS else '-'):>8}"
                    f"  {self.verdict(op, size)}"
                )
        for size, (users, sessions, seconds) in sorted(self.seeding.items()):
            out.append(f"seeding {label(size)}: {users} users + {sessions} sessions in {seconds:.2f} s "
                       f"= {users / seconds:,.0f} users/s")
        out.extend(f"{name}: {value}" for name, value in self.figures)
        return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
