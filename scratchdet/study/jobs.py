"""Running one job of a study's graph (study/graph.py), wherever it was launched, and its record.

`scratchdet study job STUDY_DIR JOB_ID` (or `run_job`) runs one job: in this process, under torchrun (the local
launcher), or as the tasks of a SLURM job (the slurm launcher, through submitit). Every process of the job calls it;
the ranks come from torchrun's or SLURM's environment (scratchdet/distributed.py).

A job is idempotent: a finished one does nothing, an interrupted one resumes from its run folder's last checkpoint,
a fork not yet made is made from its trunk's checkpoint. One writer per run folder: rank 0 holds an exclusive lock
(jobs/<run path>.lock) while the job runs, so a second launch of the same run fails at once instead of mixing
two runs' writes.

Records (jobs/<job id>.json, study/records.py): the launcher writes what it submitted, the job its state, times,
host, requeues and outcome. `scratchdet study status` reads them with the run folders.

Preemption: SIGTERM (a preemption, `scancel --signal=TERM`) or SIGUSR2 (SLURM's warning before the time limit, as
submitit asks for it) checkpoints at the iteration boundary (engine/loop.py). Under SLURM, rank 0 then requeues
the job (`scontrol requeue`): it comes back with the same job id, so its dependents keep waiting for it, and resumes
exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from scratchdet.distributed import (
    env_world_size,
    init_distributed,
    main_first,
    scheduler_rank,
    shutdown_distributed,
)
from scratchdet.errors import ConfigError, Preempted, ScratchdetError
from scratchdet.run_folder import RunFolder
from scratchdet.study.graph import Job, JobGraph, read_graph
from scratchdet.study.outcome import JobOutcome, JobState
from scratchdet.study.records import RECORDS, is_finished, now, read_record, update_record
from scratchdet.study.stopping import decide, skipped_by_decision

# After requeueing itself, a job waits this long for SLURM to stop it: exiting first could let the job end as
# COMPLETED, and an afterok dependent would start on an unfinished run.
REQUEUE_WAIT_S = 300


def job_config(job: Job, study_dir: str | Path, extra: list[str] | None = None):
    """The config the job trains with: the one its run folder's config.yaml must match (up to the keys a resumed
    run may change, engine/run_dir.py RESUMABLE_KEYS). A pre-training's PretrainConfig, else a detection Config.

    Raises:
        ConfigError: the job's config or overrides are invalid.
    """
    out = Path(study_dir) / job.path
    if job.kind == "pretrain":
        from scratchdet.pretrain.config import load_pretrain_config

        return load_pretrain_config(job.config, [*job.overrides, f"output={out}", *(extra or [])])
    from scratchdet.study.plan import run_config

    return run_config(job.config, job.overrides, out, [f"train.max_iters={job.end_iter}", *job.extra, *(extra or [])])


@contextmanager
def run_folder_lock(study_dir: str | Path, job: Job):
    """Exclusive lock on the job's run folder for the duration (rank 0 only).

    Raises:
        ScratchdetError: another process holds it (the run is being trained elsewhere).
    """
    path = Path(study_dir) / RECORDS / f"{job.path}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ScratchdetError(
                f"{job.path} is being trained by {holder} (lock {path}); a second writer would mix two runs. "
                "Wait for it, or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, job {job.id}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train_until(study_dir: Path, job: Job) -> JobOutcome:
    from scratchdet.engine.trainer import train

    if is_finished(study_dir, job):
        return JobOutcome(JobState.SKIPPED, "(finished)")
    done = RunFolder(study_dir / job.path).checkpoint_iteration()
    resume = ["resume=true"] if done is not None else []
    train(job_config(job, study_dir, resume))
    if done is not None and done >= job.end_iter:
        return JobOutcome(JobState.RESUMED, f"to evaluate iteration {done}, which an interruption left unevaluated")
    if job.kind == "segment" and done == job.start_iter:
        # The plan, not a recovery from a crash.
        return JobOutcome(JobState.CONTINUED, f"the trunk from iteration {done}")
    return JobOutcome(JobState.RESUMED if resume else JobState.TRAINED)


def _pretrain(study_dir: Path, job: Job) -> JobOutcome:
    from scratchdet.pretrain.classify import pretrain

    if is_finished(study_dir, job):
        return JobOutcome(JobState.SKIPPED, "(finished)")
    resume = ["resume=true"] if RunFolder(study_dir / job.path).checkpoint_iteration() is not None else []
    pretrain(job_config(job, study_dir, resume))
    return JobOutcome(JobState.RESUMED if resume else JobState.TRAINED)


def _make_fork(study_dir: Path, job: Job, out: Path) -> bool:
    """Creates the run folder from the trunk's checkpoint unless it has a checkpoint already; True if it did."""
    from scratchdet.study.fork import fork_run
    from scratchdet.study.plan import run_config

    if RunFolder(out).checkpoint_iteration() is not None:
        return False
    if out.exists():
        shutil.rmtree(out)  # a fork interrupted before its first checkpoint holds nothing to keep
    fork_run(study_dir / job.fork["trunk"], job.fork["iter"], run_config(job.config, job.overrides, out))
    return True


def execute(graph: JobGraph, job: Job) -> JobOutcome:
    """Does the job's work in this process (every rank of a multi-process job calls it); returns what was done."""
    from scratchdet.study.plan import run_config

    study_dir = Path(graph.study_dir)
    out = study_dir / job.path
    if job.kind == "decide":
        return decide(graph, job)
    if job.kind == "pretrain":
        if env_world_size() > 1:
            raise ConfigError(f"job {job.id}: pre-training runs in one process; launch it with one task")
        return _pretrain(study_dir, job)
    if job.fork is not None and job.start_iter > 0:
        # Rank 0 makes the fork while the others wait: the process group must exist first.
        device = run_config(job.config, job.overrides, out).train.device
        ctx, _ = init_distributed(device)
        if main_first(ctx, _make_fork, study_dir, job, out):
            _train_until(study_dir, job)
            return JobOutcome(JobState.TRAINED, f"from the trunk's iteration {job.fork['iter']}")
    return _train_until(study_dir, job)


def _requeue_and_wait(study_dir: Path, job: Job, rank: int) -> None:
    """Under SLURM: rank 0 requeues the job (same id, dependents keep waiting); every rank then waits to be stopped
    by SLURM. Exits with status 1 if SLURM does not stop it, so the job cannot end as a success."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id is None:
        return
    if rank == 0:
        record = read_record(study_dir, job.id)
        update_record(study_dir, job.id, state="requeued", requeues=int(record.get("requeues", 0)) + 1, ended=now())
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode != 0:  # e.g. a preemption that SLURM requeues by itself
            print(f"scontrol requeue {job_id}: {result.stderr.strip()}", file=sys.stderr)
    sys.stdout.flush()
    # SLURM stops a requeued job with SIGTERM; submitit's handler would ignore it, leaving SLURM to wait KillWait
    # seconds before SIGKILL. The checkpoint is written: end at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(REQUEUE_WAIT_S)
    sys.exit(1)


def run_job(study_dir: str | Path, job_id: str) -> JobOutcome:
    """Runs job `job_id` of the study in `study_dir` (every process of the job calls it); returns what was done.

    The job runs from the folder the study was launched in (`graph.cwd`: relative paths in its configs were written
    from there) and returns to the caller's folder. A multi-process job leaves its process group before it returns
    or raises: a gloo group still alive at interpreter exit can abort the process ("terminate called without an
    active exception") after the job's work is done, and SLURM then counts the job as failed and cancels its
    dependents (seen in CI, 2-task jobs).

    Raises:
        ScratchdetError: the job failed (recorded with its error); another process is training its run folder.
        Preempted: a stop signal outside SLURM (the job checkpointed; launch it again to resume).
    """
    try:  # the job runs from the study's launch folder; the caller (inprocess, tests) gets its own folder back
        caller_cwd = os.getcwd()
    except OSError:  # the caller's folder was removed: nothing to go back to
        caller_cwd = None
    try:
        return _run_job(study_dir, job_id)
    finally:
        shutdown_distributed()
        if caller_cwd is not None:
            with contextlib.suppress(OSError):  # never hides the job's own error
                os.chdir(caller_cwd)


def _run_job(study_dir: str | Path, job_id: str) -> JobOutcome:
    graph = read_graph(study_dir)
    if job_id.startswith("decide/") and job_id not in {j.id for j in graph.jobs}:
        # Queued by a sequential submission that was then resubmitted with stopping off: nothing left to decide, and
        # its dependents (queued with afterok on it) must go on.
        return JobOutcome(JobState.CHECKED, "nothing to decide: the study was resubmitted with stopping off")
    job = graph.job(job_id)
    study_dir = Path(graph.study_dir)
    os.chdir(graph.cwd)  # relative paths in the configs and overrides were written from there
    skipped = skipped_by_decision(study_dir, job.id)
    if skipped is not None:
        # A sequential study's decision cancelled this job, which started anyway: train nothing.
        return JobOutcome(JobState.NOT_NEEDED, f"settled at {skipped.schedule:g}x ({study_dir}/decision.json)")
    rank = scheduler_rank()
    if rank != 0:
        try:
            return execute(graph, job)
        except Preempted:
            _requeue_and_wait(study_dir, job, rank)
            raise
    with run_folder_lock(study_dir, job):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        update_record(
            study_dir,
            job.id,
            state="running",
            started=now(),
            host=socket.gethostname(),
            pid=os.getpid(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            slurm_restarts=restarts,
            error=None,
            outcome=None,
        )
        try:
            outcome = execute(graph, job)
        except Preempted as e:
            stopped = JobOutcome(JobState.STOPPED, f"after iteration {e.iteration}").to_record()
            update_record(study_dir, job.id, state="preempted", ended=now(), stopped_at=e.iteration, outcome=stopped)
            _requeue_and_wait(study_dir, job, rank)
            raise
        except KeyboardInterrupt:
            update_record(
                study_dir, job.id, state="interrupted", ended=now(), outcome=JobOutcome(JobState.STOPPED).to_record()
            )
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            failed = JobOutcome(JobState.FAILED, error).to_record()
            update_record(study_dir, job.id, state="failed", ended=now(), error=error, outcome=failed)
            raise
        update_record(study_dir, job.id, state="finished", ended=now(), outcome=outcome.to_record())
    return outcome


def run_and_print_job(study_dir: str | Path, job_id: str) -> None:
    """`scratchdet study job STUDY_DIR JOB_ID`: runs the job and prints what was done (the job's log line). The
    CLI and the local launcher's forked jobs both run this, through errors.exit_status."""
    print(f"{job_id}: {run_job(study_dir, job_id)}")
