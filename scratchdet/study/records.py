"""A study job's record and whether its work is done: what every launcher, `study status` and the jobs themselves
read, kept apart from running jobs (study/jobs.py) so that the sequential study's decision (study/stopping.py), which
jobs.py runs, can read them without an import cycle.

Records (jobs/<job id>.json, written atomically): the launcher writes what it submitted (scheduler job id, number of
submissions); the job writes its state (running, finished, failed with the error, preempted), its start and end
times, where it ran, how often it was requeued, and its outcome (study/outcome.py).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from scratchdet.engine.metrics import read_metrics
from scratchdet.errors import ScratchdetError
from scratchdet.files import atomic_write_json
from scratchdet.run_folder import RunFolder
from scratchdet.study.graph import Job
from scratchdet.study.outcome import JobOutcome, JobState

RECORDS = "jobs"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def record_path(study_dir: str | Path, job_id: str) -> Path:
    return Path(study_dir) / RECORDS / f"{job_id}.json"


def read_record(study_dir: str | Path, job_id: str) -> dict:
    try:
        record = json.loads(record_path(study_dir, job_id).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def update_record(study_dir: str | Path, job_id: str, **fields) -> dict:
    """Merges `fields` into the job's record (atomic replace); returns the record."""
    path = record_path(study_dir, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**read_record(study_dir, job_id), **fields}
    atomic_write_json(path, record)
    return record


def squeue_states() -> dict[str, str]:
    """{SLURM job id: state} of every job the controller still lists.

    Raises:
        ScratchdetError: squeue is missing or fails (no SLURM here).
    """
    try:
        result = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScratchdetError(f"squeue failed ({type(e).__name__}: {e}); is this a SLURM login node?") from None
    if result.returncode != 0:
        raise ScratchdetError(f"squeue failed: {result.stderr.strip()}")
    return dict(line.split(None, 1) for line in result.stdout.splitlines() if line.strip())


def plan_digest(study_dir: str | Path) -> str | None:
    """A digest of the study's plan.json (every planned run, trunk, pre-training, input convention, margin and seed
    axis; not the `stopping` switch): a sequential study's decisions hold for this plan only. None without one."""
    try:
        plan = json.loads((Path(study_dir) / "plan.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(plan, dict):
        plan.pop("stopping", None)
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def iteration_reached(study_dir: str | Path, job: Job) -> int | None:
    """The last iteration `job`'s run folder shows trained, capped at the job's end_iter: its checkpoint or its last
    training record, whichever is later; None when the folder shows neither.

    A trunk's segments share a run folder: a later segment's records or checkpoint mean this one's range was trained
    to its end (hence the cap), and a value at or below its start_iter means the segment itself trained nothing yet.
    """
    end = job.end_iter
    trains = [r["iter"] for r in read_metrics(Path(study_dir) / job.path, "train") if isinstance(r.get("iter"), int)]
    checkpoint = RunFolder(Path(study_dir) / job.path).checkpoint_iteration()
    reached = max([checkpoint or 0, *trains]) if (trains or checkpoint) else None
    if reached is not None and end is not None:
        reached = min(reached, end)
    return reached


def is_finished(study_dir: str | Path, job: Job) -> bool:
    """Whether the job's work is in its run folder: a pre-training's summary (written after its final evaluation),
    or a checkpoint at its last iteration AND the evaluation of that iteration.

    Finished means evaluated: the trainer checkpoints before it evaluates (engine/trainer.py), so a run killed
    between the two has its last checkpoint and not its number; a rerun then evaluates and trains nothing. Every
    detection job evaluates at its end (eval.period=0 means "only at the end"; a trunk segment's end is its fork
    point), so the report of `end_iter` is what marks it done. The run folder decides, not the record: a record can
    be lost, checkpoints and evaluation reports are written atomically (scratchdet/files.py).

    A sequential study's decision job (kind "decide", study/stopping.py) has no run folder: it is done once its
    record holds its decision for the current plan (a decision about another plan, e.g. before arms or seeds were
    added, is made again; a lost record only makes it decide again, from the same finished runs).
    """
    if job.kind == "decide":
        record = read_record(study_dir, job.id)
        outcome = JobOutcome.from_record(record.get("outcome"))
        return (
            outcome is not None and outcome.state is JobState.CHECKED and record.get("plan") == plan_digest(study_dir)
        )
    folder = RunFolder(Path(study_dir) / job.path)
    if job.kind == "pretrain":
        return folder.pretrain_summary.is_file()
    done = folder.checkpoint_iteration()
    if done is None or job.end_iter is None or done < job.end_iter:
        return False
    return folder.eval_report(job.end_iter).is_file()
