"""The sequential study (spec `stopping.enabled`): stop training once the study's question is answered.

Generic early stopping (Hyperband/ASHA, median and patience rules) compares runs at equal iterations, which would
stop the slow-starting scratch arm: exactly the wrong answer here (docs/PAPER.md, "R50-FPN GN over schedules (Fig.
1, Table 1)": scratch trails until after its LR drops). This module asks the question of the study instead, schedule
by schedule in increasing length: once every run of a schedule (every arm, size, hyper-parameter setting and seed)
has its final evaluation, the report's decision rule (report/decision.py, `settled`) says whether the answer can
still change. When it cannot, no more jobs train, the decision is written to STUDY/decision.json (what was settled,
why, which jobs were not run and the device-hours they would have taken at the measured pace), and the report says
so. A rerun with `stopping.enabled=false` trains the rest from the shared checkpoints, losing nothing: the skipped
jobs are ordinary jobs of the same graph.

Where the decision is made:
- inprocess and local: in the launcher (`Stopper`), which runs jobs shortest schedule first, starts no job serving
  a longer schedule before the shorter one is decided (`Stopper.waits_for`), and starts nothing once a decision is
  made.
- slurm: the whole graph is submitted at once, so the decision is a job of the graph (`add_decision_jobs`): one
  `decide/<N>x` job after every run of each schedule but the longest, and every job serving a longer schedule
  waits for it (afterok). A settled decision job writes decision.json, marks the skipped jobs' records "not needed"
  and cancels them (`scancel`); a job started anyway (scancel failed) reads decision.json and exits without training
  (`skipped_by_decision`). The price, on every launcher: a longer schedule's trunk segment waits for the shorter
  schedule's tails and decision instead of running beside them (more wall time, fewer device-hours when a decision
  stops the study; docs/RESULTS.md measures both).
"""

from __future__ import annotations

import graphlib
import json
import subprocess
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchdet.files import atomic_write_json
from scratchdet.study.graph import Job, JobGraph
from scratchdet.study.outcome import JobOutcome, JobState
from scratchdet.study.records import is_finished, iteration_reached, now, plan_digest, read_record, update_record

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
    plan: str | None = None  # records.plan_digest of the plan it was made for: it holds for that plan only


def plan_schedules(study_dir: Path) -> dict[str, float]:
    """{run folder path: schedule} of the planned runs (plan.json)."""
    plan = json.loads((Path(study_dir) / "plan.json").read_text())
    return {r["path"]: float(r["schedule"]) for r in plan.get("runs", [])}


def job_levels(jobs: list[Job], schedule_of: dict[str, float]) -> dict[str, float]:
    """{job id: the schedule the job serves first}: a run's own; a trunk segment's, the shortest schedule forked at
    its end (the longest planned one if none is); a decision job's, the schedule it decides; 0 for a pre-training.

    Every job's dependencies have a lower or equal level, so (level, graph order) is a valid order to run them in,
    and in it each schedule's runs finish before longer schedules spend anything: what lets a decision save compute.
    """
    longest = max(schedule_of.values(), default=0.0)
    forked_at: dict[tuple[str, int], float] = {}
    for job in jobs:
        if job.fork and job.path in schedule_of:
            key = (job.fork.get("trunk"), job.fork.get("iter"))
            forked_at[key] = min(forked_at.get(key, longest), schedule_of[job.path])
    levels = {}
    for job in jobs:
        if job.kind == "pretrain":
            levels[job.id] = 0.0
        elif job.kind == "decide":
            levels[job.id] = float(job.decides)
        elif job.path in schedule_of:
            levels[job.id] = schedule_of[job.path]
        else:
            levels[job.id] = forked_at.get((job.path, job.end_iter), longest)
    return levels


def decision_job_id(schedule: float) -> str:
    return f"decide/{schedule:g}x"


def add_decision_jobs(graph: JobGraph, schedule_of: dict[str, float]) -> JobGraph:
    """The graph of a sequential study under SLURM: a `decide/<N>x` job after every run of each schedule N but the
    longest (and after the previous decision), and every job serving a longer schedule made to wait for the decision
    of the schedule before it. Jobs are reordered so that each comes after its dependencies (stdlib graphlib, ties
    in graph order).

    Args:
        schedule_of: {run folder path: schedule} of the plan's runs (`Plan.runs`).
    """
    levels = job_levels(graph.jobs, schedule_of)
    schedules = sorted(set(schedule_of.values()))
    decisions = []
    for i, schedule in enumerate(schedules[:-1]):
        runs = [j.id for j in graph.jobs if j.kind == "run" and levels[j.id] == schedule]
        previous = [decision_job_id(schedules[i - 1])] if i else []
        decisions.append(
            Job(
                id=decision_job_id(schedule),
                kind="decide",
                path=f"decisions/{schedule:g}x",  # never written: a decision lives in its record and decision.json
                config="",
                overrides=[],
                start_iter=0,
                end_iter=0,
                deps=previous + runs,
                batch_size=0,
                single_process=True,
                decides=schedule,
            )
        )
    before = {s: decision_job_id(schedules[i - 1]) for i, s in enumerate(schedules) if i}
    jobs = []
    for job in graph.jobs:
        wait = before.get(levels[job.id]) if job.kind != "pretrain" else None
        jobs.append(job if wait is None else Job(**{**asdict(job), "deps": [*job.deps, wait]}))
    everything = jobs + decisions
    position = {j.id: i for i, j in enumerate(everything)}
    sorter = graphlib.TopologicalSorter({j.id: j.deps for j in everything})
    sorter.prepare()  # raises graphlib.CycleError on a cycle
    ordered = []
    while sorter.is_active():  # each round, the jobs whose dependencies are placed, in their graph order
        ready = sorted(sorter.get_ready(), key=position.__getitem__)
        ordered += [everything[position[j]] for j in ready]
        sorter.done(*ready)
    return JobGraph(graph.study_dir, graph.cwd, ordered)


class Stopper:
    """Checks, after each job, whether the next schedule in line is complete and settled (the inprocess and local
    launchers call it).

    Disabled (`enabled=False`), it never decides anything and reads nothing.
    """

    def __init__(self, graph: JobGraph, enabled: bool):
        self.graph = graph
        self.enabled = enabled
        self.study_dir = Path(graph.study_dir)
        self.decided: StudyDecision | None = None
        self._checked: set[float] = set()
        if enabled:
            self.schedule_of = plan_schedules(self.study_dir)
            self.schedules = sorted(set(self.schedule_of.values()))
            self.levels = job_levels(graph.jobs, self.schedule_of)

    def level(self, job) -> float:
        """The schedule a job serves first (`job_levels`); 0 for every job with stopping off."""
        return self.levels[job.id] if self.enabled else 0.0

    def _runs(self, schedule: float) -> list[Job]:
        return [j for j in self.graph.jobs if self.schedule_of.get(j.path) == schedule]

    def _complete(self, schedule: float) -> bool:
        runs = self._runs(schedule)
        return bool(runs) and all(is_finished(self.study_dir, j) for j in runs)

    def _undecidable(self, schedule: float, ended: Collection[str]) -> bool:
        """Every run of `schedule` ended (`ended`: job ids with an outcome) and one of them failed or was not run: the
        schedule can never be complete, so it decides nothing and the longer schedules train on, as under SLURM,
        where the decision job waits for its runs with afterany and says "not settled"."""
        runs = self._runs(schedule)
        return bool(runs) and all(j.id in ended for j in runs) and not self._complete(schedule)

    def check(self, ended: Collection[str] = ()) -> StudyDecision | None:
        """The decision, once a complete schedule is settled (then always the same one); None until then.

        Only the shortest schedules are looked at in order: the study's answer is about the first schedule at which
        scratch catches up, so a longer schedule finished earlier (it cannot be, in a trunk/fork plan) decides
        nothing before the shorter ones. A schedule that can never be complete (`_undecidable`, given the job ids
        that `ended`) is passed over.
        """
        if not self.enabled or self.decided is not None:
            return self.decided
        from scratchdet.report.decision import settled
        from scratchdet.report.results import load_study

        for schedule in self.schedules:
            if not self._complete(schedule):
                if self._undecidable(schedule, ended):
                    continue
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

    def waits_for(self, ended: Collection[str]) -> float | None:
        """The schedule whose decision the launcher waits for before it starts any job serving a longer one (`level`
        above it); None with stopping off, once a decision is made, or when only the longest schedule is left.

        A schedule counts as decided once checked and not settled, or once it can never be complete (`_undecidable`:
        `ended` holds the job ids with an outcome).
        """
        if not self.enabled or self.decided is not None:
            return None
        for schedule in self.schedules[:-1]:
            if schedule not in self._checked and not self._undecidable(schedule, ended):
                return schedule
        return None

    def record(self, not_run: list[str]) -> StudyDecision:
        """Writes decision.json with the jobs left unstarted and what they would have cost; returns it."""
        assert self.decided is not None
        return write_decision(self.graph, self.decided, not_run)


def write_decision(graph: JobGraph, decision: StudyDecision, not_run: list[str]) -> StudyDecision:
    """Fills in the jobs `not_run`, their iterations and device-hours (at this study's measured pace), and writes
    STUDY/decision.json (atomic); returns the decision."""
    study_dir = Path(graph.study_dir)
    iterations = sum(_iterations_left(study_dir, graph.job(j)) for j in not_run)
    per_iter = _measured_seconds_per_iteration(study_dir, graph)
    decision.not_run = sorted(not_run)
    decision.iterations_not_run = iterations
    decision.device_hours_not_spent = None if per_iter is None else iterations * per_iter / 3600
    decision.plan = plan_digest(study_dir)
    atomic_write_json(study_dir / DECISION_FILE, asdict(decision))
    return decision


def _iterations_left(study_dir: Path, job: Job) -> int:
    """Detection iterations of `job` not trained yet: what the decision saves. A job part-trained by an earlier,
    interrupted launch (or cancelled while running, if SLURM started it before its decision job marked it) has
    spent the iterations up to the point its run folder shows (`records.iteration_reached`); counting its whole
    length would overstate the saving. A job of unknown length (a pre-training whose iterations the plan cannot
    tell) counts 0; a decision never skips a pre-training anyway (it serves every schedule, level 0)."""
    if job.end_iter is None:
        return 0
    reached = iteration_reached(study_dir, job)
    return job.end_iter - max(job.start_iter, reached or 0)


def _measured_seconds_per_iteration(study_dir: Path, graph: JobGraph) -> float | None:
    """Device-seconds per detection iteration over the study's finished work (time_per_iter x processes), the
    pace the skipped jobs would have trained at; None before any timed record."""
    from scratchdet.engine.metrics import read_metrics

    seconds, iterations = 0.0, 0
    for path in {j.path for j in graph.jobs if j.kind not in ("pretrain", "decide")}:
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
    """The decision a sequential launch recorded in the study folder for its current plan, or None (none, unreadable,
    or made for another plan: arms, schedules, sizes, seeds or the margin changed since, so it no longer holds)."""
    path = Path(study_dir) / DECISION_FILE
    try:
        decision = StudyDecision(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return decision if decision.plan == plan_digest(study_dir) else None


def without_decisions(graph: JobGraph) -> JobGraph:
    """The graph without its decision jobs and the waits on them: what a job's work depends on (used to set aside a
    run and what was trained from it, --replan, where a wait on a decision is no dependency of the work)."""
    jobs = [
        Job(**{**asdict(j), "deps": [d for d in j.deps if not d.startswith("decide/")]})
        for j in graph.jobs
        if j.kind != "decide"
    ]
    return JobGraph(graph.study_dir, graph.cwd, jobs)


def skipped_by_decision(study_dir: str | Path, job_id: str) -> StudyDecision | None:
    """The recorded decision that left `job_id` unneeded, or None: a job a decision cancelled that started anyway
    (scancel failed or came late) exits without training. A launch with stopping off removes decision.json first
    (study/runner.py), so this never holds back a study that is asked to finish."""
    decision = read_decision(study_dir)
    return decision if decision is not None and job_id in decision.not_run else None


def _cancel(scheduler_ids: list[str]) -> None:
    """scancel, best effort: the jobs were already marked not needed and would exit at once if they started."""
    if not scheduler_ids:
        return
    try:
        result = subprocess.run(["scancel", *scheduler_ids], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"scancel {' '.join(scheduler_ids)}: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if result.returncode != 0:
        print(f"scancel {' '.join(scheduler_ids)}: {result.stderr.strip()}", file=sys.stderr)


def decide(graph: JobGraph, job: Job) -> JobOutcome:
    """Runs decision job `job` (kind "decide", SLURM): decides whether the study is settled after schedule
    `job.decides`; when it is, writes decision.json, marks every job serving a longer schedule that is not finished
    "not needed" in its record, and cancels their SLURM jobs. Returns a CHECKED outcome saying which.

    A run of the schedule that did not finish (it failed: the decision waits for the runs with afterany) leaves
    the schedule not settled, and the longer schedules train on, as they do on the inprocess and local launchers.
    The decision is recorded with the plan it is about (`records.plan_digest`): a changed plan decides again.
    """
    from scratchdet.report.decision import settled
    from scratchdet.report.results import load_study

    study_dir = Path(graph.study_dir)
    schedule = float(job.decides)
    schedule_of = plan_schedules(study_dir)
    levels = job_levels(graph.jobs, schedule_of)
    update_record(study_dir, job.id, plan=plan_digest(study_dir))
    stale = study_dir / DECISION_FILE
    if stale.exists():  # an earlier decision (another plan's, or set aside): this job decides anew
        stale.unlink()
    runs = [j for j in graph.jobs if j.kind == "run" and levels[j.id] == schedule]
    missing = [j.id for j in runs if not is_finished(study_dir, j)]
    if missing:
        return JobOutcome(JobState.CHECKED, f"not settled at {schedule:g}x: not finished: {', '.join(missing)}")
    answer = settled(load_study(study_dir), schedule)
    if not answer.settled:
        return JobOutcome(JobState.CHECKED, f"not settled at {schedule:g}x: {answer.reason}")
    not_run = [j.id for j in graph.jobs if levels[j.id] > schedule and not is_finished(study_dir, j)]
    decision = write_decision(graph, StudyDecision(schedule, str(answer.kind), answer.reason), not_run)
    why = JobOutcome(JobState.NOT_NEEDED, f"settled at {schedule:g}x: {answer.reason}").to_record()
    for job_id in not_run:
        update_record(study_dir, job_id, state="not needed", ended=now(), outcome=why)
    _cancel([sid for j in not_run if (sid := read_record(study_dir, j).get("scheduler_id"))])
    hours = decision.device_hours_not_spent
    return JobOutcome(
        JobState.CHECKED,
        f"settled at {schedule:g}x: {answer.reason}; {len(not_run)} job(s) not needed ({decision.iterations_not_run} "
        f"iterations{'' if hours is None else f', about {hours:.3g} device-hours'})",
    )
