"""A study plan as a graph of jobs: what can run at the same time, and what must wait for what.

    pretrain/<arm>                     (a pre-trained arm whose pre-training the study performs)
         |
    trunks/<group>@f1                  the shared trunk from 0 to the first fork point f1
         |            \\
    trunks/<group>@f2  runs/<group>_<N1>x   the next trunk segment and the first fork's tail: both depend only on
         |            \\                     the segment before, so forks train while the trunk goes on
    ...                runs/<group>_<N2>x

A trunk is one run folder trained in segments (each resumes it up to the next fork point, with checkpoints at every
fork point); a fork's tail copies the trunk's checkpoint at its fork point (study/fork.py) and trains to the end of
its schedule. A group without a trunk has one job per run. A 2x..6x study thus finishes in about the time of its
longest run instead of the sum of all of them.

The graph is written to the study folder as jobs.json, complete enough that a job runs from it alone (its config,
overrides and iterations), wherever it is launched (study/jobs.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchdet.errors import ScratchdetError
from scratchdet.files import atomic_write_json
from scratchdet.study.plan import Plan
from scratchdet.study.spec import LauncherSpec, StudySpec

GRAPH_FILE = "jobs.json"


@dataclass
class Job:
    """One unit of work a launcher runs: a pre-training, a trunk segment, or a run (a fork's tail or a whole run)."""

    id: str  # "pretrain/<arm>", "trunks/<group>@<end_iter>", "runs/<name>", "decide/<N>x"; names its record
    kind: str  # pretrain | segment | run | decide (a sequential study's decision under SLURM, study/stopping.py)
    path: str  # the run folder it writes, relative to the study folder
    config: str  # the YAML it is built from (absolute)
    overrides: list[str]
    start_iter: int  # iterations already done when it starts (a segment's or a fork's start)
    end_iter: int | None  # iterations done when it ends (None: a pre-training whose length depends on its data)
    deps: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # cut and checkpoint keys (train.max_iters, extra_checkpoints)
    fork: dict | None = None  # {"trunk": path, "iter": n}: create the run folder from the trunk's checkpoint
    batch_size: int | None = None  # images per iteration (global), for the compute estimate
    single_process: bool = False  # pre-training runs in one process
    decides: float | None = None  # a decision job's schedule (kind "decide", study/stopping.py)

    @property
    def iters(self) -> int | None:
        return None if self.end_iter is None else self.end_iter - self.start_iter


@dataclass
class JobGraph:
    study_dir: str  # absolute
    cwd: str  # the folder relative paths in configs and overrides are resolved from
    jobs: list[Job]  # in an order where every job comes after its dependencies

    def job(self, job_id: str) -> Job:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise ScratchdetError(f"{Path(self.study_dir) / GRAPH_FILE} has no job {job_id!r}")

    def dependents(self, job_id: str) -> list[str]:
        """Every job that needs `job_id`, directly or through others."""
        found: list[str] = []
        for job in self.jobs:
            if any(d == job_id or d in found for d in job.deps):
                found.append(job.id)
        return found

    def remaining_chain(self) -> dict[str, int]:
        """{job id: iterations on the longest chain from the job's start to the end of the study}, the job's own
        included. Starting the job with the longest chain first (critical-path list scheduling) keeps the study's
        last jobs from running alone: e.g. a pre-trained arm's trunk, which waits for its pre-training."""
        chain: dict[str, int] = {}
        for job in reversed(self.jobs):  # dependents come after their dependencies
            after = [chain[j.id] for j in self.jobs if job.id in j.deps]
            chain[job.id] = (job.iters or 0) + max(after, default=0)
        return chain

    def to_dict(self) -> dict:
        return {"study_dir": self.study_dir, "cwd": self.cwd, "jobs": [asdict(j) for j in self.jobs]}

    def write(self) -> Path:
        path = Path(self.study_dir) / GRAPH_FILE
        atomic_write_json(path, self.to_dict())
        return path


def read_graph(study_dir: str | Path) -> JobGraph:
    """The job graph a `scratchdet study` wrote into `study_dir`.

    Raises:
        ScratchdetError: the folder holds no readable jobs.json.
    """
    path = Path(study_dir) / GRAPH_FILE
    try:
        data = json.loads(path.read_text())
        return JobGraph(data["study_dir"], data["cwd"], [Job(**j) for j in data["jobs"]])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScratchdetError(
            f"{path} cannot be read ({type(e).__name__}: {e}); is {study_dir} a study folder? "
            "(`scratchdet study SPEC` writes it)"
        ) from None


def _pretrain_iters(arm) -> int | None:
    """Iterations of a pre-training the study performs, when they follow from its config alone."""
    from scratchdet.pretrain.config import load_pretrain_config

    cfg = load_pretrain_config(arm.pretrain_config, [*arm.pretrain_overrides, "output=unused"])
    if cfg.train.iters is not None:
        iters = cfg.train.iters
    elif cfg.data.synthetic:
        iters = max(1, round(cfg.train.epochs * cfg.data.synthetic_train_images / cfg.solver.batch_size))
    else:
        return None  # epochs over an image folder: known once the folder is listed
    return min(iters, cfg.train.max_iters or iters), cfg.solver.batch_size


def build_graph(plan: Plan, spec: StudySpec, study_dir: Path, run_batch_sizes: dict[str, int]) -> JobGraph:
    """The jobs of `plan`: pre-trainings, trunk segments (one per fork point), and runs.

    Args:
        run_batch_sizes: train.batch_size of each planned run (by path) and trunk, for the compute estimate.
    """
    study_dir = Path(study_dir).resolve()
    base = str(Path(spec.base_config).resolve())
    jobs: list[Job] = []
    pretrain_job: dict[str, str] = {}
    for arm in spec.arms:
        if arm.init != "pretrained" or arm.weights:
            continue
        job_id = f"pretrain/{arm.name}"
        iters, batch = _pretrain_iters(arm) or (None, None)
        jobs.append(
            Job(
                id=job_id,
                kind="pretrain",
                path=plan.pretrain[arm.name],
                config=str(Path(arm.pretrain_config).resolve()),
                overrides=list(arm.pretrain_overrides),
                start_iter=0,
                end_iter=iters,
                batch_size=batch,
                single_process=True,
            )
        )
        pretrain_job[arm.name] = job_id
    arm_of_trunk = {r.trunk: r.arm for r in plan.runs if r.trunk}
    segment_at: dict[tuple[str, int], str] = {}
    for trunk in plan.trunks:
        extra_ckpts = f"train.extra_checkpoints=[{','.join(map(str, trunk.forks))}]"
        previous, start = pretrain_job.get(arm_of_trunk.get(trunk.path, "")), 0
        for fork_iter in trunk.forks:
            job_id = f"{trunk.path}@{fork_iter}"
            jobs.append(
                Job(
                    id=job_id,
                    kind="segment",
                    path=trunk.path,
                    config=base,
                    overrides=list(trunk.overrides),
                    start_iter=start,
                    end_iter=fork_iter,
                    deps=[previous] if previous else [],
                    extra=[f"train.max_iters={fork_iter}", extra_ckpts],
                    batch_size=run_batch_sizes.get(trunk.path),
                )
            )
            segment_at[(trunk.path, fork_iter)] = job_id
            previous, start = job_id, fork_iter
    for run in plan.runs:
        if run.trunk:
            deps, start = [segment_at[(run.trunk, run.fork_iter)]], run.fork_iter
            fork = {"trunk": run.trunk, "iter": run.fork_iter}
        else:
            dep = pretrain_job.get(run.arm)
            deps, fork, start = [dep] if dep else [], None, 0
        jobs.append(
            Job(
                id=run.path,
                kind="run",
                path=run.path,
                config=base,
                overrides=list(run.overrides),
                start_iter=start,
                end_iter=run.max_iters,
                deps=deps,
                fork=fork,
                batch_size=run_batch_sizes.get(run.path),
            )
        )
    return JobGraph(str(study_dir), os.getcwd(), jobs)


def compute_estimate(graph: JobGraph, launcher: LauncherSpec) -> dict:
    """Device-hours of the graph at `launcher.images_per_second_per_device`, with the shared trunks and as if every
    run were trained separately (None where a job's length or the throughput is unknown).

    Device-hours = images / (images per second per device) / 3600: the same whatever the number of devices a job
    spreads them over (perfect scaling assumed; the report records the measured hours).
    """
    ips = launcher.images_per_second_per_device
    per_job = {}
    for job in graph.jobs:
        images = None if job.iters is None or job.batch_size is None else job.iters * job.batch_size
        per_job[job.id] = None if images is None or not ips else images / ips / 3600
    shared = None if None in per_job.values() else sum(per_job.values())
    separate = wall = None
    if shared is not None:
        runs = [j for j in graph.jobs if j.kind == "run"]
        pretrain = sum(per_job[j.id] for j in graph.jobs if j.kind == "pretrain")
        separate = pretrain + sum(j.end_iter * j.batch_size / ips / 3600 for j in runs)
        # The critical path: with enough devices, the study takes as long as its longest chain of jobs.
        devices = launcher.nodes * launcher.tasks_per_node
        finish: dict[str, float] = {}
        for job in graph.jobs:
            spread = 1 if job.single_process else devices
            finish[job.id] = max((finish[d] for d in job.deps), default=0.0) + per_job[job.id] / spread
        wall = max(finish.values(), default=0.0)
    return {"per_job": per_job, "shared": shared, "separate": separate, "wall_hours": wall}


def describe_graph(graph: JobGraph, launcher: LauncherSpec) -> str:
    """The graph as text, for `scratchdet study SPEC --dry-run`: one line per job with its dependencies,
    iterations and, given launcher.images_per_second_per_device, its estimated device-hours."""
    devices = launcher.nodes * launcher.tasks_per_node
    estimate = compute_estimate(graph, launcher)
    lines = [f"{len(graph.jobs)} jobs for launcher {launcher.name!r} ({devices} process(es) per job):"]
    width = max(len(j.id) for j in graph.jobs)
    for job in graph.jobs:
        iters = "?" if job.end_iter is None else f"{job.start_iter}..{job.end_iter}"
        hours = estimate["per_job"][job.id]
        cost = "" if hours is None else f"  {hours:9.3g} device-h"
        after = ", ".join(job.deps) if job.deps else "-"
        lines.append(f"  {job.id:<{width}}  iters {iters:<15}{cost}  after: {after}")
    if estimate["shared"] is not None:
        saved = estimate["separate"] - estimate["shared"]
        lines.append(
            f"estimated {estimate['shared']:.3g} device-hours at {launcher.images_per_second_per_device:g} images/s "
            f"per device; separate runs would need {estimate['separate']:.3g} ({saved:.3g} saved by the shared "
            f"trunks); with every job started as soon as its dependencies finish, about "
            f"{estimate['wall_hours']:.3g} hours from first to last"
        )
    else:
        lines.append(
            "device-hours: set launcher.images_per_second_per_device (measured at this study's settings, e.g. "
            "from a short run's time_per_iter) for an estimate"
        )
    return "\n".join(lines)
