"""`scratchdet study status DIR [--json]`: where every job of a study stands, read from outside the jobs.

Sources, in order of authority: the run folders (a checkpoint at a job's last iteration means finished, whatever
else says), the scheduler (squeue: queued, waiting for a dependency, running), and the job records the launchers and
jobs write (study/jobs.py: failed with its error, preempted, requeued N times). Iteration, time per iteration and
the last AP come from each run's metrics.jsonl.

Exit status: 0 when every job finished, 1 when one failed (or was cancelled by a failed dependency), 3 while work
is still pending.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ScratchdetError
from scratchdet.study.graph import Job, read_graph
from scratchdet.study.outcome import JobOutcome
from scratchdet.study.records import is_finished, iteration_reached, read_record, squeue_states

FAILED = ("failed", "cancelled")
QUEUED_STATES = ("running", "queued", "waiting", "requeued")


@dataclass
class JobStatus:
    id: str
    kind: str
    # finished | running | queued | waiting | requeued | preempted | failed | cancelled | not submitted | stopped |
    # not needed (a sequential study settled its question before it: decision.json)
    state: str
    scheduler_id: str | None
    iteration: int | None
    start_iter: int
    end_iter: int | None
    time_per_iter: float | None  # seconds, the last log window
    eta_s: float | None
    last_ap: float | None  # bbox AP (or VOC mAP, or top-1 for a pre-training) at the last evaluation
    last_ap_iter: int | None
    requeues: int
    error: str | None
    outcome: dict | None  # what the job's last launch did (study/outcome.py's record form), None before one


def _alive(record: dict) -> bool:
    pid = record.get("pid")
    if not pid or record.get("host") not in (None, socket.gethostname()):
        return True  # cannot tell from here: trust the record
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _last_metric(evals: list[dict]) -> tuple[float | None, int | None]:
    """(bbox AP, or VOC mAP, or top-1; iteration) of the LAST evaluation; (None, its iteration) when it had no
    predictions: an earlier number would be shown as if it were current."""
    if not evals:
        return None, None
    record = evals[-1]
    for value in ((record.get("bbox") or {}).get("AP"), (record.get("voc") or {}).get("mAP"), record.get("top1")):
        if isinstance(value, (int, float)):
            return float(value), record.get("iter")
    return None, record.get("iter")


def job_status(study_dir: Path, job: Job, queue: dict[str, str] | None, finished: set[str]) -> JobStatus:
    record = read_record(study_dir, job.id)
    scheduler_id = record.get("scheduler_id")
    # A trunk's segments share its run folder: each shows the records of its own iterations only.
    end = job.end_iter
    records = [r for r in read_metrics(study_dir / job.path) if end is None or r.get("iter", 0) <= end]
    trains = [r for r in records if r.get("type") == "train" and isinstance(r.get("iter"), int)]
    last_ap, last_ap_iter = _last_metric([r for r in records if r.get("type") == "eval"])
    iteration = iteration_reached(study_dir, job)
    state = record.get("state") or "not submitted"
    if is_finished(study_dir, job):
        state = "finished"
    elif queue is not None and scheduler_id in queue:
        slurm_state = queue[scheduler_id]
        if slurm_state == "PENDING":
            state = "waiting" if any(d not in finished for d in job.deps) else "queued"
        elif slurm_state.startswith("REQUEUE"):
            state = "requeued"
        else:
            state = "running" if slurm_state in ("RUNNING", "COMPLETING", "CONFIGURING") else slurm_state.lower()
    elif queue is not None and state in ("submitted", "running", "requeued", "preempted"):
        # Gone from the queue without finishing: cancelled (e.g. a dependency failed), or killed.
        state = "cancelled"
    elif state == "running" and not _alive(record):
        state = "stopped"
    time_per_iter = trains[-1].get("time_per_iter") if trains else None
    eta = None
    if state == "running" and time_per_iter and iteration is not None and job.end_iter is not None:
        eta = (job.end_iter - iteration) * time_per_iter
    requeues = int(record.get("requeues", 0))
    return JobStatus(
        id=job.id,
        kind=job.kind,
        state=state,
        scheduler_id=scheduler_id,
        iteration=iteration,
        start_iter=job.start_iter,
        end_iter=job.end_iter,
        time_per_iter=time_per_iter,
        eta_s=eta,
        last_ap=last_ap,
        last_ap_iter=last_ap_iter,
        requeues=requeues,
        error=record.get("error") if state in FAILED or state == "stopped" else None,
        outcome=record.get("outcome") if JobOutcome.from_record(record.get("outcome")) else None,
    )


def study_status(study_dir: str | Path) -> list[JobStatus]:
    """Every job's status, in graph order.

    Raises:
        ScratchdetError: not a study folder.
    """
    graph = read_graph(study_dir)
    root = Path(graph.study_dir)
    uses_slurm = any(read_record(root, j.id).get("launcher") == "slurm" for j in graph.jobs)
    queue = None
    if uses_slurm:
        try:
            queue = squeue_states()
        except ScratchdetError:
            queue = None  # on a machine without SLURM the records still say what was submitted
    finished = {j.id for j in graph.jobs if is_finished(root, j)}
    statuses = [job_status(root, job, queue, finished) for job in graph.jobs]
    from scratchdet.study.stopping import read_decision

    decision = read_decision(root)
    for status in statuses if decision is not None else []:
        # A job still queued or running (scancel failed or came late) shows as such until it exits, not needed.
        if status.id in decision.not_run and status.state not in ("finished", *QUEUED_STATES):
            status.state = "not needed"  # the sequential study settled its question first (decision.json)
            status.error = None
    return statuses


def exit_code(statuses: list[JobStatus]) -> int:
    if any(s.state in FAILED for s in statuses):
        return 1
    return 0 if all(s.state in ("finished", "not needed") for s in statuses) else 3


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def iteration_counts(statuses: list[JobStatus]) -> tuple[int, int]:
    """(iterations done, iterations planned) over every job, running jobs' done iterations included."""
    total_iters = sum((s.end_iter or 0) - s.start_iter for s in statuses)
    done_iters = sum(
        ((s.end_iter or 0) - s.start_iter) if s.state == "finished" else max(0, (s.iteration or 0) - s.start_iter)
        for s in statuses
    )
    return done_iters, total_iters


def progress_line(statuses: list[JobStatus]) -> str:
    """The whole study in one line: jobs finished, iterations done of all planned, the longest running ETA."""
    done = sum(s.state == "finished" for s in statuses)
    done_iters, total_iters = iteration_counts(statuses)
    etas = [s.eta_s for s in statuses if s.eta_s is not None]
    failed = sum(s.state in FAILED for s in statuses)
    return (
        f"{done}/{len(statuses)} jobs finished, {done_iters}/{total_iters} iterations"
        + (f", {failed} failed" if failed else "")
        + (f", running jobs end in {_duration(max(etas))}" if etas else "")
    )


def _no_ap(s: JobStatus) -> str:
    return "-" if s.last_ap_iter is None else f"none @{s.last_ap_iter}"  # evaluated, no predictions


def _metric_cell(s: JobStatus) -> str:
    if s.last_ap is None:
        return _no_ap(s)
    label = "top-1 " if s.kind == "pretrain" else ""  # a pre-training's number is its classification top-1
    return f"{label}{s.last_ap:.1f} @{s.last_ap_iter}"


def format_status(statuses: list[JobStatus]) -> str:
    """The status as a table, with the progress line on top."""
    header = ("job", "state", "slurm id", "iter", "s/iter", "ETA", "last AP (%)", "requeues")
    rows = []
    for s in statuses:
        end = "?" if s.end_iter is None else s.end_iter
        rows.append(
            (
                s.id,
                s.state,
                s.scheduler_id or "-",
                f"{s.iteration if s.iteration is not None else s.start_iter}/{end}",
                f"{s.time_per_iter:.3g}" if s.time_per_iter else "-",
                _duration(s.eta_s),
                _metric_cell(s),
                str(s.requeues),
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [progress_line(statuses), "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines += [f"{s.id}: {s.error}" for s in statuses if s.error]
    return "\n".join(lines)


def status_json(statuses: list[JobStatus]) -> str:
    return json.dumps(
        {"progress": progress_line(statuses), "exit_code": exit_code(statuses), "jobs": [asdict(s) for s in statuses]},
        indent=2,
    )


class StudyThroughput:
    """Counts the images the jobs of this launch trained, for the closing throughput line."""

    def __init__(self):
        self.trained_images = self.pretrain_images = 0
        self.started = time.perf_counter()

    def count(self, job: Job, outcome: JobOutcome) -> None:
        if not outcome.trained:
            return
        images = (job.iters or 0) * (job.batch_size or 0)
        if job.kind == "pretrain":
            self.pretrain_images += images
        else:
            self.trained_images += images

    def summary(self) -> str:
        """The study's training throughput in this launch: detection training images per wall-second over the whole
        launch, pre-training, evaluations, checkpoints and start-up included: what a user waits for. Pre-training
        images (small classification crops) are counted apart: adding them would make a study look faster the more
        of its time goes to pre-training."""
        elapsed = time.perf_counter() - self.started
        rate = self.trained_images / elapsed if elapsed > 0 else 0.0
        pretrain = f" (and {self.pretrain_images} pre-training images)" if self.pretrain_images else ""
        return (
            f"[study] trained {self.trained_images} detection images{pretrain} in {elapsed:.0f} s: {rate:.2f} "
            "detection training images per wall-second"
        )


class StudyProgress:
    """The study's progress line read from its run folders (running jobs' iterations included, as `study status`
    shows it), with the time left at the pace of this launch: iterations done since it began (a resumed study's
    earlier iterations do not count) per wall-second."""

    def __init__(self, study_dir: str | Path):
        self.study_dir = Path(study_dir)
        self.started = time.perf_counter()
        self.done_before = iteration_counts(study_status(self.study_dir))[0]

    def line(self) -> str:
        statuses = study_status(self.study_dir)
        done, total = iteration_counts(statuses)
        pace = (done - self.done_before) / (time.perf_counter() - self.started)
        left = f", about {(total - done) / pace / 60:.1f} min left at this pace" if pace > 0 and done < total else ""
        return f"[study] progress: {progress_line(statuses)}{left}"
