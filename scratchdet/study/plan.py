"""Expanding a study spec into runs and shared trunks, with the iteration accounting.

Runs are the product arms x train_sizes x hparams x schedules. Runs that differ only in the schedule form a group;
with share_trunk, a group trains one trunk at the base LR up to the latest first-drop of its schedules and each
schedule forks its tail from the trunk checkpoint at its own first drop (or at its late cascade switch, when that
comes first).

Input conventions (model.input_format, pixel_scale, pixel_mean, pixel_std, stride_in_1x1; docs/WEIGHTS.md, "The
scratch arm's convention"): each pre-trained arm runs in the convention its weights were trained with, and every
scratch arm in one stated convention. When the pre-trained arms agree, that is theirs, so the scratch arm trains the
same network on the same inputs and only the initialization differs (docs/PAPER.md, "The claim": the controlled
comparison). When they differ (e.g. a Detectron BGR file beside MoCo's RGB one), the spec's `scratch_convention`
states which arm's convention the scratch arms take (or torchvision's); each scratch-vs-pre-trained comparison is
then controlled for the arm whose convention the scratch arms share, and plan.json says which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from scratchdet.config import Config, load_config
from scratchdet.engine.cascade_switch import cascade_switch_iter
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.errors import ConfigError
from scratchdet.modeling.detector import configured_input_convention
from scratchdet.study.fork import first_drop
from scratchdet.study.spec import ArmSpec, StudySpec
from scratchdet.weights.convention import FileConvention, InputConvention
from scratchdet.weights.initialization import apply_input_convention, resolve_input_convention


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
    seed: int | None = None  # the replicate's seed (spec `seeds`); None: the base config's, the only replicate


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
    # model.* values of each arm and where they come from (under "arms"), whether all arms share them, and the shared
    # values at the top level when they do.
    input_convention: dict = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)  # the spec's `verdict` settings, for the report
    stopping: dict = field(default_factory=dict)  # the spec's `stopping` settings
    seeds: list | None = None  # the spec's seed axis (None: one replicate per cell)

    def iterations(self) -> dict:
        """Iterations trained with the shared trunks vs. training every run separately."""
        separate = sum(r.max_iters for r in self.runs)
        shared = sum(t.iters for t in self.trunks) + sum(r.max_iters - (r.fork_iter or 0) for r in self.runs)
        return {"separate": separate, "shared": shared, "fraction": round(shared / separate, 4) if separate else 1.0}

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "base_config": self.base_config,
            "runs": [asdict(r) for r in self.runs],
            "trunks": [asdict(t) for t in self.trunks],
            "pretrain": self.pretrain,
            "input_convention": self.input_convention,
            "verdict": self.verdict,
            "stopping": self.stopping,
            "seeds": self.seeds,
            "iterations": self.iterations(),
        }


def _label(n: float) -> str:
    return f"{n:g}x"


def arm_overrides(arm: ArmSpec, study_dir: Path) -> list[str]:
    """init/weights (and checkpoint_key) overrides of an arm; a study-run pre-training is referenced by its run
    folder."""
    if arm.init == "scratch":
        return ["init=scratch"]
    weights = arm.weights or str(study_dir / "pretrain" / arm.name)
    key = [f"pretrained.checkpoint_key={arm.checkpoint_key}"] if arm.checkpoint_key else []
    return ["init=pretrained", f"weights={weights}", *key]


def run_config(base_config: str, overrides: list[str], output: Path, extra: list[str] | None = None) -> Config:
    return load_config(base_config, [*overrides, f"output={output}", *(extra or [])])


def _pretrain_convention(arm: ArmSpec) -> FileConvention:
    """The convention of a pre-training the study runs: its config's model.* keys (recorded in its checkpoints)."""
    from scratchdet.pretrain.config import load_pretrain_config  # imported here: it pulls in the pre-training stack

    cfg = load_pretrain_config(arm.pretrain_config, [*arm.pretrain_overrides, "output=unused"])
    return FileConvention(
        InputConvention.from_values(vars(cfg.model)),
        True,
        f"the study's pre-training of arm {arm.name!r} ({arm.pretrain_config})",
    )


SCRATCH_TORCHVISION = "torchvision"


def _shared(conventions: dict[str, InputConvention]) -> bool:
    values = list(conventions.values())
    return all(c.same_network(values[0]) for c in values[1:])


def study_input_conventions(
    spec: StudySpec, study_dir: Path, *, check_sources: bool = True
) -> tuple[dict[str, InputConvention] | None, dict[str, str]]:
    """The convention each arm's runs use, and where it comes from.

    Pre-trained arms: the convention of their weights file (weights/convention.py) or of the pre-training config the
    study runs; model.* keys set in the base config must agree with known ones. Scratch arms: one stated convention
    for all of them: `spec.scratch_convention` (a pre-trained arm's name, or "torchvision": the base config's keys,
    torchvision's where unset); unset, the pre-trained arms' common convention, or the base config's when no arm
    loads weights.

    Returns:
        ({arm name: convention}, {arm name: origin}); (None, {"*": why}) when check_sources=False and a weights file
        or pre-training config is not there yet.

    Raises:
        ConfigError: scratch arms beside pre-trained arms of different conventions without scratch_convention (the
            message names the arms, their conventions and the choices), or a conflicting explicit key.
        CheckpointError: a weights file that is missing, unreadable or ambiguous.
    """
    root = [f"data.root={spec.data_root}"] if spec.data_root else []
    found: dict[str, InputConvention] = {}
    origins: dict[str, str] = {}
    for arm in spec.arms:
        if arm.init != "pretrained":
            continue
        source = arm.weights or arm.pretrain_config
        if not check_sources and not Path(source).exists():
            return None, {
                "*": f"unresolved: {source} (arm {arm.name!r}) is not there yet; `scratchdet study` reads it "
                "before training any run"
            }
        cfg = run_config(spec.base_config, [*root, *spec.overrides, *arm_overrides(arm, study_dir)], study_dir)
        if arm.weights:
            resolve_input_convention(cfg)
        else:
            file = _pretrain_convention(arm)
            apply_input_convention(cfg, file.convention, file, arm.pretrain_config)
        found[arm.name] = configured_input_convention(cfg)
        origins[arm.name] = f"the weights of arm {arm.name!r}"
    scratch_arms = [a.name for a in spec.arms if a.init == "scratch"]
    if not scratch_arms:
        return found, origins
    choice = spec.scratch_convention
    if choice is None and found and not _shared(found):
        described = "; ".join(f"{name!r}: {conv.describe()}" for name, conv in found.items())
        raise ConfigError(
            f"the pre-trained arms load weights trained with different input conventions ({described}), and the "
            f"scratch arm(s) {', '.join(map(repr, scratch_arms))} can take only one: set scratch_convention in the "
            f"spec to the arm whose convention they take ({', '.join(found)}) or to torchvision. Each scratch-vs-"
            "pre-trained comparison is controlled only for the arm whose convention the scratch arms share "
            '(docs/WEIGHTS.md, "The scratch arm\'s convention")'
        )
    if choice is None and found:
        choice = next(iter(found))
    if choice in found:
        conv = found[choice]
        origin = f"the weights of arm {choice!r}" + ("" if spec.scratch_convention is None else " (scratch_convention)")
    else:  # torchvision, or no arm loads weights: the base config's keys, torchvision's where unset
        first = next(a for a in spec.arms if a.init == "scratch")
        cfg = run_config(spec.base_config, [*root, *spec.overrides, *arm_overrides(first, study_dir)], study_dir)
        resolve_input_convention(cfg)
        conv = configured_input_convention(cfg)
        origin = "the base config (no arm loads weights)" if not found else "scratch_convention: torchvision"
    for name in scratch_arms:
        found[name], origins[name] = conv, origin
    return found, origins


def _convention_record(conventions: dict[str, InputConvention] | None, origins: dict[str, str]) -> dict:
    """plan.json's input_convention: per arm, whether they all agree, and the shared values at the top level."""
    if conventions is None:
        return {"from": origins["*"]}
    arms = {name: {**conv.to_dict(), "from": origins[name]} for name, conv in conventions.items()}
    if not _shared(conventions):
        return {"from": "per arm (see arms)", "same_for_all_arms": False, "arms": arms}
    pretrained = [name for name, origin in origins.items() if origin == f"the weights of arm {name!r}"]
    first = pretrained[0] if pretrained else next(iter(conventions))
    return {**conventions[first].to_dict(), "from": origins[first], "same_for_all_arms": True, "arms": arms}


def plan_study(spec: StudySpec, *, check_sources: bool = True) -> Plan:
    """Expands `spec` into runs (validated configs) and trunks; nothing is trained here.

    Args:
        check_sources: False plans even when a pre-trained arm's weights file or pre-training config is not there
            yet (inspecting a plan); the runs then carry no input-convention keys, so `scratchdet study` never
            trains from such a plan.

    Raises:
        ConfigError: an invalid run config, or scratch arms beside pre-trained arms of different input conventions
            without the spec's scratch_convention.
        CheckpointError: a pre-trained arm's weights file that is missing or unreadable (its convention is read).
    """
    study_dir = Path(spec.output)
    conventions, convention_origins = study_input_conventions(spec, study_dir, check_sources=check_sources)
    runs: list[PlannedRun] = []
    trunks: list[PlannedTrunk] = []
    pretrain = {a.name: f"pretrain/{a.name}" for a in spec.arms if a.init == "pretrained" and not a.weights}
    many_hparams = len(spec.hparams) > 1
    cells = [
        (arm, size, hp, seed)
        for arm in spec.arms
        for size in spec.train_sizes
        for hp in spec.hparams
        for seed in (spec.seeds if spec.seeds is not None else [None])
    ]
    # One group of schedules per cell (arm, size, hparams, seed): they share a trunk.
    for arm, size, hp, seed in cells:
        size_label = "all" if size is None else str(size)
        group = (
            f"{arm.name}_{size_label}"
            + (f"_{hp.name}" if many_hparams else "")
            + (f"_s{seed}" if seed is not None else "")
        )
        root = [f"data.root={spec.data_root}"] if spec.data_root else []
        overrides = [
            *root,
            *spec.overrides,
            *(conventions[arm.name].overrides() if conventions else []),
            *arm_overrides(arm, study_dir),
            *hp.overrides,
        ]
        if size is not None:
            overrides.append(f"data.train_subset={size}")
        if seed is not None:
            overrides.append(f"seed={seed}")
        group_runs = []
        for n in spec.schedules:
            name = f"{group}_{_label(n)}"
            run_overrides = [*overrides, f"schedule.multiplier={n:g}"]
            cfg = run_config(spec.base_config, run_overrides, study_dir / name)
            schedule = schedule_from_config(cfg)
            # The shareable part ends at the first LR drop or at the late cascade switch, whichever is
            # first: schedules of different lengths switch at different iterations (fork.py).
            switch = cascade_switch_iter(cfg, schedule.max_iters)
            fork_iter = first_drop(schedule) if switch is None else min(first_drop(schedule), switch)
            group_runs.append(
                PlannedRun(
                    name=name,
                    arm=arm.name,
                    init=arm.init,
                    schedule=float(n),
                    train_size=size,
                    train_size_label=size_label,
                    hparams=hp.name,
                    hparams_overrides=list(hp.overrides),
                    overrides=run_overrides,
                    path=f"runs/{name}",
                    max_iters=schedule.max_iters,
                    fork_iter=fork_iter,
                    seed=seed,
                )
            )
        # A run that switches to cascade at iteration 0 shares nothing with the others: it trains alone.
        sharing = [r for r in group_runs if r.fork_iter]
        if spec.share_trunk and len(sharing) > 1:
            longest = max(sharing, key=lambda r: r.max_iters)
            trunk = PlannedTrunk(
                name=group,
                path=f"trunks/{group}",
                overrides=list(longest.overrides),
                iters=max(r.fork_iter for r in sharing),
                forks=sorted({r.fork_iter for r in sharing}),
            )
            trunks.append(trunk)
            for r in sharing:
                r.trunk = trunk.path
        for r in group_runs:
            if r.trunk is None:
                r.fork_iter = None
        runs += group_runs
    return Plan(
        name=spec.name,
        base_config=spec.base_config,
        runs=runs,
        trunks=trunks,
        pretrain=pretrain,
        input_convention=_convention_record(conventions, convention_origins),
        verdict=asdict(spec.verdict),
        stopping=asdict(spec.stopping),
        seeds=list(spec.seeds) if spec.seeds is not None else None,
    )
