"""The study spec: which controlled comparison to run (issue 4, part 1).

A spec names one base config and the axes to vary over it; everything not on an axis is identical across runs, which
is what makes the comparison controlled (PAPER.md: same hyper-parameters for both initializations). Example:

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from scratchdet.config import load_structured
from scratchdet.errors import ConfigError


@dataclass
class ArmSpec:
    """One initialization arm. Pre-trained arms take weights=PATH, or a pretrain config the study runs first."""

    name: str = "scratch"
    init: str = "scratch"
    weights: str | None = None
    pretrain_config: str | None = None
    pretrain_overrides: list[str] = field(default_factory=list)


@dataclass
class HParamSpec:
    name: str = "default"
    overrides: list[str] = field(default_factory=list)


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
    # Train runs that differ only in the schedule length from one trunk (fork_run); false trains each separately.
    share_trunk: bool = True


def load_study_spec(path: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Reads a study spec YAML (plus dotted overrides such as output=runs/x) and validates it."""
    spec = load_structured(StudySpec, path, overrides, "study spec")
    validate_spec(spec, str(path))
    return spec


def validate_spec(spec: StudySpec, path: str = "spec") -> None:
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
    if not spec.schedules or any(n <= 0 for n in spec.schedules):
        raise ConfigError(f"{path}: schedules must be positive multipliers, got {list(spec.schedules)}")
    if len(set(spec.schedules)) != len(spec.schedules):
        raise ConfigError(f"{path}: schedules has duplicates: {list(spec.schedules)}")
    if any(s is not None and s <= 0 for s in spec.train_sizes):
        raise ConfigError(f"{path}: train_sizes must be positive image counts or null, got {list(spec.train_sizes)}")
    hp_names = [h.name for h in spec.hparams]
    if len(set(hp_names)) != len(hp_names):
        raise ConfigError(f"{path}: hparams names must be unique, got {hp_names}")
