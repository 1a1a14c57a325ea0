"""`scratchdet study SPEC.yaml`: plan, then run what is not done yet, then write the report.

Resumable at every level: a finished pre-training, trunk or run is skipped, an interrupted one resumes from its last
checkpoint, a run not started forks from its trunk. Killing the study and rerunning the same command finishes it.
A run that fails (e.g. a diverged loss) is recorded in status.json and the others go on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from scratchdet.engine.checkpoint import POINTER
from scratchdet.engine.trainer import train
from scratchdet.errors import ScratchdetError
from scratchdet.study.fork import fork_run
from scratchdet.study.plan import Plan, plan_study, run_config
from scratchdet.study.spec import StudySpec, load_study_spec


def checkpoint_iteration(run_dir: Path) -> int | None:
    """Iterations finished by the run's latest checkpoint (from the pointer's file name), or None."""
    pointer = run_dir / "checkpoints" / POINTER
    if not pointer.is_file():
        return None
    return int(pointer.read_text().strip().removeprefix("model_").removesuffix(".pth"))


def _train_until(base_config: str, overrides: list[str], out: Path, until: int, extra: list[str]) -> str:
    """Trains the run at `out` up to `until` iterations, resuming if it has started; returns what was done."""
    done = checkpoint_iteration(out)
    if done is not None and done >= until:
        return "skipped (finished)"
    resume = ["resume=true"] if done is not None else []
    train(run_config(base_config, overrides, out, [f"train.max_iters={until}", *extra, *resume]))
    return "resumed" if resume else "trained"


def _pretrain(spec: StudySpec, study_dir: Path) -> None:
    from scratchdet.pretrain.classify import pretrain
    from scratchdet.pretrain.config import load_pretrain_config

    for arm in spec.arms:
        if arm.init != "pretrained" or arm.weights:
            continue
        out = study_dir / "pretrain" / arm.name
        if (out / "pretrain_summary.json").is_file():
            print(f"[study] pre-training {arm.name}: skipped (finished)")
            continue
        resume = ["resume=true"] if checkpoint_iteration(out) is not None else []
        print(f"[study] pre-training {arm.name} -> {out}")
        pretrain(load_pretrain_config(arm.pretrain_config, [*arm.pretrain_overrides, f"output={out}", *resume]))


def execute_plan(plan: Plan, spec: StudySpec, study_dir: Path) -> dict:
    """Runs pre-trainings, trunks and runs in order; returns {name: status} for every trunk and run."""
    status: dict[str, str] = {}
    failed_trunks: set[str] = set()
    for trunk in plan.trunks:
        extra = [f"train.extra_checkpoints=[{','.join(map(str, trunk.forks))}]"]
        print(f"[study] trunk {trunk.name}: base LR until iteration {trunk.iters}, forks at {trunk.forks}")
        try:
            status[trunk.path] = _train_until(
                spec.base_config, trunk.overrides, study_dir / trunk.path, trunk.iters, extra
            )
        except ScratchdetError as e:
            status[trunk.path] = f"failed: {e}"
            failed_trunks.add(trunk.path)
    for run in plan.runs:
        out = study_dir / run.path
        if run.trunk in failed_trunks:
            status[run.path] = f"not run: trunk {run.trunk} failed"
            continue
        try:
            forked = False
            if run.trunk is not None and checkpoint_iteration(out) is None:
                if out.exists():
                    shutil.rmtree(out)  # a fork interrupted before its first checkpoint holds nothing to keep
                fork_run(study_dir / run.trunk, run.fork_iter, run_config(spec.base_config, run.overrides, out))
                forked = True
                print(f"[study] {run.name}: forked from {run.trunk} at iteration {run.fork_iter}")
            status[run.path] = _train_until(spec.base_config, run.overrides, out, run.max_iters, [])
            if forked:
                status[run.path] = f"trained from the trunk's iteration {run.fork_iter}"
        except ScratchdetError as e:
            status[run.path] = f"failed: {e}"
        print(f"[study] {run.name}: {status[run.path]}")
    return status


def run_study(spec_path: str | Path, overrides: list[str] | None = None, *, report: bool = True) -> Path:
    """Plans and runs the study of `spec_path`; returns the study folder. Raises ScratchdetError if a run failed."""
    spec = load_study_spec(spec_path, overrides)
    study_dir = Path(spec.output)
    plan = plan_study(spec)
    study_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(spec_path, study_dir / "spec.yaml")
    (study_dir / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    it = plan.iterations()
    print(
        f"[study] {spec.name}: {len(plan.runs)} runs, {len(plan.trunks)} shared trunks; trains {it['shared']} "
        f"iterations instead of {it['separate']} for separate runs ({100 * it['fraction']:.0f}%)"
    )
    _pretrain(spec, study_dir)
    status = execute_plan(plan, spec, study_dir)
    (study_dir / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    if report:
        from scratchdet.study.report import write_report

        print(f"[study] report: {write_report(study_dir)}")
    failed = {k: v for k, v in status.items() if v.startswith(("failed", "not run"))}
    if failed:
        raise ScratchdetError(
            f"{len(failed)} of {len(status)} study runs failed, see {study_dir}/status.json: "
            + "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        )
    return study_dir
