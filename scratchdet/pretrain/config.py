"""The typed config of a classification pre-training run (`scratchdet pretrain CONFIG key=value ...`).

Same rules as the detection config (scratchdet/config.py): one YAML per run merged over these defaults, then dotted
overrides; no `_base_` inheritance. The defaults are the standard ImageNet recipe for ResNet (He et al. 2016;
Goyal et al. 2017): batch 256, LR 0.1 scaled linearly with the batch, momentum 0.9, weight decay 1e-4 (none on
norms), 224 px random-resized crops, 100 epochs. `model.*` uses the detection config's key names and meanings, so
the backbone trained here is the one a detection config with the same values builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from scratchdet.config import (
    COUNT,
    DEPTHS,
    FINITE,
    NON_NEGATIVE,
    PERIOD,
    POSITIVE,
    SEED,
    CommandLineWins,
    NumberRule,
    _choice,
    check_numbers,
    command_line_wins,
    load_structured,
    validate_input_convention,
)
from scratchdet.data.classification import TEXTURE_CLASSES
from scratchdet.errors import ConfigError
from scratchdet.weights.convention import TORCHVISION_MEAN, TORCHVISION_STD

# FrozenBN is left out: frozen statistics of a randomly initialized network would never be learned.
PRETRAIN_NORMS = ("GN", "BN", "SyncBN", "none")
LR_SCHEDULES = ("cosine", "step")


@dataclass
class PretrainDataConfig:
    # ImageNet-style folder: root/train/<class>/*.jpg and root/val/<class>/*.jpg (val with the same class folders).
    root: str | None = None
    # Generated texture classes instead of a folder (scratchdet.data.classification); needs root: null.
    synthetic: bool = False
    synthetic_train_images: int = 10000
    synthetic_val_images: int = 1000
    synthetic_classes: int = 10
    synthetic_size: int = 64  # side of the generated images in pixels
    synthetic_seed: int = 0  # fixes the images; the run's `seed` (init, order, augmentation) is separate
    # Training crops are crop_size x crop_size; evaluation resizes the short side to crop_size x 256/224 and centre
    # crops crop_size (the standard ImageNet protocol).
    crop_size: int = 224
    num_workers: int = 4


@dataclass
class PretrainModelConfig:
    # Same keys and meanings as the detection config's model.* (scratchdet/config.py ModelConfig).
    depth: int = 50
    groups: int = 1
    width_per_group: int = 64
    stem_width: int = 64
    norm: str = "GN"
    gn_groups: int = 32
    # The input convention and stride placement the backbone is trained with (same meaning as the detection keys;
    # docs/WEIGHTS.md, "Input conventions"). Recorded in the checkpoints, so a detector loading them follows it.
    input_format: str = "RGB"
    pixel_scale: float = 1.0
    pixel_mean: list[float] = field(default_factory=lambda: list(TORCHVISION_MEAN))
    pixel_std: list[float] = field(default_factory=lambda: list(TORCHVISION_STD))
    stride_in_1x1: bool = False


@dataclass
class PretrainSolverConfig:
    batch_size: int = 256  # images per iteration, over all devices
    # LR at reference_batch images per iteration; the run uses base_lr x batch_size / reference_batch (Goyal et al.).
    base_lr: float = 0.1
    reference_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0  # as the detector: no decay on GN/BN scales and shifts
    lr_schedule: str = "step"  # step | cosine
    step_epochs: list[float] = field(default_factory=lambda: [30.0, 60.0, 90.0])  # step: LR x gamma at each
    gamma: float = 0.1
    # Linear warm-up over warmup_iters iterations of this run (not rescaled with the batch), from
    # warmup_factor x LR to the LR.
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    label_smoothing: float = 0.0


@dataclass
class PretrainTrainConfig:
    # Schedule length: `epochs` passes over the training set, or `iters` iterations; give exactly one.
    epochs: float | None = 100.0
    iters: int | None = None
    max_iters: int | None = None  # stop early (smoke runs); the LR schedule is unchanged by it
    checkpoint_period: int = 5000
    log_period: int = 20
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch's default


@dataclass
class PretrainEvalConfig:
    period: int = 0  # evaluate every `period` iterations; 0 = only at the end
    max_images: int | None = None  # evaluate on N val images spread evenly over the split (quick curves)
    batch_size: int = 100


@dataclass
class PretrainConfig:
    output: str = MISSING
    seed: int = 0
    resume: bool = False
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    solver: PretrainSolverConfig = field(default_factory=PretrainSolverConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)


# Pairs of which a run uses one: given on the command line, one replaces the other's value from the file or the
# defaults (`scratchdet pretrain configs/pretrain/mini_R18_GN_synth.yaml data.root=DIR` trains on DIR), so a
# command-line setting never loses to the file (scratchdet/config.py command_line_wins). Both on the command line
# are still refused by validate_pretrain_config.
PRETRAIN_COMMAND_LINE_WINS: tuple[CommandLineWins, ...] = (
    CommandLineWins("data.root", lambda value: value is not None, "data.synthetic", lambda cfg: False),
    CommandLineWins("data.synthetic", lambda value: value is True, "data.root", lambda cfg: None),
    CommandLineWins("train.iters", lambda value: value is not None, "train.epochs", lambda cfg: None),
    CommandLineWins("train.epochs", lambda value: value is not None, "train.iters", lambda cfg: None),
)


# Every numeric key of the pre-training config and its valid range (scratchdet/config.py check_numbers; the same
# rules as the detection keys of the same name). data.synthetic_classes' upper end depends on the texture list.
PRETRAIN_NUMBER_RULES: dict[str, NumberRule] = {
    "seed": SEED,
    "data.synthetic_train_images": COUNT,
    "data.synthetic_val_images": COUNT,
    "data.synthetic_classes": NumberRule(2, note="at least two classes to tell apart"),
    "data.synthetic_size": COUNT,
    "data.synthetic_seed": SEED,
    "data.crop_size": COUNT,
    "data.num_workers": NON_NEGATIVE,
    "model.depth": COUNT,
    "model.groups": COUNT,
    "model.width_per_group": COUNT,
    "model.stem_width": COUNT,
    "model.gn_groups": COUNT,
    "model.pixel_scale": POSITIVE,
    "model.pixel_mean": FINITE,
    "model.pixel_std": POSITIVE,
    "solver.batch_size": COUNT,
    "solver.base_lr": POSITIVE,
    "solver.reference_batch": COUNT,
    "solver.momentum": NumberRule(0, 1, high_open=True),
    "solver.weight_decay": NON_NEGATIVE,
    "solver.weight_decay_norm": NON_NEGATIVE,
    "solver.step_epochs": POSITIVE,
    "solver.gamma": NumberRule(0, 1, low_open=True),
    "solver.warmup_iters": NumberRule(0, note="0 = no warm-up"),
    "solver.warmup_factor": NumberRule(0, 1, low_open=True),
    "solver.label_smoothing": NumberRule(0, 1, high_open=True),
    "train.epochs": POSITIVE,
    "train.iters": COUNT,
    "train.max_iters": COUNT,
    "train.checkpoint_period": PERIOD,
    "train.log_period": PERIOD,
    "train.num_threads": COUNT,
    "eval.period": PERIOD,
    "eval.max_images": NumberRule(1, note="null = every image"),
    "eval.batch_size": COUNT,
}


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Merges the YAML file at `path` and dotted `key=value` overrides over the defaults, then validates.

    A command-line data.root (data.synthetic=true) replaces the file's data.synthetic (data.root), and
    train.iters (train.epochs) the file's or default train.epochs (train.iters), with one warning.

    Raises:
        ConfigError: unknown key, wrong type, missing file, or a value outside its valid choices.
    """
    cfg = load_structured(PretrainConfig, path, overrides, "pre-training config")
    assert isinstance(cfg, PretrainConfig)
    command_line_wins(cfg, path, overrides, PRETRAIN_COMMAND_LINE_WINS)
    validate_pretrain_config(cfg)
    return cfg


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    """Checks choices and ranges that the type system cannot express; raises ConfigError naming the key."""
    d, m, s, t = cfg.data, cfg.model, cfg.solver, cfg.train
    if d.root and d.synthetic:
        raise ConfigError(f"data.root={d.root!r} and data.synthetic=true both given; choose one of them")
    if not d.root and not d.synthetic:
        raise ConfigError(
            "no data: set data.root=DIR (an ImageNet-style folder with train/ and val/) "
            "or data.synthetic=true (generated texture classes)"
        )
    _choice("model.norm", m.norm, PRETRAIN_NORMS)
    if m.norm == "SyncBN":
        # `scratchdet pretrain` runs in one process, where SyncBN would silently be BN: say so instead.
        raise ConfigError(
            "model.norm=SyncBN: `scratchdet pretrain` trains in one process, where SyncBN is plain BN; use "
            "model.norm=BN (pre-training batches are large enough for BN) or model.norm=GN"
        )
    _choice("model.depth", m.depth, DEPTHS)
    validate_input_convention(m)
    if m.groups > 1 and m.depth < 50:
        raise ConfigError(f"model.groups={m.groups} (ResNeXt) needs a bottleneck depth (50/101/152)")
    _choice("solver.lr_schedule", s.lr_schedule, LR_SCHEDULES)
    _choice("train.device", t.device, ("auto", "cpu", "cuda"))
    if (t.epochs is None) == (t.iters is None):
        raise ConfigError(
            f"train.epochs={t.epochs} and train.iters={t.iters}: give exactly one schedule length "
            "(e.g. train.epochs=100, or train.epochs=null train.iters=300)"
        )
    check_numbers(cfg, PRETRAIN_NUMBER_RULES)
    if d.synthetic and not 2 <= d.synthetic_classes <= len(TEXTURE_CLASSES):
        raise ConfigError(f"data.synthetic_classes={d.synthetic_classes} must be in 2..{len(TEXTURE_CLASSES)}")
    if list(s.step_epochs) != sorted(s.step_epochs):
        raise ConfigError(f"solver.step_epochs={list(s.step_epochs)} must be positive and ascending")
