"""`scratchdet study SPEC.yaml`: plan, build the job graph, launch what is not done yet, then write the report.

Resumable at every level: a finished pre-training, trunk segment or run is skipped, an interrupted one resumes from
its last checkpoint, a run not started forks from its trunk. Killing the study and rerunning the same command
finishes it. A job that fails (e.g. a diverged loss) is recorded, its dependents are not run, and the others go on.

Where the jobs run is the spec's `launcher` (study/launchers.py); the plan, the graph and every number are the
same whichever launcher runs them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from scratchdet.engine.run_dir import check_writable
from scratchdet.errors import ScratchdetError
from scratchdet.files import atomic_write_json, atomic_write_text
from scratchdet.study.graph import JobGraph, build_graph, describe_graph
from scratchdet.study.jobs import update_record
from scratchdet.study.launchers import launch_inprocess, launch_local, submit_slurm
from scratchdet.study.plan import Plan, plan_study, run_config
from scratchdet.study.spec import StudySpec, load_study_spec
from scratchdet.study.status import status_json, study_status

STATUS_FILE = "status.json"


def build_study_graph(plan: Plan, spec: StudySpec) -> JobGraph:
    """The plan's job graph, with each run's and trunk's global batch for the compute estimate."""
    study_dir = Path(spec.output)
    batch = {r.path: run_config(spec.base_config, r.overrides, study_dir / r.path).train.batch_size for r in plan.runs}
    for trunk in plan.trunks:
        batch[trunk.path] = run_config(spec.base_config, trunk.overrides, study_dir / trunk.path).train.batch_size
    return build_graph(plan, spec, study_dir, batch)


def dry_run(spec_path: str | Path, overrides: list[str] | None = None) -> str:
    """The graph `scratchdet study` would launch, as text; writes nothing. Pre-training weights that do not exist
    yet leave the input convention unresolved, which changes no job or iteration count."""
    spec = load_study_spec(spec_path, overrides)
    plan = plan_study(spec, check_sources=False)
    it = plan.iterations()
    head = (
        f"study {spec.name}: {len(plan.runs)} runs, {len(plan.trunks)} shared trunks; {it['shared']} iterations "
        f"instead of {it['separate']} for separate runs ({100 * it['fraction']:.0f}%)"
    )
    return head + "\n" + describe_graph(build_study_graph(plan, spec), spec.launcher)


def run_study(spec_path: str | Path, overrides: list[str] | None = None, *, report: bool = True) -> Path:
    """Plans the study of `spec_path` and launches its jobs; returns the study folder.

    With launcher.name=inprocess or local, returns when every job has ended and writes the report; with slurm,
    returns once the graph is submitted (`scratchdet study status DIR`, `scratchdet report DIR`).

    Raises:
        ScratchdetError: a job failed (after the others ran), or submission failed.
        Preempted: the study was asked to stop; every running job checkpointed.
    """
    spec = load_study_spec(spec_path, overrides)
    study_dir = Path(spec.output)
    plan = plan_study(spec)
    # Every job reads jobs.json and writes its run folder and record here, wherever it runs: say so when it cannot.
    check_writable(study_dir, "the study folder (it must be on a file system every job's node can write)")
    if Path(spec_path).resolve() != (study_dir / "spec.yaml").resolve():
        shutil.copy2(spec_path, study_dir / "spec.yaml")
    atomic_write_json(study_dir / "plan.json", plan.to_dict())
    graph = build_study_graph(plan, spec)
    graph.write()
    it = plan.iterations()
    # The progress lines count every job's iterations, pre-training included: say so here, where the total is given.
    pretrain = sum(j.iters or 0 for j in graph.jobs if j.kind == "pretrain")
    print(
        f"[study] {spec.name}: {len(plan.runs)} runs, {len(plan.trunks)} shared trunks, {len(graph.jobs)} jobs; "
        f"trains {it['shared']} iterations instead of {it['separate']} for separate runs "
        f"({100 * it['fraction']:.0f}%)"
        + (f", plus {pretrain} pre-training iterations" if pretrain else "")
        + f"; launcher {spec.launcher.name}"
    )
    launcher = spec.launcher
    if launcher.name == "slurm":
        submit_slurm(graph, launcher)
        print(
            f"[study] submitted; follow it with `scratchdet study status {study_dir}`, report at any time with "
            f"`scratchdet report {study_dir}`"
        )
        return study_dir
    outcome = launch_local(graph, launcher) if launcher.name == "local" else launch_inprocess(graph)
    for job_id, ended in outcome.items():  # so that `study status` and status.json show what this launch did
        update_record(study_dir, job_id, outcome=ended.to_record())
    # The same JSON as `scratchdet study status DIR --json`, kept beside the study as of the end of this launch.
    atomic_write_text(study_dir / STATUS_FILE, status_json(study_status(study_dir)) + "\n")
    if report:
        from scratchdet.report.page import write_report

        print(f"[study] report: {write_report(study_dir)}")
    failed = {k: v for k, v in outcome.items() if v.failed}
    if failed:
        raise ScratchdetError(
            f"{len(failed)} of {len(outcome)} study jobs failed or were not run, see {study_dir}/{STATUS_FILE}: "
            + "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        )
    return study_dir
