"""Input conventions: how a backbone expects its pixels, and where its ResNet stages put their stride.

A pre-trained network computes the function it was trained as only when it is fed the input it was trained on and
when each stage downsamples in the same conv. Published ImageNet files differ in both (docs/WEIGHTS.md, "Input
conventions"):

- Detectron's Caffe2 pickles (R-50.pkl, R-50-GN.pkl, X-101-32x8d.pkl, ...) were trained on BGR pixels in 0..255
  minus Detectron's PIXEL_MEANS, std 1 (the std is folded into conv1: detectron2's config defaults and ModelCatalog);
  MSRA's ResNets put the stride-2 of a stage in its first block's 1x1 conv (Detectron RESNETS.STRIDE_1X1 = True,
  "for MSRA"), FAIR's GN and ResNeXt models in the 3x3 (STRIDE_1X1: False "for C2 or Torch models").
- detectron2's re-converted files: MSRA R-50/R-101.pkl as above with detectron2's mean; FAIR X-101-32x8d.pkl with
  PIXEL_STD [57.375, 57.12, 58.395]; torchvision conversions (`__author__: torchvision`) RGB with torchvision's
  mean/std x 255 (tools/convert-torchvision-to-d2.py).
- torchvision's files: RGB in 0..1 normalized with the ImageNet mean/std, stride in the 3x3 (ResNet v1.5).
- self-supervised torchvision ResNets: MoCo v1/v2/v3, DINO and Barlow Twins train with torchvision's normalization
  (moco/main_moco.py, moco-v3/main_moco.py, dino/main_dino.py DataAugmentationDINO, barlowtwins/main.py); SwAV with
  std [0.228, 0.224, 0.225] (swav/src/multicropdataset.py); all of them on torchvision's ResNet (stride in the 3x3).
- timm: RGB in 0..1 with its config.json's pretrained_cfg mean/std; stride in the 3x3 (timm/models/resnet.py).
- transformers: its preprocessor_config.json's image_mean/std and rescale_factor, RGB; the stride in the 1x1 when
  config.json says downsample_in_bottleneck (models/resnet/modeling_resnet.py).
- OpenMMLab: the data preprocessor of the config text stored in the checkpoint's meta (mean/std in 0..255, to_rgb)
  and the backbone's style (pytorch: stride in the 3x3; caffe: in the 1x1; mmpretrain/models/backbones/resnet.py).

A file whose layout does not tell its convention (a bare safetensors file, an OpenMMLab checkpoint without its
config, a transformers folder without preprocessor_config.json) has an undetermined one (`FileConvention.convention`
None): the run is refused unless the five model.* keys are given (initialization.resolve_input_convention).

This module holds the values (`InputConvention`, the published conventions as constants) and tells which one a
weight file was trained with (`read_weight_convention`, `detect_file_convention`), or that a model's differs
(`convention_mismatch`). Applying one is the model's: the data pipeline always yields RGB images in 0..1;
`InputConventionTransform` converts them (channel flip, scale) before normalizing (modeling/input_transform.py),
and `ResNet(stride_in_1x1=True)` moves the stride (modeling/backbones.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from scratchdet.errors import CheckpointError
from scratchdet.run_folder import CHECKPOINTS, RunFolder
from scratchdet.weights.hub import HubConfig
from scratchdet.weights.names import _read, _Source

INPUT_FORMATS = ("RGB", "BGR")
# The model.* keys that hold a convention, in this order everywhere (config, records, messages).
CONVENTION_KEYS = ("input_format", "pixel_scale", "pixel_mean", "pixel_std", "stride_in_1x1")
PIXEL_KEYS = CONVENTION_KEYS[:4]

TORCHVISION_MEAN = (0.485, 0.456, 0.406)  # RGB, pixels in 0..1 (torchvision's ImageNet recipe)
TORCHVISION_STD = (0.229, 0.224, 0.225)
DETECTRON_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # Detectron core/config.py PIXEL_MEANS, BGR, 0..255
DETECTRON2_MEAN_BGR = (103.530, 116.280, 123.675)  # detectron2 MODEL.PIXEL_MEAN default, BGR, 0..255
DETECTRON2_STD_BGR = (57.375, 57.120, 58.395)  # detectron2 configs of FAIR/X-101-32x8d.pkl: torchvision's std x 255
UNIT_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class InputConvention:
    """What the backbone is fed, and its stride placement.

    Attributes:
        input_format: channel order the network sees: RGB or BGR.
        pixel_scale: factor applied to the 0..1 pixels first: 1.0 (0..1) or 255.0 (0..255).
        pixel_mean, pixel_std: per channel, in the scaled units and in `input_format` order; the network sees
            (pixels x pixel_scale - mean) / std.
        stride_in_1x1: ResNet stages 3-5 downsample in their first block's 1x1 conv (MSRA) instead of its 3x3.
    """

    input_format: str = "RGB"
    pixel_scale: float = 1.0
    pixel_mean: tuple[float, ...] = TORCHVISION_MEAN
    pixel_std: tuple[float, ...] = TORCHVISION_STD
    stride_in_1x1: bool = False

    @classmethod
    def from_values(cls, values: Mapping, default: InputConvention | None = None) -> InputConvention:
        """From a mapping with (some of) CONVENTION_KEYS; a missing or None key takes `default`'s value."""
        base = default or TORCHVISION
        get = {k: values.get(k) if values.get(k) is not None else getattr(base, k) for k in CONVENTION_KEYS}
        return cls(
            str(get["input_format"]),
            float(get["pixel_scale"]),
            tuple(float(v) for v in get["pixel_mean"]),
            tuple(float(v) for v in get["pixel_std"]),
            bool(get["stride_in_1x1"]),
        )

    def to_dict(self) -> dict:
        """JSON/YAML-ready values under the model.* key names."""
        return {
            "input_format": self.input_format,
            "pixel_scale": self.pixel_scale,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
            "stride_in_1x1": self.stride_in_1x1,
        }

    def overrides(self, prefix: str = "model.") -> list[str]:
        """`key=value` overrides that set this convention explicitly in a config (floats keep every digit)."""

        def fmt(value) -> str:
            if isinstance(value, list):
                return "[" + ",".join(repr(v) for v in value) + "]"
            if isinstance(value, bool):
                return str(value).lower()
            return repr(value) if isinstance(value, float) else str(value)

        return [f"{prefix}{k}={fmt(v)}" for k, v in self.to_dict().items()]

    def describe(self) -> str:
        """One phrase, e.g. "BGR x255, mean [102.98, 115.95, 122.77], std [1, 1, 1], stride in the 1x1"."""

        def nums(v):
            return "[" + ", ".join(f"{x:g}" for x in v) + "]"

        return (
            f"{self.input_format} x{self.pixel_scale:g}, mean {nums(self.pixel_mean)}, std {nums(self.pixel_std)}"
            f", stride in the {'1x1' if self.stride_in_1x1 else '3x3'}"
        )

    def _pixel_map(self) -> list[tuple[int, float, float]]:
        """Per network channel: (index of the RGB input channel, gain, offset): the network sees rgb[i] * gain - offset.
        Two conventions with the same map feed the network the same numbers (e.g. torchvision's in 0..1 and
        detectron2's torchvision conversion in 0..255)."""
        order = (0, 1, 2) if self.input_format == "RGB" else (2, 1, 0)
        return [
            (order[c], self.pixel_scale / self.pixel_std[c], self.pixel_mean[c] / self.pixel_std[c]) for c in range(3)
        ]

    def same_pixels(self, other: InputConvention) -> bool:
        """True when both feed the network the same values (to 1e-6 relative), whatever units they are written in."""
        return all(
            i == j and math.isclose(g, h, rel_tol=1e-6) and math.isclose(o, p, rel_tol=1e-6, abs_tol=1e-9)
            for (i, g, o), (j, h, p) in zip(self._pixel_map(), other._pixel_map(), strict=True)
        )

    def same_network(self, other: InputConvention) -> bool:
        return self.same_pixels(other) and self.stride_in_1x1 == other.stride_in_1x1


TORCHVISION = InputConvention()
DETECTRON_MSRA = InputConvention("BGR", 255.0, DETECTRON_MEAN_BGR, UNIT_STD, True)
DETECTRON_FAIR = InputConvention("BGR", 255.0, DETECTRON_MEAN_BGR, UNIT_STD, False)
DETECTRON2_MSRA = InputConvention("BGR", 255.0, DETECTRON2_MEAN_BGR, UNIT_STD, True)
DETECTRON2_FAIR_RESNEXT = InputConvention("BGR", 255.0, DETECTRON2_MEAN_BGR, DETECTRON2_STD_BGR, False)
DETECTRON2_TORCHVISION = InputConvention("RGB", 255.0, (123.675, 116.280, 103.530), (58.395, 57.120, 57.375), False)


@dataclass(frozen=True)
class FileConvention:
    """The convention a weight file was trained with, as far as the file tells.

    Attributes:
        convention: the values; None when the file does not determine them (then the model.* keys must be given).
        known: True when the file (its layout, norm layers, metadata, config files or run folder) identifies them;
            False when they are assumed or undetermined, in which case explicit model.* settings take precedence.
        origin: what the file was recognized as, and where the rule comes from.
    """

    convention: InputConvention | None
    known: bool
    origin: str

    @property
    def determined(self) -> bool:
        return self.convention is not None

    def to_dict(self) -> dict:
        values = self.convention.to_dict() if self.convention else dict.fromkeys(CONVENTION_KEYS)
        return {**values, "known": self.known, "origin": self.origin}


def recorded_file_convention(record: Mapping | None) -> InputConvention | None:
    """The convention in a FileConvention.to_dict() record (init.json, WeightReport); None when undetermined."""
    if not record or any(record.get(k) is None for k in CONVENTION_KEYS):
        return None
    return InputConvention.from_values(record)


# ---------------------------------------------------------------------------------------------------------------
# Recognizing a file's convention
# ---------------------------------------------------------------------------------------------------------------

_DETECTRON_INPUT = "Detectron's input: BGR 0..255 minus PIXEL_MEANS, std 1 (folded into conv1)"
_CAFFE2_RULES = {
    # (source norm, grouped 3x3 convs) -> convention, origin
    ("GN", False): (
        DETECTRON_FAIR,
        "Detectron Caffe2 pickle with GN layers: FAIR's R-50-GN.pkl / R-101-GN.pkl; "
        f"{_DETECTRON_INPUT}; stride in the 3x3 (Detectron GN configs: RESNETS.STRIDE_1X1 False)",
    ),
    ("BN-affine", True): (
        DETECTRON_FAIR,
        "Detectron Caffe2 pickle of a ResNeXt with BN folded to scale/shift: "
        f"FAIR's X-101-32x8d / X-101-64x4d / X-152-32x8d-IN5k.pkl; {_DETECTRON_INPUT}; stride in "
        "the 3x3 (RESNETS.STRIDE_1X1 False for C2 or Torch models)",
    ),
    ("BN-affine", False): (
        DETECTRON_MSRA,
        "Detectron Caffe2 pickle of a ResNet with BN folded to scale/shift: "
        f"MSRA's R-50.pkl / R-101.pkl; {_DETECTRON_INPUT}; stride in the 1x1 "
        "(RESNETS.STRIDE_1X1 True for MSRA models)",
    ),
    ("BN", False): (
        DETECTRON2_MSRA,
        "Caffe2 names with BN running statistics: detectron2's re-converted MSRA "
        "R-50.pkl / R-101.pkl; detectron2's defaults: BGR 0..255, PIXEL_MEAN [103.53, 116.28, 123.675], "
        "PIXEL_STD [1, 1, 1], STRIDE_IN_1X1 True",
    ),
    ("BN", True): (
        DETECTRON2_FAIR_RESNEXT,
        "Caffe2 names of a ResNeXt with BN running statistics: detectron2's "
        "FAIR/X-101-32x8d.pkl; its configs: BGR 0..255, PIXEL_MEAN [103.53, 116.28, 123.675], "
        "PIXEL_STD [57.375, 57.12, 58.395], STRIDE_IN_1X1 False",
    ),
}
_SET_KEYS = "set model.input_format/pixel_scale/pixel_mean/pixel_std/stride_in_1x1 if it was trained otherwise"
ALL_KEYS = ", ".join(f"model.{k}" for k in CONVENTION_KEYS)
SWAV_STD = (0.228, 0.224, 0.225)  # swav/src/multicropdataset.py: std = [0.228, 0.224, 0.225]
SWAV = InputConvention(pixel_std=SWAV_STD)
_TORCHVISION_INPUT = "RGB 0..1 with the ImageNet mean/std, torchvision's ResNet (stride in the 3x3)"
# Layouts of self-supervised torchvision ResNets -> (convention, origin); the rules' sources are in the module doc.
_SELF_SUPERVISED = {
    "moco": (
        TORCHVISION,
        "MoCo v1/v2 checkpoint (module.encoder_q.*, moco/builder.py): moco/main_moco.py trains torchvision's ResNet on "
        + _TORCHVISION_INPUT,
    ),
    "moco-v3": (
        TORCHVISION,
        "MoCo v3 checkpoint (module.base_encoder.*, moco-v3/moco/builder.py): moco-v3/main_moco.py trains "
        "torchvision's ResNet on " + _TORCHVISION_INPUT,
    ),
    "dino": (
        TORCHVISION,
        "DINO checkpoint (backbone.* and head.last_layer.*: dino/utils.py MultiCropWrapper): dino/main_dino.py "
        "trains torchvision's ResNet on " + _TORCHVISION_INPUT,
    ),
    "barlowtwins": (
        TORCHVISION,
        "Barlow Twins checkpoint (backbone.*, projector.*): barlowtwins/main.py trains torchvision's ResNet on "
        + _TORCHVISION_INPUT,
    ),
    "swav": (
        SWAV,
        "SwAV checkpoint (projection_head.*, prototypes.*): swav/src/multicropdataset.py normalizes RGB 0..1 with "
        "mean [0.485, 0.456, 0.406], std [0.228, 0.224, 0.225]; swav/src/resnet50.py puts the stride in the 3x3",
    ),
}


def convention_from_record(record: object, where: str) -> InputConvention:
    """An InputConvention from a recorded dict (a scratchdet file's "input_convention" entry or a config section).

    Raises:
        CheckpointError: the record is not a dict with valid values.
    """
    try:
        if not isinstance(record, Mapping):
            raise TypeError(f"expected a dict, got {type(record).__name__}")
        conv = InputConvention.from_values(record)
        if conv.input_format not in INPUT_FORMATS or len(conv.pixel_mean) != 3 or len(conv.pixel_std) != 3:
            raise ValueError(f"invalid values {conv}")
        return conv
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"{where}: the recorded input convention is unreadable ({e}); re-create the file, or "
            "set the model.input_* keys and model.stride_in_1x1 explicitly"
        ) from None


def _run_config(path: Path) -> Path | None:
    """config.yaml of the scratchdet run that wrote `path`: RUN/checkpoints/model_*.pth or RUN/classifier_final.pth."""
    candidates = [RunFolder(path.parent.parent).config] if path.parent.name == CHECKPOINTS else []
    candidates.append(RunFolder(path.parent).config)
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except yaml.YAMLError:
                continue
            model = data.get("model") if isinstance(data, dict) else None
            if isinstance(model, dict) and "depth" in model and "norm" in model:  # a scratchdet run config
                return candidate
    return None


def detect_file_convention(
    path: Path,
    *,
    layout: str,
    source_norm: str,
    grouped: bool,
    meta: Mapping | None = None,
    hub: HubConfig | None = None,
) -> FileConvention:
    """The convention the weights in `path` were trained with.

    Args:
        path: the weight file (its run folder's config.yaml is consulted for scratchdet files).
        layout: caffe2 | detectron2 | detectron2-detector | torchvision | scratchdet | scratchdet-detector | moco |
            moco-v3 | dino | barlowtwins | swav | openmmlab | timm | transformers | safetensors (names.py).
        source_norm: BN | BN-affine | GN | none | unknown (names.py's reading of the norm tensors).
        grouped: the bottlenecks' 3x3 convs are grouped (a ResNeXt).
        meta: the file's top-level non-weight entries (`__author__`, scratchdet's `input_convention` record, an
            OpenMMLab checkpoint's `meta` under "openmmlab_meta").
        hub: the config.json / preprocessor_config.json beside the file (timm, transformers).

    Returns:
        The convention, known or assumed; or undetermined (convention None) for layouts that do not tell it.

    Raises:
        CheckpointError: a recorded convention or config file that cannot be read, or one that describes a network
            our ResNet is not (e.g. a transformers ResNet with downsample_in_first_stage).
    """
    meta = meta or {}
    if "input_convention" in meta:  # written by `scratchdet pretrain` (and any scratchdet file that records it)
        return FileConvention(
            convention_from_record(meta["input_convention"], str(path)), True, "recorded in the file by scratchdet"
        )
    if layout in _SELF_SUPERVISED:
        convention, origin = _SELF_SUPERVISED[layout]
        return FileConvention(convention, True, origin)
    if layout == "timm":
        return _timm_convention(hub or HubConfig())
    if layout == "transformers":
        return _transformers_convention(path, hub or HubConfig())
    if layout == "openmmlab":
        return _openmmlab_convention(meta.get("openmmlab_meta"))
    if layout == "safetensors":
        return FileConvention(
            None,
            False,
            "a safetensors file without the config.json of a timm or transformers folder beside it: the file "
            f"does not say what input its network was trained on; put its config.json beside it, or set {ALL_KEYS}",
        )
    if layout in ("torchvision", "scratchdet", "scratchdet-detector"):
        config = _run_config(path)
        if config is not None:
            model = yaml.safe_load(config.read_text())["model"]
            values = {k: model.get(k) for k in CONVENTION_KEYS}
            legacy = (
                ""
                if all(v is not None for v in values.values())
                else (
                    "; keys it lacks take torchvision's convention, the only one scratchdet had before recording them"
                )
            )
            return FileConvention(
                convention_from_record(values, str(config)), True, f"the model.* keys of the run's {config}{legacy}"
            )
        if layout != "torchvision":
            return FileConvention(
                TORCHVISION,
                False,
                "scratchdet file without a recorded convention or run folder: "
                "torchvision's convention assumed, the only one scratchdet used before recording "
                f"them; {_SET_KEYS}",
            )
        return FileConvention(
            TORCHVISION,
            False,
            "torchvision-layout state_dict: torchvision's ImageNet recipe "
            "assumed (RGB 0..1, ImageNet mean/std; torchvision's ResNet puts the stride in the 3x3); " + _SET_KEYS,
        )
    if layout == "caffe2":
        rule = _CAFFE2_RULES.get((source_norm, grouped if source_norm != "GN" else False))
        if rule is not None:
            return FileConvention(rule[0], True, rule[1])
        return FileConvention(
            DETECTRON_MSRA,
            False,
            f"Caffe2 names with {source_norm} norm layers, origin unknown: "
            f"Detectron's defaults assumed ({_DETECTRON_INPUT}; RESNETS.STRIDE_1X1 True); " + _SET_KEYS,
        )
    if layout == "detectron2":
        author = meta.get("__author__")
        if author == "torchvision":
            return FileConvention(
                DETECTRON2_TORCHVISION,
                True,
                "detectron2 conversion of a torchvision ResNet "
                "(__author__ 'torchvision', tools/convert-torchvision-to-d2.py): INPUT.FORMAT RGB, "
                "PIXEL_MEAN [123.675, 116.28, 103.53], PIXEL_STD [58.395, 57.12, 57.375], "
                "STRIDE_IN_1X1 False",
            )
        return FileConvention(
            DETECTRON2_TORCHVISION,
            False,
            f"detectron2-named backbone (__author__ {author!r}): "
            "assumed converted from a torchvision-style PyTorch ResNet like "
            f"tools/convert-torchvision-to-d2.py's output; {_SET_KEYS}",
        )
    if layout == "detectron2-detector":
        return FileConvention(
            DETECTRON2_MSRA,
            False,
            "detectron2 detector checkpoint: its config is not in the file; "
            "detectron2's defaults assumed (BGR 0..255, PIXEL_MEAN [103.53, 116.28, 123.675], "
            f"PIXEL_STD [1, 1, 1], STRIDE_IN_1X1 True); {_SET_KEYS}",
        )
    raise ValueError(f"layout={layout!r} is not a known weight-file layout")


def _floats(values: object, n: int = 3) -> tuple[float, ...] | None:
    """`values` as n floats, or None when they are not n numbers."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _timm_convention(hub: HubConfig) -> FileConvention:
    """timm: config.json's pretrained_cfg mean/std (or top-level ones), RGB in 0..1, stride in the 3x3."""
    cfg = hub.config.get("pretrained_cfg") if isinstance(hub.config.get("pretrained_cfg"), dict) else hub.config
    mean, std = _floats(cfg.get("mean")), _floats(cfg.get("std"))
    if mean is None or std is None or any(s <= 0 for s in std):
        return FileConvention(
            None,
            False,
            f"timm config {hub.config_path} without 3 mean and 3 std values in pretrained_cfg: the input its "
            f"network was trained on is not stated; set {ALL_KEYS}",
        )
    arch = hub.config.get("architecture", "?")
    return FileConvention(
        InputConvention("RGB", 1.0, mean, std, False),
        True,
        f"timm {arch} with {hub.config_path}: pretrained_cfg mean/std, RGB in 0..1 (timm/data/transforms_factory.py: "
        "ToTensor then Normalize); timm's ResNet puts the stride in the 3x3 (timm/models/resnet.py Bottleneck)",
    )


def _transformers_convention(path: Path, hub: HubConfig) -> FileConvention:
    """transformers: stride from config.json's downsample_in_bottleneck, pixels from preprocessor_config.json."""
    config = hub.config
    where = hub.config_path or path.with_name("config.json")
    if config.get("downsample_in_first_stage"):
        raise CheckpointError(
            f"{where} sets downsample_in_first_stage: its ResNet strides in the first stage too, a network that "
            "scratchdet's ResNet (torchvision's layout: the first stage keeps the stem's resolution) is not; use a "
            "checkpoint with downsample_in_first_stage false"
        )
    if config.get("hidden_act", "relu") != "relu":
        raise CheckpointError(
            f"{where} sets hidden_act={config.get('hidden_act')!r}; scratchdet's ResNet uses ReLU, so this network "
            "cannot be reproduced; use a ReLU checkpoint"
        )
    stride = bool(config.get("downsample_in_bottleneck", False))
    pre = hub.preprocessor
    mean, std = _floats(pre.get("image_mean")), _floats(pre.get("image_std"))
    if not config or not pre or ((mean is None or std is None) and pre.get("do_normalize", True)):
        missing = "config.json" if not config else "preprocessor_config.json with image_mean and image_std"
        return FileConvention(
            None,
            False,
            f"a Hugging Face transformers ResNet without its {missing} beside {path.name}: the input it was trained "
            f"on is not stated; put the repository's file beside it, or set {ALL_KEYS}",
        )
    if not pre.get("do_normalize", True):
        mean, std = (0.0, 0.0, 0.0), UNIT_STD
    # Image processors take 0..255 images (PIL) and multiply by rescale_factor (1/255) when do_rescale.
    scale = 255.0 * float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 255.0
    return FileConvention(
        InputConvention("RGB", scale, mean, std, stride),
        True,
        f"Hugging Face transformers ResNet ({hub.config_path.name} and {hub.preprocessor_path.name}): RGB, "
        f"rescale_factor x 255 = {scale:g}, image_mean/image_std; stride in the "
        f"{'1x1' if stride else '3x3'} (downsample_in_bottleneck {stride}, models/resnet/modeling_resnet.py)",
    )


_MM_STYLE = re.compile(r"\bstyle\s*=\s*['\"](pytorch|caffe)['\"]")
_MM_TO_RGB = re.compile(r"\b(to_rgb|bgr_to_rgb|rgb_to_bgr)\s*=\s*(True|False)")
_MM_LIST = r"\b{}\s*=\s*\[([^\]]*)\]"


def _openmmlab_convention(meta: Mapping | None) -> FileConvention:
    """OpenMMLab: the data preprocessor and backbone style of the config text mmengine (meta["cfg"]) or mmcv
    (meta["config"]) stores in the checkpoint."""
    text = next((meta[k] for k in ("cfg", "config") if isinstance(meta, Mapping) and isinstance(meta.get(k), str)), "")
    # The normalization is the data preprocessor's (mmengine) or img_norm_cfg's (mmcv): read from there on.
    start = text.find("data_preprocessor") if "data_preprocessor" in text else text.find("img_norm_cfg")
    norm = text[start:] if start >= 0 else ""
    mean, std = (
        _floats([v for v in m.group(1).replace("\n", " ").split(",") if v.strip()])
        if (m := re.search(_MM_LIST.format(name), norm))
        else None
        for name in ("mean", "std")
    )
    if mean is None or std is None:
        return FileConvention(
            None,
            False,
            "OpenMMLab checkpoint (backbone.*) without a config in its meta (cfg/config) that states the data "
            f"preprocessor's mean and std: the input its network was trained on is not stated; set {ALL_KEYS} "
            "(mmpretrain's ImageNet ResNets: RGB, 255.0, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], false)",
        )
    flag = _MM_TO_RGB.search(norm)
    # Images are read BGR (mmcv.imread); to_rgb (mmpretrain), bgr_to_rgb or rgb_to_bgr (mmengine's
    # ImgDataPreprocessor: either one swaps the channels) flip them to RGB; default: no flip.
    rgb = bool(flag) and flag.group(2) == "True"
    style = _MM_STYLE.search(text)
    caffe = bool(style) and style.group(1) == "caffe"
    return FileConvention(
        InputConvention("RGB" if rgb else "BGR", 255.0, mean, std, caffe),
        True,
        "OpenMMLab checkpoint (backbone.*): its meta config's data preprocessor (mean/std in 0..255, "
        f"{flag.group(0) if flag else 'no to_rgb: BGR as mmcv.imread reads'}) and backbone style "
        f"{style.group(1) if style else 'pytorch (the default)'} (mmpretrain/models/backbones/resnet.py: caffe "
        "puts the stride in the 1x1)",
    )


def convention_mismatch(
    given: InputConvention,
    file: FileConvention,
    path: str | Path,
    *,
    given_keys: Sequence[str] = CONVENTION_KEYS,
    what: str = "the config",
) -> str | None:
    """None when `given` feeds the file's network as it was trained (or the file's convention is only assumed);
    else a message naming the keys given, their values, what the file needs and why."""
    if not file.known or file.convention is None or given.same_network(file.convention):
        return None
    needs = file.convention.to_dict()
    values = given.to_dict()
    wrong = [k for k in CONVENTION_KEYS if values[k] != needs[k]]
    named = [k for k in wrong if k in given_keys] or wrong
    return (
        f"{what} sets "
        + ", ".join(f"model.{k}={values[k]!r}" for k in named)
        + f", but {Path(path).name} needs "
        + ", ".join(f"model.{k}={needs[k]!r}" for k in CONVENTION_KEYS)
        + f" ({file.origin}); fed otherwise it computes a different network than the one it was trained as. "
        "Drop these model.* keys to follow the file (scratchdet fills them in), or set them to the file's values"
    )


def _grouped(tensors: Mapping[str, torch.Tensor]) -> bool:
    """True for a ResNeXt: a bottleneck's 3x3 conv maps width -> width, so its weight is [w, w / groups, 3, 3]."""
    return any(
        re.match(r"^layer\d+\.\d+\.conv2\.weight$", k)
        and v.dim() == 4
        and v.shape[1] != v.shape[0]
        and tuple(v.shape[2:]) == (3, 3)
        for k, v in tensors.items()
    )


def _file_convention(source: _Source, path: Path) -> FileConvention:
    return detect_file_convention(
        path,
        layout=source.layout,
        source_norm=source.source_norm,
        grouped=_grouped(source.tensors),
        meta=source.meta,
        hub=source.hub,
    )


def read_weight_convention(path: str | Path, checkpoint_key: str | None = None) -> FileConvention:
    """The input convention and stride placement the network in `path` was trained with (detect_file_convention).

    Args:
        checkpoint_key: the top-level entry holding the network, for files with several (pretrained.checkpoint_key).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, ambiguous without checkpoint_key, or records an
            unreadable convention.
    """
    path = Path(path)
    return _file_convention(_read(path, checkpoint_key), path)
