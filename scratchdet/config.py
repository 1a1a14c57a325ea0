"""The typed config schema: one dataclass per subsystem, YAML files plus `key=value` overrides (OmegaConf).

A run is described by exactly one YAML file (no `_base_` inheritance; docs/ARCHITECTURE.md, "Decisions worth
knowing", Code style) merged over the defaults below, then by command-line overrides such as
`model.norm=none train.max_iters=200`. The defaults are the paper's settings (docs/PAPER.md, "The system");
`configs/mini/` overrides them down to CPU size.

Key names are an interface: YAML files, study specs (configs/study/), command lines and scripts address them by
dotted name, and config.yaml in old run folders holds them; rename only with a reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scratchdet.data.keypoint_flip import check_flip_map
from scratchdet.errors import ConfigError

NORMS = ("GN", "SyncBN", "BN", "FrozenBN", "none")
ARCHS = ("mask_rcnn", "faster_rcnn", "keypoint_rcnn")
DEPTHS = (18, 34, 50, 101, 152)
INITS = ("scratch", "pretrained")
BACKBONES = ("resnet", "vgg16")


@dataclass
class SplitConfig:
    """One dataset split: a COCO instances JSON and the folder its `file_name`s are relative to."""

    json: str | None = None
    images: str | None = None


@dataclass
class DataConfig:
    # A folder written by `scratchdet data synth` (or laid out the same way): root/instances_{train,val}.json and
    # root/{train,val}/. Explicit data.train.* / data.val.* paths win over it when both come from the same place
    # (file, or command line); data.root given on the command line replaces paths from the file (load_config).
    root: str | None = None
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    # N training images, chosen with subset_seed; subsets are nested (paper: 35k/10k/3.5k/1k, Figs. 7-8).
    train_subset: int | None = None
    subset_seed: int = 0
    # Short side in pixels; a list means one is drawn per image ([640, 800] is the paper's "train aug").
    min_size_train: list[int] = field(default_factory=lambda: [800])
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    flip_prob: float = 0.5
    num_workers: int = 2
    # Page-locked host memory for loader output, so host-to-GPU copies run asynchronously (CUDA only; ignored on CPU).
    pin_memory: bool = True
    # Batch landscape with landscape and portrait with portrait images (within windows of the training stream, so
    # resume stays exact; data/samplers.py), which cuts the padding the model pads each batch to
    # (benchmarks/RESULTS.md).
    aspect_ratio_grouping: bool = False
    # Stat every image file when a dataset is opened, so a missing file fails before training, not hours into it.
    check_files: bool = True
    # Training only (docs/RELIABILITY.md, promise 8): replace a sample whose image is missing or cannot be decoded
    # by the next readable one, logging each skip, instead of failing. Evaluation always fails on an unreadable image.
    skip_bad_images: bool = False
    # With skip_bad_images: fail once more than this fraction of the training images turned out unreadable.
    max_skip_fraction: float = 0.01
    # A stored annotation 'area' that disagrees with its mask or box (data/validate.py) changes COCO AP's size bins
    # and OKS: "check" refuses it in an evaluation split (training never uses it, and counts it), "file" keeps the
    # file's values, "geometry" uses the area of the segmentation (or box) instead of the field.
    gt_area: str = "check"
    # Images of more pixels (width x height) are refused when the dataset opens, before training. None = Pillow's
    # own limit, 2 x Image.MAX_IMAGE_PIXELS (178,956,970 px), above which Pillow refuses a file as a possible
    # decompression bomb; raise it for trusted large images (satellite tiles, slides). data/images.py.
    max_image_pixels: int | None = None
    # Dataset format: "coco" (data.train/val JSON) or "voc" (PASCAL VOC XML, scratchdet/data/voc.py).
    format: str = "coco"
    # VOC: folder holding VOC<year>/ (VOCdevkit); None = data.root. Sets are "YEAR_SPLIT" names; the paper trains
    # on trainval07 + train12 and evaluates on val12 (docs/PAPER.md, "PASCAL VOC").
    voc_root: str | None = None
    voc_train_sets: list[str] = field(default_factory=lambda: ["2007_trainval", "2012_train"])
    voc_val_sets: list[str] = field(default_factory=lambda: ["2012_val"])
    # "07" = VOC2007 11-point AP, "10" = VOC2010+ area AP, "auto" = "07" iff every val set is from 2007 (Detectron).
    voc_metric: str = "auto"
    # model.arch=keypoint_rcnn trains one category (name or id), as Detectron trains COCO person keypoints; other
    # categories are ignored (scratchdet/data/keypoints.py). None = the only category that declares "keypoints".
    keypoint_category: str | None = None
    # Keypoints a horizontal flip swaps, as [name_a, name_b] pairs ([name, name]: no mirror), for names whose side
    # is not spelt in a recognised way (left_eye, l_eye, leftEye, eye_left, eye_l, LShoulder, ...;
    # data/keypoint_flip.py). Unlisted names are paired by those spellings; lateral-looking leftovers are refused.
    keypoint_flip_map: list[list[str]] = field(default_factory=list)


@dataclass
class ModelConfig:
    arch: str = "mask_rcnn"
    # "resnet" (ResNet/ResNeXt-FPN, depth/groups below) or "vgg16": the original Faster R-CNN on conv5_3, no FPN,
    # no normalization (docs/PAPER.md, "VGG-16"; scratchdet/modeling/vgg.py).
    backbone: str = "resnet"
    # VGG-16 fc6/fc7 width (4096 in VGG-16 and the original Faster R-CNN); narrower for CPU tests.
    vgg_fc_dim: int = 4096
    depth: int = 50
    # ResNeXt: groups x width_per_group (32x8d -> groups=32, width_per_group=8). ResNet: 1 x 64.
    groups: int = 1
    width_per_group: int = 64
    # Channels of the stem; 64 is the standard ResNet, narrower values give CPU-sized variants (widths scale along).
    stem_width: int = 64
    norm: str = "GN"
    gn_groups: int = 32
    # 0 = every stage trains. From scratch nothing may be frozen: a frozen stage would keep its random weights
    # (Detectron TRAIN.FREEZE_AT 0 for scratch; docs/FIDELITY.md, "frozen stages").
    freeze_at: int = 0
    fpn_channels: int = 256
    # "4conv1fc" box head with GN (paper): box_head_convs=4, box_head_fc=1024; box_head_convs=0 gives the 2fc head.
    box_head_convs: int = 4
    box_head_fc: int = 1024
    mask_head_convs: int = 4
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    # RPN top-k: pre-NMS counts are per FPN level and image, post-NMS counts per image (torchvision's RPN).
    # Detectron kept TRAIN.RPN_POST_NMS_TOP_N=2000 per 2-image GPU batch, ~1000 per image; detectron2 writes that
    # as POST_NMS_TOPK_TRAIN=1000 per image (docs/FIDELITY.md). Single-level (VGG-16) RPNs keep 2000 per image.
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    # Detections kept per image. COCO AP scores the 100 best-scored per image (COCOeval params.maxDets[-1]; keypoint
    # AP the 20 best), so more than 100 are kept but never scored: load_config warns.
    box_detections_per_img: int = 100
    box_score_thresh: float = 0.05
    # Keypoint R-CNN head (model.arch=keypoint_rcnn): convs of 3x3, each followed by model.norm (Detectron: 8 x 512).
    keypoint_head_convs: int = 8
    keypoint_head_channels: int = 512
    # Cascade R-CNN box heads (modeling/cascade.py): one stage per IoU threshold, each with its box regression weights.
    cascade: bool = False
    cascade_fg_iou_threshs: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7])
    cascade_bbox_reg_weights: list[list[float]] = field(
        default_factory=lambda: [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]]
    )
    # With cascade=true: train plain heads and switch to cascade for the final K iterations of the schedule
    # (paper: cascade from scratch, K = 270k); None = cascade from iteration 0. K counts the run's iterations at
    # train.batch_size (not rescaled like schedule.unit_iters): switch at schedule max_iters - K.
    cascade_switch_iters: int | None = None
    # Input convention (docs/WEIGHTS.md, "Input conventions"): the dataset's RGB 0..1 images are put in input_format
    # channel order (RGB | BGR), multiplied by pixel_scale (1.0: 0..1, 255.0: 0..255), then normalized with
    # pixel_mean / pixel_std (3 values each, in the scaled units and input_format order). stride_in_1x1: each ResNet
    # stage downsamples in its first block's 1x1 conv (MSRA's ResNets; Detectron RESNETS.STRIDE_1X1) instead of the
    # 3x3 (torchvision, FAIR). None = follow the weight file with init=pretrained, else torchvision's convention
    # (RGB, 1.0, ImageNet mean/std, false); `scratchdet train` fills them in, so config.yaml records what ran, and
    # refuses explicit values that conflict with a file whose convention is known.
    input_format: str | None = None
    pixel_scale: float | None = None
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    stride_in_1x1: bool | None = None
    # How a training step computes proposals, RoI sampling and GroupNorm under autocast: "torchvision" (its RPN and
    # RoI heads, image by image with data-dependent sizes) or "fast" (modeling/fast_step.py: every image at once,
    # fixed sizes, GroupNorm in the autocast dtype). Same boxes and the same sampling distribution, other random
    # draws; "fast" becomes the default only once the learning tests show it learns as well (benchmarks/RESULTS.md).
    step: str = "torchvision"


@dataclass
class SolverConfig:
    # LR and warm-up are given at reference_batch images per iteration and scaled linearly to train.batch_size.
    base_lr: float = 0.02
    reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Detectron's WEIGHT_DECAY_GN = 0: no decay on normalization scales and shifts.
    weight_decay_norm: float = 0.0
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0


@dataclass
class ScheduleConfig:
    # Nx = multiplier x unit_iters (at solver.reference_batch); LR / 10 at each of the last drop_tails iterations.
    multiplier: float = 2.0
    unit_iters: int = 90000
    drop_tails: list[int] = field(default_factory=lambda: [60000, 20000])
    gamma: float = 0.1


@dataclass
class TrainConfig:
    batch_size: int = 16  # images per iteration, over all devices
    max_iters: int | None = None  # stop early (smoke runs, shared trunks); the LR schedule is unchanged by it
    checkpoint_period: int = 5000
    # Also checkpoint at these iterations (a study's shared trunk, at each schedule's first LR drop: study/plan.py).
    extra_checkpoints: list[int] = field(default_factory=list)
    log_period: int = 20
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch intra-op threads on CPU; None = torch's default
    # Write {"type": "batch", "iter": i, "image_ids": [...]} to metrics.jsonl for every iteration (audits data order).
    record_image_ids: bool = False
    # With resume=true: start from iteration 0, instead of failing, when the folder has no readable checkpoint
    # (an unreadable run's files are moved to output/discarded_*/; docs/RELIABILITY.md, promise 4).
    allow_fresh_start: bool = False
    # Mixed precision: none (fp32) | bf16 (autocast) | fp16 (autocast, GradScaler checkpointed); benchmarks/RESULTS.md.
    amp: str = "none"
    # Convolutions in channels_last memory layout (faster with tensor cores; measured in benchmarks/RESULTS.md).
    channels_last: bool = False
    # Deterministic kernels: the only way a CUDA run repeats or resumes bit for bit; many times slower on a GPU, a
    # switch to verify with (engine/loop.py::deterministic_kernels says why). CPU runs are deterministic without it.
    deterministic: bool = False


@dataclass
class EvalConfig:
    period: int = 0  # evaluate every `period` iterations (the learning curve); 0 = only at the end
    max_images: int | None = None  # evaluate on the first N val images only (quick in-training curves)
    batch_size: int = 1
    # OKS sigmas for keypoint AP, one per keypoint; None = COCO person's or the synthetic walker's (by names).
    kpt_oks_sigmas: list[float] | None = None
    # Test-time augmentation for `scratchdet eval RUN tta=true` (docs/PAPER.md, "Testing"; merge in evaluation/tta.py).
    # Defaults are Detectron's R-50-FPN TTA: short sides 400..1200 step 100, long side <= 2000, plus h-flip.
    tta: bool = False
    tta_sizes: list[int] = field(default_factory=lambda: [400, 500, 600, 700, 800, 900, 1000, 1100, 1200])
    tta_max_size: int = 2000
    tta_flip: bool = True
    # COCO metric implementation: "pycocotools" (the reference) or "faster_coco_eval" (same numbers, faster; see
    # benchmarks/RESULTS.md for the measured speed and agreement).
    coco_backend: str = "pycocotools"
    # The final evaluation's detections (COCO results) to eval/iter_XXXXXXX_detections.json.gz: a study report
    # bootstraps the arms' AP difference over images and draws example images from them (COCO data only).
    save_detections: bool = True


@dataclass
class PretrainedConfig:
    """How init=pretrained loads weights=PATH into the backbone (scratchdet/weights/audit.py)."""

    # Below this fraction of backbone elements loaded, the run refuses to start (wrong file, depth or layout).
    min_coverage: float = 0.99
    # BN-trained weights into a GN model (or GN into BN): "error" (default: no silent mismatch), "skip_norm" (load
    # convs, keep fresh norms), or "load_affine" (BN scale/shift become GN scale/shift; BN statistics dropped).
    norm_mismatch: str = "error"
    # The top-level entry of the weights file that holds the network, for files holding several (DINO's teacher /
    # student, timm's state_dict / state_dict_ema); None takes the only one, and an ambiguous file is refused
    # listing them (weights/files.py unwrap).
    checkpoint_key: str | None = None


@dataclass
class Config:
    output: str = MISSING
    seed: int = 0
    init: str = "scratch"
    weights: str | None = None
    resume: bool = False
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_structured(schema: type, path: str | Path | None, overrides: list[str] | None, what: str = "config"):
    """Merges the YAML at `path` and dotted `key=value` overrides over the dataclass `schema`; returns an instance.

    Shared by detection, pre-training and study configs so they all report bad keys and values the same way.

    Raises:
        ConfigError: unknown key, wrong type, missing file, or an override without "=".
    """
    parts = [OmegaConf.structured(schema)]
    try:
        if path is not None:
            if not Path(path).is_file():
                raise ConfigError(f"{what} file {path} does not exist")
            parts.append(OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. train.max_iters=100)")
            parts.append(OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(OmegaConf.merge(*parts))
    except (OmegaConfBaseException, TypeError, ValueError, yaml.YAMLError) as e:  # YAMLError: e.g. `key=[1,2`
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid {what}{where}: {e}".replace("\n", "; ")) from None


def override_keys(overrides: Sequence[str] | None) -> set[str]:
    """The dotted keys that `key=value` overrides set; a mapping value counts as its leaves (`data.train={json: a}`
    sets data.train.json). The overrides must be well-formed (load_structured checks them first)."""
    return set(_leaves(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides or []))))) - {""}


def _leaves(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def _get(cfg: Any, key: str) -> Any:
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _set(cfg: Any, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    setattr(_get(cfg, ".".join(parents)) if parents else cfg, name, value)


class CommandLineWins(NamedTuple):
    """A command-line setting that contradicts a setting of the file (or a default), which then gives way:
    when `key` is given on the command line with a value for which `applies` holds, and `loser` is not,
    `loser` (if it holds a value) becomes `replacement(cfg)`."""

    key: str
    applies: Callable[[Any], bool]
    loser: str
    replacement: Callable[[Any], Any]


def command_line_wins(
    cfg: Any, path: str | Path | None, overrides: Sequence[str] | None, rules: Sequence[CommandLineWins]
) -> list[str]:
    """Applies `rules` to a loaded config, so a setting given on the command line is never overruled in silence by
    the file (README, "Configs and overrides"); warns one line listing each replaced value, where it came from and
    what replaced it. Returns the replaced keys.
    """
    given = override_keys(overrides)
    file_keys: set[str] | None = None
    losers: list[str] = []
    replaced: dict[str, list[str]] = {}  # winning key -> what it replaced, as "loser=old (origin) is replaced by new"
    for rule in rules:
        if rule.key not in given or rule.loser in given or not rule.applies(_get(cfg, rule.key)):
            continue
        old, new = _get(cfg, rule.loser), rule.replacement(cfg)
        if old is None or old == new:  # nothing set there to contradict the command line
            continue
        _set(cfg, rule.loser, new)
        losers.append(rule.loser)
        if file_keys is None:
            file_keys = set(_leaves(OmegaConf.to_container(OmegaConf.load(path)))) if path is not None else set()
        origin = "in the file" if rule.loser in file_keys else "the default"
        replaced.setdefault(rule.key, []).append(f"{rule.loser}={old} ({origin}) is replaced by {new}")
    for key, changes in replaced.items():
        file = f" (file {path})" if any("(in the file)" in c for c in changes) else ""
        warnings.warn(
            f"{key}={_get(cfg, key)} is given on the command line and wins: {'; '.join(changes)}{file}", stacklevel=3
        )
    return losers


def _is_set(value: Any) -> bool:
    return value is not None


def _root_path(root: str, split: str, kind: str) -> str:
    """The `data synth` layout: root/instances_{split}.json and root/{split}/."""
    return str(Path(root) / (f"instances_{split}.json" if kind == "json" else split))


# data.root on the command line gives every dataset path (README: `scratchdet train CONFIG data.root=DIR`), also
# over a paper config's data.train/val paths; init=scratch drops the file's weights; model.cascade=false drops the
# file's cascade switch.
DETECTION_COMMAND_LINE_WINS: tuple[CommandLineWins, ...] = (
    *(
        CommandLineWins(
            "data.root",
            _is_set,
            f"data.{split}.{kind}",
            lambda cfg, split=split, kind=kind: _root_path(cfg.data.root, split, kind),
        )
        for split in ("train", "val")
        for kind in ("json", "images")
    ),
    CommandLineWins("data.root", _is_set, "data.voc_root", lambda cfg: cfg.data.root),
    CommandLineWins("init", lambda value: value == "scratch", "weights", lambda cfg: None),
    CommandLineWins("model.cascade", lambda value: value is False, "model.cascade_switch_iters", lambda cfg: None),
)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Merges the YAML file at `path` and dotted `key=value` overrides over the defaults, then validates.

    A setting given in `overrides` (the command line) wins over the file also where it implies other keys
    (DETECTION_COMMAND_LINE_WINS, e.g. data.root over the file's data.train/val paths); one warning lists what
    it replaced.

    Raises:
        ConfigError: unknown key, wrong type, missing file, or a value outside its valid choices.
    """
    cfg = load_structured(Config, path, overrides)
    assert isinstance(cfg, Config)
    command_line_wins(cfg, path, overrides, DETECTION_COMMAND_LINE_WINS)
    resolve_data_paths(cfg)
    validate_config(cfg)
    return cfg


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def resolve_data_paths(cfg: Config) -> None:
    """Fills data.train/val paths from data.root (the `data synth` layout) where they are not given.

    A path given beside data.root wins; load_config has already replaced the file's paths when data.root came from
    the command line.
    """
    if cfg.data.root is None:
        return
    for split_name in ("train", "val"):
        split: SplitConfig = getattr(cfg.data, split_name)
        if split.json is None:
            split.json = _root_path(cfg.data.root, split_name, "json")
        if split.images is None:
            split.images = _root_path(cfg.data.root, split_name, "images")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def _positive(key: str, value) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{key}={value!r} must be positive")


class NumberRule(NamedTuple):
    """The valid range of a numeric key (or of every number in a list-valued key); None (where the schema allows
    it) is always valid. `note` says what an edge value means (e.g. "0 = only at the end")."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # value > low instead of >= low
    high_open: bool = False  # value < high instead of <= high
    note: str = ""
    text: str = ""  # how the range reads in messages ("positive"); default: from the bounds

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "a finite number"

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


# Shorthands for the tables below.
POSITIVE = NumberRule(0, low_open=True, text="positive")  # > 0
COUNT = NumberRule(1, text="positive")  # an integer >= 1: sizes, counts, iterations
NON_NEGATIVE = NumberRule(0)
FRACTION = NumberRule(0, 1)  # [0, 1]
FINITE = NumberRule()
SEED = NumberRule(0, 2**32 - 1, note="NumPy's seeds are 32-bit unsigned")  # np.random.seed refuses others
PERIOD = NumberRule(0, note="0 = only at the end")


def _numbers(value: Any) -> Iterator[Any]:
    """The numbers of a config value: itself, or every number of a (nested) list; None and strings yield nothing."""
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def check_numbers(cfg: Any, rules: dict[str, NumberRule], prefix: str = "") -> None:
    """Checks every key of `rules` (dotted, relative to `cfg`) against its range; NaN and infinities never pass.

    One table per schema (DETECTION_NUMBER_RULES, pretrain/config.py, study/spec.py) lists every numeric key, so
    an edge value (0, a negative number, NaN) is refused at load, naming the key, instead of surfacing as a
    ZeroDivisionError or a silently empty evaluation later; tests/test_configs.py checks that every numeric key of
    each schema is in its table.

    Raises:
        ConfigError: naming the key, its value, the valid range and what edge values mean.
    """
    for key, rule in rules.items():
        value = _get(cfg, key)
        bad = [v for v in _numbers(value) if not rule.holds(v)]
        if bad:
            shown = value if not isinstance(value, (list, tuple)) else list(value)
            every = " (every value)" if isinstance(value, (list, tuple)) else ""
            note = f" ({rule.note})" if rule.note else ""
            raise ConfigError(f"{prefix}{key}={shown!r} must be {rule.describe()}{every}{note}")


# Every numeric key of the detection config and its valid range (choices such as model.depth are checked by _choice
# as well). Periods accept 0 = "only at the end" (train.checkpoint_period, train.log_period, eval.period: the loop's
# `due` reads 0 that way); limits such as eval.max_images take a count or null, never 0 or -1.
DETECTION_NUMBER_RULES: dict[str, NumberRule] = {
    "seed": SEED,
    "data.train_subset": COUNT,
    "data.subset_seed": SEED,
    "data.min_size_train": COUNT,
    "data.max_size_train": COUNT,
    "data.min_size_test": COUNT,
    "data.max_size_test": COUNT,
    "data.flip_prob": FRACTION,
    "data.num_workers": NON_NEGATIVE,
    "data.max_skip_fraction": FRACTION,
    "data.max_image_pixels": COUNT,
    "model.vgg_fc_dim": COUNT,
    "model.depth": COUNT,
    "model.groups": COUNT,
    "model.width_per_group": COUNT,
    "model.stem_width": COUNT,
    "model.gn_groups": COUNT,
    "model.freeze_at": NumberRule(0, 5),
    "model.fpn_channels": COUNT,
    "model.box_head_convs": NumberRule(0, note="0 = the 2fc head"),
    "model.box_head_fc": COUNT,
    "model.mask_head_convs": NON_NEGATIVE,
    "model.anchor_sizes": COUNT,
    "model.rpn_pre_nms_top_n_train": COUNT,
    "model.rpn_post_nms_top_n_train": COUNT,
    "model.rpn_pre_nms_top_n_test": COUNT,
    "model.rpn_post_nms_top_n_test": COUNT,
    "model.rpn_batch_size_per_image": COUNT,
    "model.box_batch_size_per_image": COUNT,
    "model.box_detections_per_img": COUNT,
    "model.box_score_thresh": NumberRule(0, 1, high_open=True),
    "model.keypoint_head_convs": NON_NEGATIVE,
    "model.keypoint_head_channels": COUNT,
    "model.cascade_fg_iou_threshs": NumberRule(0, 1, low_open=True, high_open=True),
    "model.cascade_bbox_reg_weights": POSITIVE,
    "model.cascade_switch_iters": COUNT,
    "model.pixel_scale": POSITIVE,
    "model.pixel_mean": FINITE,
    "model.pixel_std": POSITIVE,
    "solver.base_lr": POSITIVE,
    "solver.reference_batch": COUNT,
    "solver.momentum": NumberRule(0, 1, high_open=True),
    "solver.weight_decay": NON_NEGATIVE,
    "solver.weight_decay_norm": NON_NEGATIVE,
    "solver.warmup_iters": NumberRule(0, note="0 = no warm-up"),
    "solver.warmup_factor": NumberRule(0, 1, low_open=True),
    "schedule.multiplier": POSITIVE,
    "schedule.unit_iters": COUNT,
    "schedule.drop_tails": COUNT,
    "schedule.gamma": NumberRule(0, 1, low_open=True),
    "train.batch_size": COUNT,
    "train.max_iters": COUNT,
    "train.checkpoint_period": PERIOD,
    "train.extra_checkpoints": COUNT,
    "train.log_period": PERIOD,
    "train.num_threads": COUNT,
    "eval.period": PERIOD,
    "eval.max_images": NumberRule(1, note="null = every image"),
    "eval.batch_size": COUNT,
    "eval.kpt_oks_sigmas": POSITIVE,
    "eval.tta_sizes": COUNT,
    "eval.tta_max_size": COUNT,
    "pretrained.min_coverage": FRACTION,
}


def validate_config(cfg: Config) -> None:
    """Checks choices and ranges that the type system cannot express; raises ConfigError naming the key."""
    _choice("model.norm", cfg.model.norm, NORMS)
    _choice("model.arch", cfg.model.arch, ARCHS)
    _choice("model.depth", cfg.model.depth, DEPTHS)
    _choice("init", cfg.init, INITS)
    _choice("train.device", cfg.train.device, ("auto", "cpu", "cuda"))
    _choice("train.amp", cfg.train.amp, ("none", "bf16", "fp16"))
    _choice("model.step", cfg.model.step, ("torchvision", "fast"))
    _choice("eval.coco_backend", cfg.eval.coco_backend, ("pycocotools", "faster_coco_eval"))
    _choice("data.gt_area", cfg.data.gt_area, ("check", "file", "geometry"))
    _choice("pretrained.norm_mismatch", cfg.pretrained.norm_mismatch, ("error", "skip_norm", "load_affine"))
    check_numbers(cfg, DETECTION_NUMBER_RULES)
    if cfg.init == "pretrained" and not cfg.weights:
        raise ConfigError("init=pretrained needs weights=PATH (a checkpoint or published weight file)")
    if cfg.init == "scratch" and cfg.weights:
        raise ConfigError(f"init=scratch loads no weights, but weights={cfg.weights!r} was given; drop one of them")
    if cfg.init == "scratch" and cfg.model.freeze_at != 0:
        # A frozen randomly initialized stage never learns anything; Detectron's scratch runs lost ~3 AP this way.
        raise ConfigError(f"model.freeze_at={cfg.model.freeze_at} with init=scratch would freeze random weights; use 0")
    _choice("model.freeze_at", cfg.model.freeze_at, (0, 1, 2, 3, 4, 5))
    if cfg.model.groups > 1 and cfg.model.depth < 50:
        raise ConfigError(f"model.groups={cfg.model.groups} (ResNeXt) needs a bottleneck depth (50/101/152)")
    if not cfg.data.min_size_train:
        raise ConfigError(f"data.min_size_train={cfg.data.min_size_train} must be a non-empty list of sizes > 0")
    if not cfg.eval.tta_sizes:
        raise ConfigError(f"eval.tta_sizes={cfg.eval.tta_sizes} must be a non-empty list of sizes > 0")
    _validate_voc(cfg)
    _validate_cascade(cfg)
    validate_backbone(cfg)
    _validate_keypoint_flip_map(cfg)
    _warn_unscored_detections(cfg)
    validate_input_convention(cfg.model)


# COCOeval scores at most maxDets[-1] detections per image, the best by score: Params.maxDets = [1, 10, 100] for
# bbox and segm, [20] for keypoints (pycocotools cocoeval.py, setDetParams / setKpParams).
COCO_MAX_DETS = 100
COCO_KEYPOINT_MAX_DETS = 20


def _warn_unscored_detections(cfg: Config) -> None:
    """Warns, once per config load, when model.box_detections_per_img keeps detections that COCO AP never scores.

    Said here, where the value is set, not at every evaluation. Keypoint R-CNN's default of 100 is not warned
    about: keypoint AP scores the best 20 (COCO's keypoint protocol) and box AP still scores all 100. VOC mAP
    ranks every detection, so data.format=voc has no limit.
    """
    n = cfg.model.box_detections_per_img
    if cfg.data.format != "coco" or n <= COCO_MAX_DETS:
        return
    keypoints = f"; keypoint AP the best {COCO_KEYPOINT_MAX_DETS}" if cfg.model.arch == "keypoint_rcnn" else ""
    warnings.warn(
        f"model.box_detections_per_img={n} keeps more detections per image than COCO AP scores: COCOeval "
        f"(params.maxDets=[1, 10, {COCO_MAX_DETS}]) scores only the best {COCO_MAX_DETS} by score{keypoints}, so up "
        f"to {n - COCO_MAX_DETS} per image are never scored; set model.box_detections_per_img={COCO_MAX_DETS} "
        "unless something other than COCO AP reads the extra detections",
        stacklevel=3,
    )


def _validate_keypoint_flip_map(cfg: Config) -> None:
    """data.keypoint_flip_map: [name_a, name_b] pairs, each name once, and only where keypoints are trained; the
    names are checked against the file when the dataset opens (data/keypoints.py)."""
    pairs = cfg.data.keypoint_flip_map
    if not pairs:
        return
    if cfg.model.arch != "keypoint_rcnn":
        raise ConfigError(
            f"data.keypoint_flip_map={pairs} is set but model.arch={cfg.model.arch!r} trains no "
            "keypoints; drop it, or set model.arch=keypoint_rcnn"
        )
    check_flip_map(pairs)


def _validate_voc(cfg: Config) -> None:
    d = cfg.data
    _choice("data.format", d.format, ("coco", "voc"))
    _choice("data.voc_metric", d.voc_metric, ("auto", "07", "10"))
    for key in ("voc_train_sets", "voc_val_sets"):
        for name in getattr(d, key):
            year, _, split = str(name).partition("_")
            if not (year.isdigit() and len(year) == 4 and split):
                raise ConfigError(f"data.{key} entry {name!r} is not YEAR_SPLIT, e.g. 2007_trainval or 2012_val")
    if d.format == "voc" and cfg.model.arch != "faster_rcnn":
        # VOC has boxes only: no masks or keypoints to train a mask/keypoint head on (paper: Faster R-CNN on VOC).
        raise ConfigError(
            f"data.format=voc has box annotations only; model.arch={cfg.model.arch!r} needs model.arch=faster_rcnn"
        )


def _validate_cascade(cfg: Config) -> None:
    m = cfg.model
    if m.cascade_switch_iters is not None and not m.cascade:
        raise ConfigError(
            f"model.cascade_switch_iters={m.cascade_switch_iters} needs model.cascade=true (it says when to switch)"
        )
    _positive("model.cascade_switch_iters", m.cascade_switch_iters)
    if not m.cascade:
        return
    if m.arch != "mask_rcnn" and m.arch != "faster_rcnn":
        raise ConfigError(f"model.cascade=true needs model.arch mask_rcnn or faster_rcnn, got {m.arch!r}")
    ious, weights = list(m.cascade_fg_iou_threshs), [list(w) for w in m.cascade_bbox_reg_weights]
    if not ious or len(ious) != len(weights):
        raise ConfigError(
            f"model.cascade_fg_iou_threshs={ious} and model.cascade_bbox_reg_weights={weights} need one entry per "
            "stage, same length, at least one"
        )
    if any(not 0.0 < t < 1.0 for t in ious):
        raise ConfigError(f"model.cascade_fg_iou_threshs={ious} must lie in (0, 1)")
    if any(len(w) != 4 or any(x <= 0 for x in w) for w in weights):
        raise ConfigError(f"model.cascade_bbox_reg_weights={weights}: each stage needs 4 positive weights (x, y, w, h)")


def validate_backbone(cfg: Config) -> None:
    """model.backbone=vgg16 is the paper's no-normalization Faster R-CNN only; refuses other combinations."""
    m = cfg.model
    _choice("model.backbone", m.backbone, BACKBONES)
    _positive("model.vgg_fc_dim", m.vgg_fc_dim)
    if m.backbone != "vgg16":
        return
    if m.norm != "none":
        raise ConfigError(
            "model.backbone=vgg16 is built without normalization (docs/PAPER.md, 'VGG-16'); "
            f"set model.norm=none, got {m.norm!r}"
        )
    if m.arch != "faster_rcnn":
        raise ConfigError(f"model.backbone=vgg16 builds Faster R-CNN only; set model.arch=faster_rcnn, got {m.arch!r}")
    if m.cascade:
        raise ConfigError("model.cascade=true is not implemented for model.backbone=vgg16")


def validate_input_convention(m, prefix: str = "model") -> None:
    """Checks the input-convention keys of a model section (detection or pre-training); None means "not set".

    Raises:
        ConfigError: naming the key, the value and what is valid.
    """
    if m.input_format is not None:
        _choice(f"{prefix}.input_format", m.input_format, ("RGB", "BGR"))
    _positive(f"{prefix}.pixel_scale", m.pixel_scale)
    for key in ("pixel_mean", "pixel_std"):
        values = getattr(m, key)
        if values is not None and len(values) != 3:
            raise ConfigError(
                f"{prefix}.{key}={list(values)} needs 3 values, one per channel in {prefix}.input_format order"
            )
    if m.pixel_std is not None and any(s <= 0 for s in m.pixel_std):
        raise ConfigError(f"{prefix}.pixel_std={list(m.pixel_std)} must be positive")
    if m.stride_in_1x1 and (getattr(m, "backbone", "resnet") != "resnet" or m.depth < 50):
        what = "VGG-16" if getattr(m, "backbone", "resnet") != "resnet" else f"ResNet-{m.depth} (basic blocks)"
        raise ConfigError(
            f"{prefix}.stride_in_1x1=true moves each stage's stride into the first bottleneck's 1x1 "
            f"conv; {what} has no such conv: set {prefix}.stride_in_1x1=false"
        )
