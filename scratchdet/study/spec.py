"""The study spec: which controlled comparison to run.

A spec names one base config and the axes to vary over it; everything not on an axis is identical across runs, which
is what makes the comparison controlled (docs/PAPER.md, "The claim": same hyper-parameters for both
initializations). Example:

    name: schedules
    base_config: configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml
    output: runs/study-schedules
    data_root: data/shapes                      # data.root of every run (or give data.* paths in overrides)
    overrides: [train.batch_size=16]            # applied to every run
    arms:                                       # the initializations compared
      - {name: scratch, init: scratch}
      - {name: pretrained, init: pretrained, pretrain_config: configs/pretrain/mini_R18_GN_synth.yaml}
    schedules: [2, 3, 4, 5, 6]                  # the N of Nx
    train_sizes: [null, 1000]                   # null = the whole training set (data.train_subset otherwise)
    hparams:                                    # optional grid, e.g. LR x weight decay for small data
      - {name: default, overrides: []}
    launcher:                                   # where the jobs run (study/launchers.py); default: this process
      name: slurm
      tasks_per_node: 8
      partition: gpu
      time_minutes: 4320
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import MISSING
from omegaconf.errors import OmegaConfBaseException

from scratchdet.config import COUNT, NON_NEGATIVE, POSITIVE, NumberRule, check_numbers, load_structured, override_keys
from scratchdet.errors import ConfigError


@dataclass
class ArmSpec:
    """One initialization arm. Pre-trained arms take weights=PATH, or a pretrain config the study runs first."""

    name: str = "scratch"
    init: str = "scratch"
    weights: str | None = None
    pretrain_config: str | None = None
    pretrain_overrides: list[str] = field(default_factory=list)
    # The network to load from a weights file holding several (pretrained.checkpoint_key: teacher, state_dict_ema).
    checkpoint_key: str | None = None


@dataclass
class HParamSpec:
    name: str = "default"
    overrides: list[str] = field(default_factory=list)


@dataclass
class LauncherSpec:
    """Where a study's jobs run (study/launchers.py). Not part of any run's config: launching a run elsewhere, or
    with more processes, changes none of its numbers (train.batch_size is the global batch)."""

    # inprocess: every job in this process, one after another (the default; the demo and CPU users);
    # local: jobs as process groups on this machine, up to max_parallel at once as their dependencies finish;
    # slurm: one SLURM job per study job, submitted with afterok dependencies, requeued on preemption.
    name: str = "inprocess"
    nodes: int = 1  # slurm: nodes per job
    tasks_per_node: int = 1  # processes per node: one per GPU, or gloo processes on CPU
    gpus_per_task: int = 1  # 0: CPU processes (gloo); slurm requests tasks_per_node x gpus_per_task GPUs per node
    cpus_per_task: int | None = None
    max_parallel: int = 1  # local: jobs running at once (GPUs are handed out so that no two jobs share one)
    # slurm (submitit): sbatch's --partition, --account, --qos, --time, --mem, --constraint.
    partition: str | None = None
    # A sequential study's decision jobs (study/stopping.py) ask for no GPU, and a GPU-only partition may refuse
    # them: their partition, when it must differ from `partition` (None: the same). Set, the decision jobs go there
    # without the training jobs' `constraint` and `qos` (node features and QOS of the GPU partition).
    decide_partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_minutes: int = 4320
    mem_gb: float | None = None
    constraint: str | None = None
    # Seconds before the time limit at which SLURM signals the job (USR2): it checkpoints and requeues itself.
    signal_delay_s: int = 120
    sbatch_extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option, e.g. {exclude: node7}
    # For --dry-run's estimate: measured training images per second per device at this study's settings.
    images_per_second_per_device: float | None = None


LAUNCHERS = ("inprocess", "local", "slurm")


@dataclass
class VerdictSpec:
    """How the report's verdict states a gap (report/verdict.py)."""

    # AP points within which scratch counts as "no worse than" a pre-trained arm: the paper calls 41.3 vs 41.1
    # comparable and reads gaps of about 0.5 AP as the ones that decide (docs/PAPER.md, "Findings"); seed-to-seed
    # spread on COCO is 0.1-0.3 AP, so a smaller margin is below what a few seeds can resolve.
    margin: float = 0.5


@dataclass
class StoppingSpec:
    """The sequential study (off by default): after every run of one schedule has its final evaluation, stop when
    the study's question is settled; the jobs not yet needed are not started (or cancelled), and a rerun with
    stopping off trains them from the shared checkpoints."""

    enabled: bool = False


@dataclass
class StudySpec:
    name: str = MISSING
    base_config: str = MISSING
    output: str = MISSING
    # Shorthand for the data.root override of every run (settable as `scratchdet study SPEC data_root=DIR`).
    data_root: str | None = None
    overrides: list[str] = field(default_factory=list)
    arms: list[ArmSpec] = field(default_factory=lambda: [ArmSpec()])
    schedules: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0])
    train_sizes: list[int | None] = field(default_factory=lambda: [None])
    hparams: list[HParamSpec] = field(default_factory=lambda: [HParamSpec()])
    # Seed replicates: runs that differ only in `seed` (initialization, data order, augmentation, RoI sampling), each
    # with its own trunk per arm, named <group>_s<seed>. None: one run per cell with the base config's seed, named
    # without a suffix. Training noise is measured only when there are several (the verdict says so otherwise).
    seeds: list[int] | None = None
    verdict: VerdictSpec = field(default_factory=VerdictSpec)
    stopping: StoppingSpec = field(default_factory=StoppingSpec)
    # Train runs that differ only in the schedule length from one trunk (fork_run); false trains each separately.
    share_trunk: bool = True
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    # The input convention of the scratch arms (study/plan.py, docs/WEIGHTS.md "The scratch arm's convention"): the
    # name of a pre-trained arm whose convention they take, or "torchvision" (the base config's model.* keys,
    # torchvision's where unset). Unset: the pre-trained arms' common convention; required when theirs differ.
    scratch_convention: str | None = None


# Run overrides that name the dataset paths data_root gives (data.root, data.train.*, data.val.*, data.voc_root).
_DATA_PATH_KEYS = (
    "data.root",
    "data.train.json",
    "data.train.images",
    "data.val.json",
    "data.val.images",
    "data.voc_root",
)


def _override_sets(override: str, keys: tuple[str, ...]) -> bool:
    """Whether a `key=value` run override sets any of `keys` (a malformed one is left for load_config to report)."""
    try:
        return bool(override_keys([override]) & set(keys))
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):
        return override.partition("=")[0].strip() in keys


# Keys that make an arm what it is: its initialization, its weights, and the input convention a weight file sets
# (weights/convention.py, CONVENTION_KEYS; the plan gives the scratch arm the same values). A run override that
# set one would change the arm behind its name: plan.json, the tables and the verdict would still call it scratch.
ARM_KEYS = (
    "init",
    "weights",
    "pretrained.checkpoint_key",
    "model.input_format",
    "model.pixel_scale",
    "model.pixel_mean",
    "model.pixel_std",
    "model.stride_in_1x1",
)
# Keys the plan sets per run from the axes (schedules, train_sizes) and the study folder: the plan applies them after
# every run override, so an override of one would be dropped without a word.
AXIS_KEYS = ("schedule.multiplier", "data.train_subset", "output")


def _sets_data_paths(override: str) -> bool:
    return _override_sets(override, _DATA_PATH_KEYS)


def load_study_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Reads a study spec YAML (plus dotted overrides such as output=runs/x) and validates it.

    `data_root=DIR` on the command line wins over dataset paths among the file's run overrides (`overrides`,
    `hparams[*].overrides`): they are dropped, with one warning naming them, so every run reads DIR.

    Raises:
        ConfigError: bad keys or values, or data_root and a data-path override set in the same place.
    """
    spec = load_structured(StudySpec, path, overrides, "study spec")
    given = override_keys(overrides)
    if "data_root" in given and spec.data_root:
        lists = [] if "overrides" in given else [("overrides", spec.overrides)]
        if "hparams" not in given:
            lists += [(f"hparams[{hp.name}].overrides", hp.overrides) for hp in spec.hparams]
        dropped = [f"{where}: {o}" for where, items in lists for o in items if _sets_data_paths(o)]
        for _, items in lists:
            items[:] = [o for o in items if not _sets_data_paths(o)]
        if dropped:
            warnings.warn(
                f"data_root={spec.data_root} is given on the command line and wins: dropped the run "
                f"overrides {dropped} of {path}",
                stacklevel=2,
            )
    validate_spec(spec, str(path))
    return spec


# Every numeric key of a study spec and its valid range (scratchdet/config.py check_numbers).
SPEC_NUMBER_RULES: dict[str, NumberRule] = {
    "schedules": NumberRule(0, low_open=True, text="positive multipliers"),
    "train_sizes": NumberRule(1, text="positive image counts", note="null = the whole training set"),
    "launcher.nodes": COUNT,
    "launcher.tasks_per_node": COUNT,
    "launcher.gpus_per_task": NumberRule(0, note="0 = CPU processes"),
    "launcher.cpus_per_task": COUNT,
    "launcher.max_parallel": COUNT,
    "launcher.time_minutes": COUNT,
    "launcher.mem_gb": POSITIVE,
    "launcher.signal_delay_s": NON_NEGATIVE,
    "launcher.images_per_second_per_device": POSITIVE,
    "seeds": NumberRule(0, text="non-negative integers", note="null = one replicate, the base config's seed"),
    "verdict.margin": NumberRule(0, low_open=True, text="a positive number of AP points"),
}


def validate_spec(spec: StudySpec, path: str = "spec") -> None:
    launcher = spec.launcher
    if launcher.name not in LAUNCHERS:
        raise ConfigError(f"{path}: launcher.name={launcher.name!r}; choose one of {', '.join(LAUNCHERS)}")
    check_numbers(spec, SPEC_NUMBER_RULES, prefix=f"{path}: ")
    if launcher.name == "local" and launcher.nodes != 1:
        raise ConfigError(f"{path}: launcher.name=local runs on this machine only; launcher.nodes must be 1")
    names = [a.name for a in spec.arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: arm names must be unique, got {names}")
    for arm in spec.arms:
        if arm.init not in ("scratch", "pretrained"):
            raise ConfigError(f"{path}: arm {arm.name!r} has init={arm.init!r}; choose scratch or pretrained")
        if arm.init == "pretrained" and not (arm.weights or arm.pretrain_config):
            raise ConfigError(f"{path}: pre-trained arm {arm.name!r} needs weights=PATH or pretrain_config=YAML")
        if arm.init == "scratch" and (arm.weights or arm.pretrain_config):
            raise ConfigError(f"{path}: scratch arm {arm.name!r} must not name weights or a pretrain config")
        if arm.checkpoint_key and not arm.weights:
            raise ConfigError(
                f"{path}: arm {arm.name!r} sets checkpoint_key={arm.checkpoint_key!r} without weights=PATH; it names "
                "the network to load from a weights file holding several"
            )
    if not spec.schedules:
        raise ConfigError(f"{path}: schedules must be positive multipliers, got {list(spec.schedules)}")
    if len(set(spec.schedules)) != len(spec.schedules):
        raise ConfigError(f"{path}: schedules has duplicates: {list(spec.schedules)}")
    if len(set(spec.train_sizes)) != len(spec.train_sizes):
        # Two entries would plan two runs into one folder: trained once, counted (iterations, device-hours) twice.
        raise ConfigError(f"{path}: train_sizes has duplicates: {list(spec.train_sizes)}")
    if not spec.verdict.margin > 0:
        raise ConfigError(f"{path}: verdict.margin must be a positive number of AP points, got {spec.verdict.margin}")
    if spec.seeds is not None:
        if not spec.seeds or any(not isinstance(x, int) or x < 0 for x in spec.seeds):
            raise ConfigError(f"{path}: seeds must be a non-empty list of non-negative integers, got {spec.seeds}")
        if len(set(spec.seeds)) != len(spec.seeds):
            raise ConfigError(f"{path}: seeds has duplicates: {list(spec.seeds)} (two replicates would be one run)")
    pretrained = [a.name for a in spec.arms if a.init == "pretrained"]
    if spec.scratch_convention is not None and spec.scratch_convention not in ("torchvision", *pretrained):
        raise ConfigError(
            f"{path}: scratch_convention={spec.scratch_convention!r} names no pre-trained arm; choose one of "
            f"{', '.join([*pretrained, 'torchvision'])}"
        )
    _refuse_arm_and_axis_keys(spec, path)
    hp_names = [h.name for h in spec.hparams]
    if len(set(hp_names)) != len(hp_names):
        raise ConfigError(f"{path}: hparams names must be unique, got {hp_names}")
    if spec.data_root:
        # Runs get data.root=data_root first, then these overrides, so a data.root among them would win in silence.
        clash = [
            o
            for o in [*spec.overrides, *(o for hp in spec.hparams for o in hp.overrides)]
            if _override_sets(o, ("data.root",))
        ]
        if clash:
            raise ConfigError(
                f"{path}: data_root={spec.data_root} and the run override {clash[0]!r} both set "
                "data.root; give one of them"
            )


def _refuse_arm_and_axis_keys(spec: StudySpec, path: str) -> None:
    """Refuses run overrides (global `overrides:` or an `hparams` entry's) that set an arm's keys or an axis's.

    The arms are the compared axis (docs/PAPER.md, "The claim": the same hyper-parameters for every
    initialization); only `arms:` may set init, weights and the input convention, and only the axes set the schedule,
    the training-set size and the output.

    Raises:
        ConfigError: naming the entry (`overrides` or `hparams[NAME]`), the override and the key.
    """
    entries = [("overrides", spec.overrides)] + [(f"hparams[{hp.name}].overrides", hp.overrides) for hp in spec.hparams]
    for where, overrides in entries:
        for override in overrides:
            axis_keys = (*AXIS_KEYS, "seed") if spec.seeds is not None else AXIS_KEYS
            for keys, why in (
                (
                    ARM_KEYS,
                    "defines an arm: set it in `arms:` (init, weights, checkpoint_key), or let the weight file set it",
                ),
                (axis_keys, "is set by the study's axes (schedules, train_sizes, seeds) and output"),
            ):
                hit = sorted(_override_keys_in(override, keys))
                if hit:
                    raise ConfigError(
                        f"{path}: {where} has {override!r}, which sets {hit[0]}; that key {why}. The arms are the "
                        "compared axis: nothing else may change what an arm is"
                    )


def _override_keys_in(override: str, keys: tuple[str, ...]) -> set[str]:
    """The `keys` (or a parent of one: `model={...}` sets model.pixel_mean) that a `key=value` override sets."""
    try:
        given = override_keys([override])
    except (OmegaConfBaseException, ValueError, yaml.YAMLError):
        given = {override.partition("=")[0].strip()}
    return {k for k in keys for g in given if k == g or k.startswith(g + ".")}
