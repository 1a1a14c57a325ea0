"""`scratchdet study SPEC.yaml`: plan, build the job graph, launch what is not done yet, then write the report.

Resumable at every level: a finished pre-training, trunk segment or run is skipped, an interrupted one resumes from
its last checkpoint, a run not started forks from its trunk. Killing the study and rerunning the same command
finishes it. A job that fails (e.g. a diverged loss) is recorded, its dependents are not run, and the others go on.

Where the jobs run is the spec's `launcher` (study/launchers.py); the plan, the graph and every number are the
same whichever launcher runs them.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

from scratchdet.engine.run_dir import check_writable
from scratchdet.errors import ConfigError, ScratchdetError
from scratchdet.files import atomic_write_json, atomic_write_text
from scratchdet.run_folder import RunFolder
from scratchdet.study.graph import JobGraph, build_graph, describe_graph
from scratchdet.study.jobs import job_config
from scratchdet.study.launchers import launch_inprocess, launch_local, submit_slurm
from scratchdet.study.plan import Plan, plan_study, run_config
from scratchdet.study.records import record_path, update_record
from scratchdet.study.spec import StudySpec, load_study_spec
from scratchdet.study.status import status_json, study_status
from scratchdet.study.stopping import DECISION_FILE, Stopper, add_decision_jobs, read_decision, without_decisions

STATUS_FILE = "status.json"


def build_study_graph(plan: Plan, spec: StudySpec) -> JobGraph:
    """The plan's job graph, with each run's and trunk's global batch for the compute estimate; a sequential study
    under SLURM gets its decision jobs (study/stopping.py)."""
    study_dir = Path(spec.output)
    batch = {r.path: run_config(spec.base_config, r.overrides, study_dir / r.path).train.batch_size for r in plan.runs}
    for trunk in plan.trunks:
        batch[trunk.path] = run_config(spec.base_config, trunk.overrides, study_dir / trunk.path).train.batch_size
    graph = build_graph(plan, spec, study_dir, batch)
    if spec.stopping.enabled and spec.launcher.name == "slurm":
        graph = add_decision_jobs(graph, {r.path: float(r.schedule) for r in plan.runs})
    return graph


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


def folder_differences(graph: JobGraph) -> dict[str, list[str]]:
    """{job id: config differences} for every job whose run folder already holds trained work (a checkpoint) and
    a config.yaml that differs from the config the plan now gives the job, outside the keys a resumed run may change
    (the comparison resume makes, engine/run_dir.py config_diff). Trunk segments share one folder: it is compared
    once, under its first segment.

    Raises:
        ConfigError: a planned job's config is invalid.
    """
    import yaml

    from scratchdet.config import config_to_dict
    from scratchdet.engine.run_dir import config_diff

    study_dir = Path(graph.study_dir)
    seen: set[str] = set()
    differences = {}
    for job in graph.jobs:
        folder = RunFolder(study_dir / job.path)
        saved = folder.config
        # Only trained work is reused, and so compared: a folder without a checkpoint (a job that failed early) is
        # started fresh, and a fresh start sets another attempt's records aside (engine/run_dir.py).
        if job.path in seen or not saved.is_file() or folder.checkpoint_iteration() is None:
            continue
        seen.add(job.path)
        try:
            recorded = yaml.safe_load(saved.read_text())
        except (OSError, yaml.YAMLError) as e:
            differences[job.id] = [f"its config.yaml cannot be read ({type(e).__name__}: {e})"]
            continue
        diff = config_diff(recorded if isinstance(recorded, dict) else {}, config_to_dict(job_config(job, study_dir)))
        if diff:
            differences[job.id] = diff
    return differences


def set_aside_jobs(graph: JobGraph, job_ids: list[str], log=print) -> Path:
    """Moves the run folders and job records of `job_ids`, and of every job that depends on them (a fork of a set
    aside trunk started from its checkpoints), into STUDY/discarded_YYYYmmdd_HHMMSS/; returns that folder."""
    study_dir = Path(graph.study_dir)
    stamp = study_dir / f"discarded_{datetime.now():%Y%m%d_%H%M%S}"
    while stamp.exists():
        stamp = stamp.with_name(stamp.name + "_")
    chosen = set(job_ids)
    for job_id in job_ids:
        chosen.update(graph.dependents(job_id))
    paths = {graph.job(j).path for j in chosen}
    # Trunk segments share a folder: a set-aside folder takes every job that writes it, and what depends on them.
    chosen.update(j.id for j in graph.jobs if j.path in paths)
    for job_id in list(chosen):
        chosen.update(graph.dependents(job_id))
    paths = {graph.job(j).path for j in chosen}
    for path in sorted(paths):
        if (study_dir / path).exists():
            (stamp / path).parent.mkdir(parents=True, exist_ok=True)
            (study_dir / path).rename(stamp / path)
            log(f"[study] {path}: set aside into {stamp / path} (--replan)")
    for job_id in sorted(chosen):
        for record in (record_path(study_dir, job_id), record_path(study_dir, job_id).with_suffix(".log")):
            if record.exists():
                target = stamp / record.relative_to(study_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                record.rename(target)
    return stamp


def check_study_folder(graph: JobGraph, replan: bool, log=print) -> None:
    """A study folder describes one study: before anything is written or launched, every existing run folder must
    have been trained with the config the spec now plans for it. A difference is refused with the diff and the two
    ways out; with `replan` the differing runs (and what was forked from them) are set aside and trained again.

    Raises:
        ConfigError: a run folder was trained with other settings, and `replan` is false.
    """
    # A wait on a sequential study's decision job is no dependency of the work: without it, setting one run aside
    # would take every longer schedule of every arm with it.
    work = without_decisions(graph)
    differences = folder_differences(work)
    if not differences:
        return
    if replan:
        stamp = set_aside_jobs(work, sorted(differences), log)
        # Decisions were made from runs now set aside: they are made again.
        root = Path(graph.study_dir)
        decisions = [root / DECISION_FILE, *(record_path(root, j.id) for j in graph.jobs if j.kind == "decide")]
        for path in (p for p in decisions if p.exists()):
            (stamp / path.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            path.rename(stamp / path.relative_to(root))
        return
    lines = [f"  {job_id} ({graph.job(job_id).path}):\n    " + "\n    ".join(d) for job_id, d in differences.items()]
    raise ConfigError(
        f"{graph.study_dir} holds {len(differences)} run(s) trained with other settings than the spec now plans "
        "(saved config.yaml -> planned):\n" + "\n".join(lines) + "\nA study folder describes one study: its report "
        "would compare runs trained differently as if controlled. Write this study to a new folder (output=DIR), or "
        f"rerun with --replan to move the differing runs into {graph.study_dir}/discarded_<time>/ and train them "
        "again (what they share with the rest is kept)"
    )


def run_study(
    spec_path: str | Path, overrides: list[str] | None = None, *, report: bool = True, replan: bool = False
) -> Path:
    """Plans the study of `spec_path` and launches its jobs; returns the study folder.

    With launcher.name=inprocess or local, returns when every job has ended and writes the report; with slurm,
    returns once the graph is submitted (`scratchdet study status DIR`, `scratchdet report DIR`). A rerun into the
    same folder checks first that every run already there was trained with the config now planned for it
    (`check_study_folder`; `replan` sets differing runs aside), and only then writes spec.yaml, plan.json and
    jobs.json.

    Raises:
        ConfigError: a run folder trained with other settings (without `replan`).
        ScratchdetError: a job failed (after the others ran), or submission failed.
        Preempted: the study was asked to stop; every running job checkpointed.
    """
    spec = load_study_spec(spec_path, overrides)
    study_dir = Path(spec.output)
    plan = plan_study(spec)
    graph = build_study_graph(plan, spec)
    check_study_folder(graph, replan)
    # Every job reads jobs.json and writes its run folder and record here, wherever it runs: say so when it cannot.
    check_writable(study_dir, "the study folder (it must be on a file system every job's node can write)")
    if Path(spec_path).resolve() != (study_dir / "spec.yaml").resolve():
        shutil.copy2(spec_path, study_dir / "spec.yaml")
    atomic_write_json(study_dir / "plan.json", plan.to_dict())
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
    decided = study_dir / DECISION_FILE
    if decided.exists() and (launcher.name != "slurm" or not spec.stopping.enabled):
        # Stopping off: an earlier sequential launch stopped here, and this one trains the rest. Stopping on, on this
        # machine: the launcher's Stopper decides again from the finished runs (and writes it again if settled).
        decided.unlink()
        if not spec.stopping.enabled:
            print(f"[study] stopping is off: removed {decided} of an earlier launch; the jobs it skipped run now")
    if launcher.name == "slurm":
        decision = read_decision(study_dir) if spec.stopping.enabled else None
        why = None if decision is None else f"settled at {decision.schedule:g}x ({decided}); {decision.reason}"
        submit_slurm(graph, launcher, not_needed={j: why for j in decision.not_run} if decision else None)
        print(
            f"[study] submitted; follow it with `scratchdet study status {study_dir}`, report at any time with "
            f"`scratchdet report {study_dir}`"
        )
        return study_dir
    stopper = Stopper(graph, enabled=spec.stopping.enabled)
    if launcher.name == "local":
        outcome = launch_local(graph, launcher, stopper=stopper)
    else:
        outcome = launch_inprocess(graph, stopper=stopper)
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
