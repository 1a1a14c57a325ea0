"""Expanding a study spec into runs and shared trunks, with the iteration accounting (issue 4, parts 1-2).

Runs are the product arms x train_sizes x hparams x schedules. Runs that differ only in the schedule form a group;
with share_trunk, a group trains one trunk at the base LR up to the latest first-drop of its schedules and each
schedule forks its tail from the trunk checkpoint at its own first drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchdet.config import Config, load_config
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.study.fork import first_drop
from scratchdet.study.spec import ArmSpec, StudySpec


@dataclass
class PlannedRun:
    name: str
    arm: str
    init: str
    schedule: float
    train_size: int | None
    train_size_label: str
    hparams: str
    hparams_overrides: list[str]
    overrides: list[str]  # everything applied over the base config, in order
    path: str  # relative to the study folder
    max_iters: int
    trunk: str | None = None  # relative path of the trunk it forks from
    fork_iter: int | None = None


@dataclass
class PlannedTrunk:
    name: str
    path: str
    overrides: list[str]
    iters: int
    forks: list[int] = field(default_factory=list)


@dataclass
class Plan:
    name: str
    base_config: str
    runs: list[PlannedRun]
    trunks: list[PlannedTrunk]
    pretrain: dict[str, str]  # arm name -> relative path of the pre-training run the study performs

    def iterations(self) -> dict:
        """Iterations trained with the shared trunks vs. training every run separately."""
        separate = sum(r.max_iters for r in self.runs)
        shared = sum(t.iters for t in self.trunks) + sum(
            r.max_iters - (r.fork_iter or 0) for r in self.runs
        )
        return {"separate": separate, "shared": shared, "fraction": round(shared / separate, 4) if separate else 1.0}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base_config": self.base_config,
            "runs": [asdict(r) for r in self.runs],
            "trunks": [asdict(t) for t in self.trunks],
            "pretrain": self.pretrain,
            "iterations": self.iterations(),
        }


def _label(n: float) -> str:
    return f"{n:g}x"


def arm_overrides(arm: ArmSpec, study_dir: Path) -> list[str]:
    """init/weights overrides of an arm; a study-run pre-training is referenced by its run folder."""
    if arm.init == "scratch":
        return ["init=scratch"]
    weights = arm.weights or str(study_dir / "pretrain" / arm.name)
    return ["init=pretrained", f"weights={weights}"]


def run_config(base_config: str, overrides: list[str], output: Path, extra: list[str] | None = None) -> Config:
    return load_config(base_config, [*overrides, f"output={output}", *(extra or [])])


def plan_study(spec: StudySpec) -> Plan:
    """Expands `spec` into runs (validated configs) and trunks; nothing is trained here."""
    study_dir = Path(spec.output)
    runs: list[PlannedRun] = []
    trunks: list[PlannedTrunk] = []
    pretrain = {a.name: f"pretrain/{a.name}" for a in spec.arms if a.init == "pretrained" and not a.weights}
    many_hparams = len(spec.hparams) > 1
    for arm in spec.arms:
        for size in spec.train_sizes:
            size_label = "all" if size is None else str(size)
            for hp in spec.hparams:
                group = f"{arm.name}_{size_label}" + (f"_{hp.name}" if many_hparams else "")
                root = [f"data.root={spec.data_root}"] if spec.data_root else []
                overrides = [*root, *spec.overrides, *arm_overrides(arm, study_dir), *hp.overrides]
                if size is not None:
                    overrides.append(f"data.train_subset={size}")
                group_runs = []
                for n in spec.schedules:
                    name = f"{group}_{_label(n)}"
                    run_overrides = [*overrides, f"schedule.multiplier={n:g}"]
                    schedule = schedule_from_config(run_config(spec.base_config, run_overrides, study_dir / name))
                    group_runs.append(PlannedRun(
                        name=name, arm=arm.name, init=arm.init, schedule=float(n), train_size=size,
                        train_size_label=size_label, hparams=hp.name, hparams_overrides=list(hp.overrides),
                        overrides=run_overrides, path=f"runs/{name}", max_iters=schedule.max_iters,
                        fork_iter=first_drop(schedule),
                    ))
                if spec.share_trunk and len(group_runs) > 1:
                    longest = max(group_runs, key=lambda r: r.max_iters)
                    trunk = PlannedTrunk(
                        name=group, path=f"trunks/{group}", overrides=list(longest.overrides),
                        iters=max(r.fork_iter for r in group_runs), forks=sorted({r.fork_iter for r in group_runs}),
                    )
                    trunks.append(trunk)
                    for r in group_runs:
                        r.trunk = trunk.path
                else:
                    for r in group_runs:
                        r.fork_iter = None
                runs += group_runs
    return Plan(name=spec.name, base_config=spec.base_config, runs=runs, trunks=trunks, pretrain=pretrain)
