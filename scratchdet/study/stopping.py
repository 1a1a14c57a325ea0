"""The sequential study (spec `stopping.enabled`): stop launching once the study's question is answered.

Generic early stopping (Hyperband/ASHA, median and patience rules) compares runs at equal iterations, which would
stop the slow-starting scratch arm: exactly the wrong answer here (docs/PAPER.md, "R50-FPN GN over schedules (Fig.
1, Table 1)": scratch trails until after its LR drops). This module asks the question of the study instead, schedule
by schedule in increasing length: once every run of a schedule (every arm, size, hyper-parameter setting and seed)
has its final evaluation, the report's decision rule (report/decision.py, `settled`) says whether the answer can
still change. When it cannot, the launchers start no more jobs, the decision is written to STUDY/decision.json (what
was settled, why, which jobs were not run and the device-hours they would have taken at the measured pace), and the
report says so. A rerun with `stopping.enabled=false` trains the rest from the shared checkpoints, losing nothing:
the skipped jobs are ordinary jobs of the same graph.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchdet.files import atomic_write_json
from scratchdet.study.graph import JobGraph
from scratchdet.study.jobs import is_finished

DECISION_FILE = "decision.json"


@dataclass
class StudyDecision:
    """What the sequential study decided after the runs of `schedule` (the record of decision.json)."""

    schedule: float
    kind: str  # "caught_up" | "cannot_catch_up"
    reason: str
    not_run: list[str] = field(default_factory=list)  # job ids the decision left unstarted (or stopped)
    iterations_not_run: int = 0
    device_hours_not_spent: float | None = None  # at the measured time per iteration of this study's runs


def _plan_schedules(study_dir: Path) -> dict[str, float]:
    """{run folder path: schedule} of the planned runs (plan.json)."""
    plan = json.loads((study_dir / "plan.json").read_text())
    return {r["path"]: float(r["schedule"]) for r in plan.get("runs", [])}


class Stopper:
    """Checks, after each job, whether the next schedule in line is complete and settled (the launchers call it).

    Disabled (`enabled=False`), it never decides anything and reads nothing.
    """

    def __init__(self, graph: JobGraph, enabled: bool):
        self.graph = graph
        self.enabled = enabled
        self.study_dir = Path(graph.study_dir)
        self.decided: StudyDecision | None = None
        self._checked: set[float] = set()
        if enabled:
            self.schedule_of = _plan_schedules(self.study_dir)
            self.schedules = sorted(set(self.schedule_of.values()))

    def level(self, job) -> float:
        """The schedule a job serves first: a run's own; a trunk segment's, the shortest schedule forked at its end;
        0 for a pre-training. With stopping on, the launchers run jobs in (level, graph order): every job's
        dependencies have a lower or equal level, so this is a valid order, and each schedule's runs finish before
        longer schedules spend anything, which is what lets a decision save compute."""
        if not self.enabled or job.kind == "pretrain":
            return 0.0
        if job.path in self.schedule_of:
            return self.schedule_of[job.path]
        forked_at = [
            self.schedule_of[j.path]
            for j in self.graph.jobs
            if j.fork and j.fork.get("trunk") == job.path and j.fork.get("iter") == job.end_iter
        ]
        return min(forked_at, default=max(self.schedules, default=0.0))

    def _complete(self, schedule: float) -> bool:
        runs = [j for j in self.graph.jobs if self.schedule_of.get(j.path) == schedule]
        return bool(runs) and all(is_finished(self.study_dir, j) for j in runs)

    def check(self) -> StudyDecision | None:
        """The decision, once a complete schedule is settled (then always the same one); None until then.

        Only the shortest schedules are looked at in order: the study's answer is about the first schedule at which
        scratch catches up, so a longer schedule finished earlier (it cannot be, in a trunk/fork plan) decides
        nothing before the shorter ones.
        """
        if not self.enabled or self.decided is not None:
            return self.decided
        from scratchdet.report.decision import settled
        from scratchdet.report.results import load_study

        for schedule in self.schedules:
            if not self._complete(schedule):
                return None
            if schedule in self._checked:
                continue
            self._checked.add(schedule)
            if schedule == self.schedules[-1]:
                return None  # nothing left to skip
            decision = settled(load_study(self.study_dir), schedule)
            if decision.settled:
                self.decided = StudyDecision(schedule, str(decision.kind), decision.reason)
                return self.decided
        return None

    def record(self, not_run: list[str]) -> StudyDecision:
        """Writes decision.json with the jobs left unstarted and what they would have cost; returns it."""
        assert self.decided is not None
        jobs = [self.graph.job(j) for j in not_run]
        iterations = sum(j.iters or 0 for j in jobs)
        per_iter = _measured_seconds_per_iteration(self.study_dir, self.graph)
        self.decided.not_run = sorted(not_run)
        self.decided.iterations_not_run = iterations
        self.decided.device_hours_not_spent = None if per_iter is None else iterations * per_iter / 3600
        atomic_write_json(self.study_dir / DECISION_FILE, asdict(self.decided))
        return self.decided


def _measured_seconds_per_iteration(study_dir: Path, graph: JobGraph) -> float | None:
    """Device-seconds per detection iteration over the study's finished work (time_per_iter x processes), the
    pace the skipped jobs would have trained at; None before any timed record."""
    from scratchdet.engine.metrics import read_metrics

    seconds, iterations = 0.0, 0
    for path in {j.path for j in graph.jobs if j.kind != "pretrain"}:
        world, previous = 1, None
        for record in read_metrics(study_dir / path):
            if record.get("type") == "start":
                world, previous = int(record.get("world_size") or 1), record.get("iter")
            elif record.get("type") == "train" and isinstance(record.get("time_per_iter"), (int, float)):
                if previous is not None and record["iter"] > previous:
                    seconds += (record["iter"] - previous) * record["time_per_iter"] * world
                    iterations += record["iter"] - previous
                previous = record["iter"]
    return seconds / iterations if iterations else None


def read_decision(study_dir: str | Path) -> StudyDecision | None:
    """The decision a sequential launch recorded in the study folder, or None."""
    path = Path(study_dir) / DECISION_FILE
    try:
        return StudyDecision(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
