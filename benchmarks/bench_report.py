"""Collect what the benchmarks measured and print it as ratios at the end of the run.

Each operation is measured on the same prepared data by the project, by the
bare SQL a DBA would type (the baseline) and by the bare SQL of the least work
the issue also asks for (the floor: a checksum, a log row per user); the
migration also by a hand-written pgroll-style backfill (keyset batches of 1,000
in a procedure that commits after each, with a log). Every line shows the
project's ratio to the baseline, to the floor and, for the migrations, to the
backfill; the verdict compares the ratio each target is defined on (issue #20):

- backup: <= 1.3x its floor (copies + one checksum pass);
- migration (one call): <= 1.5x the baseline (one bare ``UPDATE ... FROM``);
- migration_cli (a committed transaction per batch): <= 1.15x the one-call migration;
- rollback: <= 1.4x the baseline (one bare ``UPDATE ... FROM`` the backup);
- validation_pre, validation_post: <= 1.5x their floor (counts + one checksum pass);
- and the migrations must beat the backfill (ratio < 1).

Targets apply at 1,000,000 users; at smaller sizes the line says so, because
fixed costs weigh more there.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

#: operation -> (what the ratio is taken to, the most it may be)
TARGETS: dict[str, tuple[str, float]] = {
    "backup": ("floor", 1.3),
    "migration": ("baseline", 1.5),
    "migration_cli": ("migration", 1.15),
    "rollback": ("baseline", 1.4),
    "validation_pre": ("floor", 1.5),
    "validation_post": ("floor", 1.5),
}
#: operations that must beat the hand-written backfill
BEAT_BACKFILL = ("migration", "migration_cli")
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

    def versus(self, operation: str, size: int, reference: str) -> float | None:
        """The project's median over ``reference``'s: a kind of the same operation ('baseline',
        'floor', 'backfill') or another operation's project median ('migration')."""
        project = self.medians.get((operation, size, "project"))
        if reference in ("baseline", "floor", "backfill"):
            other = self.medians.get((operation, size, reference))
        else:
            other = self.medians.get((reference, size, "project"))
        if project is None or not other:
            return None
        return project / other

    def verdict(self, operation: str, size: int) -> str:
        """'ok' / 'target missed' against the operation's target (informative below 1M).

        The backfill comparison is added for the migrations; below 1M the line says that
        the target applies at 1M.
        """
        words = []
        if operation in TARGETS:
            reference, limit = TARGETS[operation]
            ratio = self.versus(operation, size, reference)
            if ratio is not None:
                words.append(f"{'ok' if ratio <= limit else 'target missed'} "
                             f"({ratio:.2f}x {reference}, target {limit}x)")
        if operation in BEAT_BACKFILL:
            reference = "migration" if operation == "migration_cli" else operation
            backfill = self.medians.get((reference, size, "backfill"))
            project = self.medians.get((operation, size, "project"))
            if backfill and project is not None:
                ratio = project / backfill
                words.append(f"{'beats' if ratio < 1 else 'slower than'} the backfill ({ratio:.2f}x)")
        if not words:
            return ""
        text = "; ".join(words)
        return text if size >= TARGET_SIZE else f"{text} [target applies at 1M]"

    def lines(self) -> list[str]:
        """The summary printed at the end of the run."""
        out = []
        if self.medians:
            out.append(f"{'operation':<16}{'users':>6}{'project s':>11}{'baseline s':>11}{'floor s':>9}"
                       f"{'vs base':>9}{'vs floor':>9}{'vs backfill':>12}  verdict")
            for op, size in sorted({(o, s) for o, s, _ in self.medians}, key=lambda k: (k[1], k[0])):
                project = self.medians.get((op, size, "project"))
                baseline = self.medians.get((op, size, "baseline"))
                floor = self.medians.get((op, size, "floor"))
                backfill_of = "migration" if op == "migration_cli" else op
                backfill = self.medians.get((backfill_of, size, "backfill"))
                out.append(
                    f"{op:<16}{label(size):>6}{_fmt(project):>11}{_fmt(baseline):>11}{_fmt(floor):>9}"
                    f"{_times(self.versus(op, size, 'baseline')):>9}{_times(self.versus(op, size, 'floor')):>9}"
                    f"{_times(project / backfill if project is not None and backfill else None):>12}"
                    f"  {self.verdict(op, size)}"
                )
            for op, size in sorted({(o, s) for o, s, k in self.medians if k == "backfill"}, key=lambda k: k[1]):
                out.append(f"{'(backfill)':<16}{label(size):>6}{_fmt(self.medians[(op, size, 'backfill')]):>11}"
                           f"{_fmt(self.medians.get((op, size, 'baseline'))):>11}{'':>9}"
                           f"{_times(self.ratio(op, size, 'backfill')):>9}   pgroll-style keyset backfill, "
                           "1,000 per committed batch, logged")
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
                            **{kind: self.medians.get((op, size, kind))
                               for kind in ("project", "baseline", "floor", "backfill")},
                            "vs_baseline": self.versus(op, size, "baseline"),
                            "vs_floor": self.versus(op, size, "floor"),
                            "vs_backfill": self.versus(op, size, "backfill"),
                            "target": ({"reference": TARGETS[op][0], "at_most": TARGETS[op][1],
                                        "ratio": self.versus(op, size, TARGETS[op][0])} if op in TARGETS else None),
                            "verdict": self.verdict(op, size)} for op, size in ops],
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
