"""Where a study's jobs run: `launcher.name` = inprocess | local | slurm (study/spec.py: LauncherSpec).

- inprocess: every job in this process, in graph order (the default: the demo, CPU users).
- local: every job as a group of `launcher.tasks_per_node` processes on this machine (torchrun when more than one),
  up to `launcher.max_parallel` at once as their dependencies finish; GPUs are handed out so that no two jobs share
  one. The launcher stays in the foreground; Ctrl-C / SIGTERM makes every running job checkpoint and stop.
- slurm: every job as a SLURM job of `launcher.nodes` x `launcher.tasks_per_node` tasks, submitted through submitit
  with `afterok` dependencies on the jobs it needs (`kill-on-invalid-dep`: a failed job cancels its dependents
  instead of leaving them pending forever), `--requeue`, and SIGUSR2 `launcher.signal_delay_s` before the time
  limit. The command returns once the graph is submitted.

Submitting is idempotent (`submit`): a job whose run folder is finished, or whose recorded scheduler job is still
queued or running, is not submitted again; one that failed or vanished is, with its dependents.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from scratchdet.errors import ConfigError, Preempted, ScratchdetError, exit_status
from scratchdet.study.graph import Job, JobGraph
from scratchdet.study.jobs import run_and_print_job, run_job
from scratchdet.study.outcome import JobOutcome, JobState
from scratchdet.study.records import is_finished, now, read_record, record_path, squeue_states, update_record
from scratchdet.study.spec import LauncherSpec
from scratchdet.study.status import StudyProgress, StudyThroughput
from scratchdet.study.stopping import Stopper

# squeue states of a job that will still run (or is running): it must not be submitted a second time.
ACTIVE_STATES = {
    "PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED",
}  # fmt: skip


def _not_run(graph: JobGraph, failed: str, outcome: dict[str, JobOutcome]) -> None:
    for dependent in graph.dependents(failed):
        outcome.setdefault(dependent, JobOutcome(JobState.NOT_RUN, f"{failed} failed"))


# --- inprocess ----------------------------------------------------------------------------------------------------


def _not_needed(graph: JobGraph, stopper: Stopper, outcome: dict[str, JobOutcome], log: Callable[[str], None]) -> None:
    """Marks every job without an outcome as not needed, records the decision and says it in one line.

    A job finished in an earlier launch (the inprocess launcher meets it only when its turn comes) is skipped as
    finished, never listed as not run."""
    for job in graph.jobs:
        if job.id not in outcome and is_finished(graph.study_dir, job):
            outcome[job.id] = JobOutcome(JobState.SKIPPED, "(finished)")
    left = [j.id for j in graph.jobs if j.id not in outcome]
    decision = stopper.record(left)
    why = f"settled at {decision.schedule:g}x: {decision.reason}"
    for job_id in left:
        outcome[job_id] = JobOutcome(JobState.NOT_NEEDED, why)
    hours = "" if decision.device_hours_not_spent is None else f", about {decision.device_hours_not_spent:.3g} "
    log(
        f"[study] stopping: the study's question is {why}; {len(left)} job(s) not run ({decision.iterations_not_run} "
        f"iterations{hours + 'device-hours' if hours else ''}); rerun with stopping.enabled=false to train them"
    )


def launch_inprocess(
    graph: JobGraph, log: Callable[[str], None] = print, stopper: Stopper | None = None
) -> dict[str, JobOutcome]:
    """Runs every job here, in graph order; a failed job's dependents are not run. Returns {job id: outcome}.

    Raises:
        Preempted: SIGTERM/SIGINT; the running job checkpointed (rerun the same command to resume).
    """
    outcome: dict[str, JobOutcome] = {}
    stopper = stopper or Stopper(graph, enabled=False)
    throughput, progress = StudyThroughput(), StudyProgress(graph.study_dir)
    order = sorted(range(len(graph.jobs)), key=lambda i: (stopper.level(graph.jobs[i]), i))
    for job in (graph.jobs[i] for i in order):
        if stopper.check(outcome.keys()) is not None:
            _not_needed(graph, stopper, outcome, log)
            break
        if job.id in outcome:
            log(f"[study] {job.id}: {outcome[job.id]}")
            continue
        try:
            outcome[job.id] = run_job(graph.study_dir, job.id)
        except ScratchdetError as e:
            outcome[job.id] = JobOutcome(JobState.FAILED, str(e))
            _not_run(graph, job.id, outcome)
        log(f"[study] {job.id}: {outcome[job.id]}")
        throughput.count(job, outcome[job.id])
        log(progress.line())
    log(throughput.summary())
    return outcome


# --- local --------------------------------------------------------------------------------------------------------


def job_argv(graph: JobGraph, job: Job) -> list[str]:
    """The `scratchdet` arguments that run `job` in one process of it: `study job STUDY_DIR JOB_ID`."""
    return ["study", "job", graph.study_dir, job.id]


def torchrun_command(graph: JobGraph, job: Job, processes: int) -> list[str]:
    """The command that runs `job` as `processes` processes on this machine (one-process jobs are ForkedJobs)."""
    # torchrun --standalone: a rendezvous on a free local port, so parallel jobs never collide.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*torchrun, "-m", "scratchdet", *job_argv(graph, job)]


# Modules a one-process job imports, loaded once by the fork server (below) instead of by every job. Not
# torch.utils.tensorboard: with it preloaded, the stop-and-resume test of tests/study/test_runner.py took 183 s
# instead of 31 s (one run each; the cause was not pinned down, tensorboard brings in libraries that start threads,
# which a fork does not copy); the metrics writer imports it in the job.
FORK_SERVER_PRELOAD = [
    "scratchdet.study.jobs",
    "scratchdet.engine.trainer",
    "scratchdet.pretrain.classify",
]


def _job_in_forked_process(argv: list[str], log_path: str, env: dict[str, str]) -> None:
    """The body of a one-process job forked from the fork server: its own process group (so a stop reaches it as
    it reaches a torchrun job), output to the job's log, the launcher's environment of now with the job's GPUs (the
    fork server holds the one of its own start), then what `scratchdet study job` does."""
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.flush()
        os.dup2(fd, target)
    os.close(fd)
    # CUDA reads CUDA_VISIBLE_DEVICES when it first initializes, which the fork server never does.
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["scratchdet", *argv]  # what the job's env.json records, as for `scratchdet study job ...`
    study_dir, job_id = argv[2:]
    code = exit_status(run_and_print_job, study_dir, job_id)  # ends as `scratchdet study job` does
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


class ForkedJob:
    """A one-process job started from a fork server that has imported torch, torchvision and scratchdet once.

    Importing them takes about 3 s of every job's start on a CPU machine (`python -X importtime`): in the old demo
    study's 25 short jobs that was about an eighth of the slot time. Forking from a process that has them imported
    skips it; the fork server itself only imports (it never initializes CUDA or runs torch code), so each job starts
    clean (multiprocessing's "forkserver" start method, with its preload). Same interface as the subprocess.Popen
    the launcher uses for torchrun jobs: pid, poll(), returncode (negative: killed by that signal).

    Like every multiprocessing child, a job imports the launcher's main script as `__mp_main__`: a script that calls
    `run_study` needs the usual `if __name__ == "__main__":` guard (the `scratchdet` command and pytest have it).
    """

    _context = None

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]):
        if ForkedJob._context is None:
            import multiprocessing

            ForkedJob._context = multiprocessing.get_context("forkserver")
            ForkedJob._context.set_forkserver_preload(FORK_SERVER_PRELOAD)
        self._process = ForkedJob._context.Process(
            target=_job_in_forked_process, args=(argv, str(log_path), dict(env)), daemon=False
        )
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode


def _stop_job(proc: subprocess.Popen | ForkedJob) -> None:
    """SIGTERM to the job's process group; to the process alone when a forked job has not made its group yet;
    nothing when it has already ended (the fork server reaps forked jobs before the launcher polls them)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a job's log, progress-bar redraws dropped (they are one long line each)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"(unreadable: {e})"
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join("    " + line for line in kept[-lines:])


# Seconds between the local launcher's progress lines while jobs run.
PROGRESS_PERIOD_S = 60.0


def launch_local(
    graph: JobGraph, launcher: LauncherSpec, log: Callable[[str], None] = print, stopper: Stopper | None = None
) -> dict[str, JobOutcome]:
    """Runs the graph on this machine, jobs in parallel as their dependencies finish, the job with the longest chain
    of work after it first (JobGraph.remaining_chain). Returns {job id: outcome}.

    With stopping on (`stopper`), shorter schedules first, and no job serving a longer schedule starts before the
    shorter schedule is decided (`Stopper.waits_for`); after a settled decision nothing more starts.

    Raises:
        ConfigError: launcher.gpus_per_task > 0 but too few GPUs for one job.
        Preempted: SIGTERM/SIGINT; every running job checkpointed (rerun the same command to resume).
    """
    study_dir = Path(graph.study_dir)
    free_gpus = _visible_gpus() if launcher.gpus_per_task else []
    need = launcher.tasks_per_node * launcher.gpus_per_task
    if launcher.gpus_per_task and len(free_gpus) < need:
        raise ConfigError(
            f"launcher.tasks_per_node={launcher.tasks_per_node} x gpus_per_task={launcher.gpus_per_task} needs "
            f"{need} GPUs per job; this machine shows {len(free_gpus)}. Use launcher.gpus_per_task=0 for CPU "
            "processes"
        )
    outcome = {j.id: JobOutcome(JobState.SKIPPED, "(finished)") for j in graph.jobs if is_finished(study_dir, j)}
    stopper = stopper or Stopper(graph, enabled=False)
    settled = False
    throughput = StudyThroughput()
    running: dict[str, tuple[subprocess.Popen | ForkedJob, list[str]]] = {}
    stop: list[int] = []
    signalled: set[str] = set()
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    last_line = time.perf_counter()
    chain = graph.remaining_chain()
    progress = StudyProgress(study_dir)
    try:
        while True:
            for job_id, (proc, _) in running.items():
                if stop and job_id not in signalled and proc.poll() is None:
                    _stop_job(proc)  # each job checkpoints at its iteration boundary
                    signalled.add(job_id)
            for job_id, (proc, gpus) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[job_id]
                free_gpus += gpus
                record = read_record(study_dir, job_id)
                if settled and proc.returncode != 0:
                    # Stopped by the decision (none should be running then, as longer schedules wait for it; kept
                    # for safety): marked not needed below, its checkpoint kept.
                    continue
                if proc.returncode == 0:
                    outcome[job_id] = JobOutcome.from_record(record.get("outcome")) or JobOutcome(JobState.FINISHED)
                elif stop:
                    outcome[job_id] = JobOutcome(JobState.STOPPED)
                else:
                    error = record.get("error") or f"exit status {proc.returncode}"
                    outcome[job_id] = JobOutcome(JobState.FAILED, error)
                    if not stop:
                        _not_run(graph, job_id, outcome)
                log(f"[study] {job_id}: {outcome[job_id]}")
                if proc.returncode != 0 and not stop:
                    # The job's own output is the only place a crash outside run_job (torchrun, another rank) shows.
                    log_path = record_path(study_dir, job_id).with_suffix(".log")
                    log(f"[study] {job_id}: last lines of {log_path}:\n{_tail(log_path)}")
                throughput.count(graph.job(job_id), outcome[job_id])
                log(progress.line())
            if stop:
                if not running:
                    raise Preempted(stop[0], -1, f"the run folders under {study_dir}")
                time.sleep(0.2)
                continue
            if not settled and stopper.check(outcome.keys()) is not None:
                settled = True
                for proc, _ in running.values():
                    _stop_job(proc)  # it checkpoints at its iteration boundary; a rerun without stopping resumes
            if settled:
                if not running:
                    _not_needed(graph, stopper, outcome, log)
                    break
                time.sleep(0.2)
                continue
            # With stopping on, a job serving a longer schedule waits for the shorter schedule's decision, as the
            # SLURM graph's decision jobs make it: started beside the shorter tails, it would spend compute the
            # decision may not need (measured: a 512-iteration trunk segment in docs/RESULTS.md's 1x..6x study).
            gate = stopper.waits_for(outcome.keys())
            ready = [
                j
                for j in graph.jobs
                if j.id not in outcome
                and j.id not in running
                and all(d in outcome and outcome[d].done for d in j.deps)
                and (gate is None or stopper.level(j) <= gate)
            ]
            # Stable: graph order among equals. With stopping on, shorter schedules first (Stopper.level).
            ready.sort(key=lambda j: (stopper.level(j), -chain[j.id]))
            for job in ready:
                processes = 1 if job.single_process else launcher.tasks_per_node
                gpus_needed = processes * launcher.gpus_per_task
                if len(running) >= launcher.max_parallel or len(free_gpus) < gpus_needed:
                    break
                gpus, free_gpus = free_gpus[:gpus_needed], free_gpus[gpus_needed:]
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
                log_path = record_path(study_dir, job.id).with_suffix(".log")
                log_path.parent.mkdir(parents=True, exist_ok=True)
                if processes == 1:
                    proc = ForkedJob(job_argv(graph, job), log_path, env)
                else:
                    with log_path.open("a") as out:
                        proc = subprocess.Popen(
                            torchrun_command(graph, job, processes),
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,  # its own process group: a stop reaches every process of the job
                        )
                update_record(study_dir, job.id, launcher="local", submitted=now(), pid=proc.pid, log=str(log_path))
                running[job.id] = (proc, gpus)
                log(f"[study] {job.id}: started ({processes} process(es){', GPUs ' + ','.join(gpus) if gpus else ''})")
            if not running:
                break
            if time.perf_counter() - last_line >= PROGRESS_PERIOD_S:
                # Jobs write their own bars to their logs; this line is what the terminal shows meanwhile.
                log(progress.line())
                last_line = time.perf_counter()
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        # Left by an error in the launcher itself: they checkpoint and stop rather than run on unwatched (and a
        # forked job would hold the interpreter's exit until it ended).
        for proc, _ in running.values():
            if proc.poll() is None:
                _stop_job(proc)
    log(throughput.summary())
    return outcome


# --- slurm --------------------------------------------------------------------------------------------------------


class StudyTask:
    """The callable submitit runs in every task of a SLURM job: one job of the study graph.

    A plain class (not a closure) so that submitit's pickle stays small and names only this module.
    """

    def __init__(self, study_dir: str, job_id: str):
        self.study_dir = study_dir
        self.job_id = job_id

    def __call__(self) -> JobOutcome:
        return run_job(self.study_dir, self.job_id)

    def checkpoint(self):
        # submitit calls this on SIGUSR2 outside the training loop (start-up, evaluation after the last iteration):
        # requeue the same call; it resumes from the run folder's last checkpoint.
        import submitit

        return submitit.helpers.DelayedSubmission(self)


# sbatch options that ask for GPUs (a decision job drops them).
GPU_SBATCH_KEYS = {"gres", "gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket", "gpu-bind", "gpu-freq"}


def _executor(study_dir: Path, launcher: LauncherSpec, job: Job, dependency: list[str]):
    import submitit

    executor = submitit.SlurmExecutor(folder=study_dir / "slurm" / "%j")
    tasks = 1 if job.single_process else launcher.tasks_per_node
    extra = {"requeue": True, "kill-on-invalid-dep": "yes", **launcher.sbatch_extra}
    gpus = tasks * launcher.gpus_per_task
    after, partition, constraint, qos = "afterok", launcher.partition, launcher.constraint, launcher.qos
    if job.kind == "decide":
        # A decision reads records and bootstraps on CPU: no GPU, whatever sbatch_extra asks of the training jobs.
        # It waits for its runs to END (afterany): a failed run leaves the schedule undecided and the study goes on.
        gpus, after = 0, "afterany"
        if launcher.decide_partition:
            # Another partition: the training jobs' node features and QOS (often GPU ones) may not exist there.
            partition, constraint, qos = launcher.decide_partition, None, None
        extra = {k: v for k, v in extra.items() if k.replace("_", "-") not in GPU_SBATCH_KEYS}
    if dependency:
        extra["dependency"] = f"{after}:" + ":".join(dependency)
    params = {
        "job_name": f"sd-{job.id}",
        "nodes": 1 if job.single_process else launcher.nodes,
        "ntasks_per_node": tasks,
        "time": launcher.time_minutes,
        "signal_delay_s": launcher.signal_delay_s,
        "additional_parameters": extra,
        "partition": partition,
        "account": launcher.account,
        "qos": qos,
        "constraint": constraint,
        "cpus_per_task": launcher.cpus_per_task,
        "mem": f"{launcher.mem_gb:g}G" if launcher.mem_gb else None,
        "gpus_per_node": gpus or None,
    }
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def submit_slurm(
    graph: JobGraph,
    launcher: LauncherSpec,
    log: Callable[[str], None] = print,
    not_needed: dict[str, str] | None = None,
) -> dict[str, JobOutcome]:
    """Submits every job not finished, queued or running, with afterok dependencies; returns {job id: what}.

    Args:
        not_needed: {job id: why} of jobs a sequential study's recorded decision left out (study/stopping.py); they
            are not submitted while stopping is on.

    Raises:
        ScratchdetError: squeue or sbatch fails (the message names the job and sbatch's error).
    """
    study_dir = Path(graph.study_dir)
    states = squeue_states()
    scheduler_id: dict[str, str] = {}
    outcome: dict[str, JobOutcome] = {}
    for job in graph.jobs:
        if is_finished(study_dir, job):
            outcome[job.id] = JobOutcome(JobState.SKIPPED, "(finished)")
            continue
        if job.id in (not_needed or {}):
            outcome[job.id] = JobOutcome(JobState.NOT_NEEDED, not_needed[job.id])
            continue
        skipped_deps = [d for d in job.deps if outcome.get(d) and outcome[d].state is JobState.NOT_NEEDED]
        if skipped_deps:  # never submitted without a dependency: it would start at once on missing work
            outcome[job.id] = JobOutcome(JobState.NOT_NEEDED, f"{skipped_deps[0]} is not needed")
            continue
        record = read_record(study_dir, job.id)
        previous = record.get("scheduler_id")
        if previous and states.get(previous) in ACTIVE_STATES:
            scheduler_id[job.id] = previous
            outcome[job.id] = JobOutcome(JobState.QUEUED, f"as SLURM job {previous} ({states[previous].lower()})")
            continue
        dependency = [scheduler_id[d] for d in job.deps if d in scheduler_id]
        try:
            submitted = _executor(study_dir, launcher, job, dependency).submit(StudyTask(graph.study_dir, job.id))
        except Exception as e:  # submitit raises its own types for a refused sbatch
            raise ScratchdetError(f"sbatch refused job {job.id}: {e}") from None
        scheduler_id[job.id] = str(submitted.job_id)
        update_record(
            study_dir,
            job.id,
            launcher="slurm",
            scheduler_id=str(submitted.job_id),
            submitted=now(),
            submissions=int(record.get("submissions", 0)) + 1,
            state="submitted",
            error=None,
            outcome=None,
        )
        after = f" after {','.join(dependency)}" if dependency else ""
        outcome[job.id] = JobOutcome(JobState.SUBMITTED, f"as SLURM job {submitted.job_id}{after}")
        log(f"[study] {job.id}: {outcome[job.id]}")
    return outcome
