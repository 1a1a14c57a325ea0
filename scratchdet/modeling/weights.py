"""Pre-trained backbone weights: read torchvision, scratchdet and Detectron files, audit the match, then load.

The paper's pre-trained arm fine-tunes from ImageNet weights: GN models from GN-pre-trained weights (Detectron's
R-50-GN.pkl) and SyncBN models from BN-pre-trained ones, with the norm layers trained, not frozen (PAPER.md). A
silently partial load would make that arm look like a half-from-scratch run, so every load is audited first: which
of the body's tensors the file fills, which it lacks, and which it has extra; below `min_coverage` nothing is loaded.

Every file is read into one naming, torchvision's (conv1, bn1, layer1.0.downsample.1.weight, fc.weight), which is
also the name of our ResNet body's state (backbones.py). Loading a file never runs code from it: torch files go
through `torch.load(weights_only=True)` and Detectron pickles through an unpickler that admits numpy arrays only
(modeling/weight_files.py).
What happens to BN statistics across norm types is documented in docs/WEIGHTS.md.

Reading a file also tells the input convention and stride placement its network was trained with
(input_convention.py): from a record in the file, its run folder, or its layout (Caffe2 names, norm layers, groups).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from scratchdet.errors import CheckpointError
from scratchdet.modeling.backbones import RESNET_SPECS
from scratchdet.modeling.input_convention import (
    FileConvention,
    InputConvention,
    convention_mismatch,
    detect_file_convention,
)
from scratchdet.modeling.weight_files import as_tensor, read_object, unwrap

TARGET_NORMS = ("GN", "BN", "FrozenBN", "SyncBN", "none")
NORM_MISMATCH_POLICIES = ("error", "skip_norm", "load_affine")

# Norm families: weights move freely within one. BN-affine is Detectron's AffineChannel (BN folded to scale/bias).
_SOURCE_FAMILY = {"BN": "BN", "BN-affine": "BN", "GN": "GN", "none": "none", "unknown": None}
_TARGET_FAMILY = {"BN": "BN", "FrozenBN": "BN", "SyncBN": "BN", "GN": "GN", "none": "none"}

# torchvision names of norm-layer tensors: stem bn1, block bn1..bn3, and the shortcut's norm (downsample.1).
_NORM_KEY = re.compile(
    r"^(?P<module>(?:.*\.)?(?:bn\d+|downsample\.1))\.(?P<field>weight|bias|running_mean|running_var)$"
)
_BACKBONE_KEY = re.compile(r"^(conv1|bn1|layer\d+)\.")
_RUNNING_STATS = ("running_mean", "running_var")

# Caffe2 blob names (Detectron): res{stage}_{block}_branch{1|2a|2b|2c}_{suffix}, stem conv1_* / res_conv1_*.
_C2_BLOCK = re.compile(r"^res(?P<stage>\d+)_(?P<block>\d+)_branch(?P<branch>1|2a|2b|2c)_(?P<suffix>.+)$")
_C2_STEM = re.compile(r"^(?:res_)?conv1_(?P<suffix>.+)$")
_C2_BRANCH = {
    "1": ("downsample.0", "downsample.1"),
    "2a": ("conv1", "bn1"),
    "2b": ("conv2", "bn2"),
    "2c": ("conv3", "bn3"),
}
# Suffix -> (norm kind, field); the bn_rm/bn_riv/gamma/beta spellings follow detectron2's convert_basic_c2_names.
_C2_NORM_SUFFIX = {
    "bn_s": ("bn", "weight"),
    "bn_b": ("bn", "bias"),
    "bn_gamma": ("bn", "weight"),
    "bn_beta": ("bn", "bias"),
    "bn_rm": ("bn", "running_mean"),
    "bn_riv": ("bn", "running_var"),
    "bn_running_mean": ("bn", "running_mean"),
    "bn_running_var": ("bn", "running_var"),
    "gn_s": ("gn", "weight"),
    "gn_b": ("gn", "bias"),
}
_C2_CONV_SUFFIX = {"w": "weight", "b": "bias"}
# Detectron2's own names (its exports of torchvision/MSRA models): stem.conv1[.norm], res2.0.conv1[.norm], shortcut.
_D2_BLOCK = re.compile(r"^res(?P<stage>\d+)\.(?P<block>\d+)\.(?P<conv>conv\d|shortcut)\.(?P<rest>.+)$")
_D2_STEM = re.compile(r"^stem\.conv1\.(?P<rest>.+)$")


@dataclass
class WeightReport:
    """What a pre-trained file gave the backbone; key lists use our (torchvision) names, sorted.

    Attributes:
        source_format: torchvision | scratchdet | detectron.
        source_norm: BN (running stats), BN-affine (Detectron's frozen scale/bias), GN, none, or unknown.
        matched: body tensors filled from the file (including running stats set by the BN-affine convention).
        missing: body tensors the file does not fill; they keep their initialization.
        unexpected: backbone-looking file tensors with no place in the body.
        shape_mismatched: names in both whose shapes differ; never loaded.
        ignored: file entries that are not backbone weights (classifier, detection heads, metadata, momenta) and
            norm entries dropped by the norm-mismatch policy.
        synthesized: running stats set by the BN-affine convention (mean 0, var 1 - eps).
        coverage: loaded elements / all elements of the body's state (num_batches_tracked excluded).
        input_convention: the input convention and stride placement the file's network was trained with
            (FileConvention.to_dict(): the model.* values, whether they are known or assumed, and why).
    """

    path: str
    source_format: str
    source_norm: str
    target_norm: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    synthesized: list[str] = field(default_factory=list)
    coverage: float = 0.0
    input_convention: dict | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict of all fields (for the run folder's records)."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"pre-trained weights {self.path} ({self.source_format}, norm {self.source_norm} -> {self.target_norm}): "
            f"{len(self.matched)} tensors loaded, coverage {self.coverage:.2%}",
        ]
        for name, keys in (
            ("missing (kept at init)", self.missing),
            ("unexpected", self.unexpected),
            ("shape mismatched (not loaded)", self.shape_mismatched),
        ):
            if keys:
                lines.append(f"  {name}: {len(keys)}: {_first(keys)}")
        if self.synthesized:
            lines.append(f"  running stats set to mean 0 / var 1-eps (BN-affine source): {len(self.synthesized)}")
        if self.ignored:
            lines.append(f"  ignored (classifier, heads, metadata, norms dropped by the policy): {len(self.ignored)}")
        if self.input_convention:
            conv = InputConvention.from_values(self.input_convention)
            how = "known" if self.input_convention["known"] else "ASSUMED"
            lines.append(f"  the file's input convention ({how}): {conv.describe()}: {self.input_convention['origin']}")
        return "\n".join(lines)


@dataclass
class _Source:
    """A weight file in torchvision naming, before auditing."""

    tensors: dict[str, torch.Tensor]
    source_format: str
    source_norm: str
    ignored: list[str]
    unexpected: list[str]  # file names that look like backbone weights but follow no known layout
    layout: str = "torchvision"  # input_convention.detect_file_convention's layouts
    meta: dict = field(default_factory=dict)  # top-level metadata: __author__, scratchdet's input_convention record


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"


# ---------------------------------------------------------------------------------------------------------------
# Name conversion to torchvision's layout
# ---------------------------------------------------------------------------------------------------------------


def _c2_name(name: str) -> str | None:
    """torchvision name of a Caffe2 Detectron blob.

    Returns "" for a backbone-looking blob with no known place, None for a blob that is not a backbone weight (the
    classifier aside, which maps to fc.* and is set aside later).
    """
    if name in ("fc1000_w", "fc1000_b"):
        return "fc." + _C2_CONV_SUFFIX[name[-1]]
    if name.endswith("_momentum") or not (name.startswith(("conv1_", "res_conv1_")) or re.match(r"^res\d", name)):
        return None  # SGD momenta, lr / weight_order / model_iter metadata, detection heads
    stem = _C2_STEM.match(name)
    block = _C2_BLOCK.match(name)
    if stem:
        conv, norm, suffix = "conv1", "bn1", stem["suffix"]
    elif block and int(block["stage"]) >= 2:
        conv, norm = _C2_BRANCH[block["branch"]]
        prefix = f"layer{int(block['stage']) - 1}.{int(block['block'])}."
        conv, norm, suffix = prefix + conv, prefix + norm, block["suffix"]
    else:
        return ""
    if suffix in _C2_CONV_SUFFIX:
        return f"{conv}.{_C2_CONV_SUFFIX[suffix]}"
    if suffix in _C2_NORM_SUFFIX:
        return f"{norm}.{_C2_NORM_SUFFIX[suffix][1]}"
    return ""


def _d2_name(name: str) -> str | None:
    """torchvision name of a Detectron2-native key (stem.conv1.norm.weight, res2.0.shortcut.weight).

    Returns "" for a backbone-looking key with no known place, None for a key that is not a backbone weight.
    """
    if name in ("linear.weight", "linear.bias"):
        return "fc." + name.split(".")[1]
    stem = _D2_STEM.match(name)
    block = _D2_BLOCK.match(name)
    if stem:
        conv, norm, rest = "conv1", "bn1", stem["rest"]
    elif block and int(block["stage"]) >= 2:
        prefix = f"layer{int(block['stage']) - 1}.{int(block['block'])}."
        if block["conv"] == "shortcut":
            conv, norm = prefix + "downsample.0", prefix + "downsample.1"
        else:
            conv, norm = prefix + block["conv"], prefix + "bn" + block["conv"][-1]
        rest = block["rest"]
    elif name.startswith(("stem.", "res")):
        return ""
    else:
        return None
    if rest in ("weight", "bias"):
        return f"{conv}.{rest}"
    if rest.startswith("norm.") and rest[5:] in ("weight", "bias", *_RUNNING_STATS):
        return f"{norm}.{rest[5:]}"
    return ""


def _strip_prefix(entries: dict, prefix: str) -> dict:
    if entries and all(k.startswith(prefix) for k in entries):
        return {k[len(prefix) :]: v for k, v in entries.items()}
    return entries


def _source_norm(tensors: dict[str, torch.Tensor], c2_kinds: set[str]) -> str:
    fields = collections.defaultdict(set)  # norm module -> fields present
    for key in tensors:
        m = _NORM_KEY.match(key)
        if m:
            fields[m["module"]].add(m["field"])
    present = set().union(*fields.values()) if fields else set()
    if "running_mean" in present or "running_var" in present:
        return "BN"
    if c2_kinds:  # Caffe2 names say which layer wrote them; affine-only bn blobs are Detectron's AffineChannel
        return "GN" if c2_kinds == {"gn"} else "BN-affine" if c2_kinds == {"bn"} else "unknown"
    if not present or present == {"bias"}:
        return "none"  # no norm tensors, or scratchdet's norm=none (ChannelBias: a bias only)
    # weight + bias without statistics in torchvision names: a GroupNorm model's state (scratchdet GN runs)
    return "GN" if present == {"weight", "bias"} else "unknown"


def _convert(entries: dict, container: str, wrapper: str | None) -> _Source:
    """Renames a file's entries to torchvision names, separating non-backbone entries (ignored) from unknown ones."""
    entries = {str(k): v for k, v in entries.items()}
    entries = _strip_prefix(entries, "module.")  # saved from DistributedDataParallel
    tensors: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    c2_kinds: set[str] = set()
    names = list(entries)
    detector = any(k.startswith("backbone.body.") for k in names)
    d2_detector = any(k.startswith("backbone.bottom_up.") for k in names)
    caffe2 = any(_C2_STEM.match(k) or _C2_BLOCK.match(k) for k in names)
    d2 = d2_detector or any(_D2_STEM.match(k) or _D2_BLOCK.match(k) for k in names)
    if detector or d2_detector:
        source_format = "scratchdet" if detector else "detectron"
    elif caffe2 or d2 or container == "pickle":
        source_format = "detectron"
    else:
        source_format = "scratchdet" if wrapper == "model" else "torchvision"
    layout = (
        "scratchdet-detector"
        if detector
        else "detectron2-detector"
        if d2_detector and not caffe2
        else "caffe2"
        if caffe2
        else "detectron2"
        if d2
        else "scratchdet"
        if source_format == "scratchdet"
        else "torchvision"
    )

    for raw, value in entries.items():
        name: str | None = raw
        if raw.endswith("num_batches_tracked"):  # BN's step counter: not a weight, and no target keeps it
            ignored.append(raw)
            continue
        if detector or d2_detector:
            prefix = "backbone.body." if detector else "backbone.bottom_up."
            name = raw[len(prefix) :] if raw.startswith(prefix) else None  # FPN, RPN, RoI heads: not the body
        if name is not None and caffe2:
            c2 = _c2_name(name)
            suffix = name.rsplit("_", 2)
            if c2 and len(suffix) == 3 and suffix[1] in ("bn", "gn"):
                c2_kinds.add(suffix[1])
            name = c2
        elif name is not None and d2:
            name = _d2_name(name)
        elif name is not None and not _BACKBONE_KEY.match(name) and not name.startswith("fc."):
            # torchvision naming: anything else is not ours unless it merely lost its layout (renamed stages)
            name = name if re.match(r"^[\w.]+\.(weight|bias|running_mean|running_var)$", name) else None
        tensor = as_tensor(value)
        if name is None or tensor is None:
            ignored.append(raw)
        elif name == "":
            unexpected.append(raw)
        elif name in tensors:
            raise CheckpointError(f"two entries of the file map to {name} (one is {raw}); the file is inconsistent")
        else:
            tensors[name] = tensor
    return _Source(tensors, source_format, _source_norm(tensors, c2_kinds), sorted(ignored), sorted(unexpected), layout)


# Top-level entries kept beside the weights: detectron2's writer name, scratchdet's recorded input convention.
_META_KEYS = ("__author__", "matching_heuristics", "input_convention")


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
        path, layout=source.layout, source_norm=source.source_norm, grouped=_grouped(source.tensors), meta=source.meta
    )


def _read(path: Path) -> _Source:
    obj, container = read_object(path)
    entries, wrapper = unwrap(obj, path)
    source = _convert(entries, container, wrapper)
    if isinstance(obj, Mapping):
        source.meta = {k: obj[k] for k in _META_KEYS if k in obj}
    return source


def read_weight_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Reads a torchvision .pth, a scratchdet checkpoint or a Detectron .pkl into torchvision-named tensors.

    Non-weight entries (SGD momenta, metadata, detection heads of a detector checkpoint) are left out; the
    classifier is kept as fc.weight / fc.bias.

    Returns:
        ({torchvision-style key: tensor}, source_format), source_format being torchvision | scratchdet | detectron.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds anything but plain weights.
    """
    source = _read(Path(path))
    return source.tensors, source.source_format


def read_weight_convention(path: str | Path) -> FileConvention:
    """The input convention and stride placement the network in `path` was trained with (input_convention.py).

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or records an unreadable convention.
    """
    path = Path(path)
    return _file_convention(_read(path), path)


# ---------------------------------------------------------------------------------------------------------------
# Audit and load
# ---------------------------------------------------------------------------------------------------------------


def compare_by_name(
    tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Target keys found in `tensors` with the same shape, missing from them, and present with another shape."""
    matched, missing, mismatched = [], [], []
    for key, value in target.items():
        if key not in tensors:
            missing.append(key)
        elif tuple(tensors[key].shape) != tuple(value.shape):
            mismatched.append(key)
        else:
            matched.append(key)
    return matched, missing, mismatched


def describe_body(body: nn.Module) -> str:
    """ "ResNet-50", "ResNeXt-101 32x8d", ... for messages; the class name for bodies of another shape."""
    try:
        layers = [getattr(body, f"layer{i}") for i in range(1, 5)]
        blocks = tuple(len(layer) for layer in layers)
        first = layers[0][0]
        for depth, (block, spec) in RESNET_SPECS.items():
            if isinstance(first, block) and blocks == spec:
                groups = first.conv2.groups
                if groups > 1:
                    return f"ResNeXt-{depth} {groups}x{first.conv2.out_channels // groups}d"
                return f"ResNet-{depth}"
    except (AttributeError, TypeError, IndexError):
        pass
    return type(body).__name__


def _mismatch_message(path: Path, source: _Source, target_norm: str, body_name: str) -> str:
    return (
        f"{path} holds {source.source_norm}-normalized weights but the {body_name} body uses {target_norm}: "
        "their norm layers do not correspond (BN keeps per-channel running statistics, GN normalizes per group "
        "and has none). The paper fine-tunes GN models from GN-pre-trained weights (e.g. Detectron's R-50-GN.pkl) "
        "and BN/SyncBN models from BN ones. Use a matching file, or pass norm_mismatch='skip_norm' (load the convs, "
        "keep the norm layers at weight 1 / bias 0) or norm_mismatch='load_affine' (also copy the norm scale/shift, "
        "dropping BN running statistics); see docs/WEIGHTS.md"
    )


def _apply_norm_policy(
    source: _Source, tensors: dict[str, torch.Tensor], target_norm: str, policy: str, path: Path, body_name: str
) -> list[str]:
    """Drops norm entries from `tensors` (in place) as the policy says; returns the dropped names."""
    src_family, dst_family = _SOURCE_FAMILY[source.source_norm], _TARGET_FAMILY[target_norm]
    if src_family is None or src_family == dst_family:
        return []
    if policy == "error":
        raise CheckpointError(_mismatch_message(path, source, target_norm, body_name))
    norm_keys = [k for k in tensors if _NORM_KEY.match(k)]
    if policy == "load_affine":
        if {src_family, dst_family} != {"BN", "GN"}:
            raise CheckpointError(
                f"norm_mismatch='load_affine' maps BN and GN scale/shift onto each other; {path} has "
                f"{source.source_norm} norms and the {body_name} body {target_norm}: use norm_mismatch='skip_norm'"
            )
        # Running statistics have no GN counterpart; the target BN's own are left at init (they re-estimate).
        norm_keys = [k for k in norm_keys if _NORM_KEY.match(k)["field"] in _RUNNING_STATS]
    for k in norm_keys:
        del tensors[k]
    return norm_keys


def _synthesize_running_stats(
    tensors: dict[str, torch.Tensor], target: dict[str, torch.Tensor], body: nn.Module
) -> list[str]:
    """Fills running stats for BN-affine (AffineChannel) weights so that a BN in eval mode computes exactly s*x + b.

    BN in eval computes (x - mean) / sqrt(var + eps) * weight + bias; with mean = 0 and var = 1 - eps the divisor is
    sqrt(1) = 1, exactly, also in float32 (detectron2's FrozenBatchNorm2d uses the same convention).
    """
    modules = dict(body.named_modules())
    added = []
    for key in list(tensors):
        m = _NORM_KEY.match(key)
        if not m or m["field"] != "weight":
            continue
        prefix = m["module"]
        mean_key, var_key = f"{prefix}.running_mean", f"{prefix}.running_var"
        if mean_key not in target or var_key not in target:
            continue
        eps = float(getattr(modules.get(prefix), "eps", 1e-5))
        like = target[var_key]
        tensors[mean_key] = torch.zeros(like.shape, dtype=like.dtype)
        tensors[var_key] = torch.full(like.shape, 1.0 - eps, dtype=like.dtype)
        added += [mean_key, var_key]
    return sorted(added)


def load_backbone_weights(
    body: nn.Module,
    path: str | Path,
    *,
    target_norm: str,
    min_coverage: float = 0.99,
    norm_mismatch: str = "error",
    input_convention: InputConvention | None = None,
) -> WeightReport:
    """Loads pre-trained weights into a ResNet/ResNeXt body after auditing the match.

    Args:
        body: our ResNet, or a detector's `model.backbone.body` (same key names).
        path: torchvision .pth, scratchdet checkpoint (classification or detection) or Detectron .pkl.
        target_norm: the body's normalization: GN | BN | FrozenBN | SyncBN | none.
        min_coverage: fraction of the body's state elements the file must fill; below it nothing is loaded.
        norm_mismatch: error | skip_norm | load_affine, for BN-family weights into GN or back (docs/WEIGHTS.md).
        input_convention: the convention the model feeds the body with (input_convention.model_input_convention);
            given, a file whose known convention differs is refused before anything is loaded.

    Returns:
        The audit; print `report.summary()`, store `report.to_dict()`.

    Raises:
        CheckpointError: unreadable or unsafe file, norm mismatch under "error", coverage below min_coverage, or
            an input convention other than the file's (known) one.
    """
    if target_norm not in TARGET_NORMS:
        raise ValueError(f"target_norm={target_norm!r} is not valid; choose one of {', '.join(TARGET_NORMS)}")
    if norm_mismatch not in NORM_MISMATCH_POLICIES:
        raise ValueError(
            f"norm_mismatch={norm_mismatch!r} is not valid; choose one of {', '.join(NORM_MISMATCH_POLICIES)}"
        )
    path = Path(path)
    body_name = describe_body(body)
    target = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    body_family = _SOURCE_FAMILY[_source_norm(target, set())]
    if body_family is not None and body_family != _TARGET_FAMILY[target_norm]:
        raise ValueError(
            f"target_norm={target_norm!r} does not describe the {body_name} body, whose norm layers are "
            f"{body_family}-type; pass the norm the body was built with (model.norm)"
        )
    source = _read(path)
    file_convention = _file_convention(source, path)
    if input_convention is not None:
        checked = file_convention
        if not any(isinstance(m, Bottleneck) for m in body.modules()):
            # A basic-block body has no 1x1 conv to hold the stride; the audit below reports the depth mismatch.
            checked = dataclasses.replace(
                file_convention,
                convention=dataclasses.replace(
                    file_convention.convention, stride_in_1x1=input_convention.stride_in_1x1
                ),
            )
        problem = convention_mismatch(input_convention, checked, path, what=f"the model built for {path.name}")
        if problem:
            raise CheckpointError(
                f"{problem}. (The detector is built from these keys, so resolve them before "
                "building it: engine.initialization.resolve_input_convention, as `scratchdet "
                "train` does.)"
            )
    tensors = dict(source.tensors)
    ignored = list(source.ignored)
    for key in [k for k in tensors if k.startswith("fc.") and k not in target]:
        ignored.append(key)  # the ImageNet classifier: pre-training's head, not part of the backbone
        del tensors[key]
    ignored += _apply_norm_policy(source, tensors, target_norm, norm_mismatch, path, body_name)
    synthesized = []
    if source.source_norm == "BN-affine":
        synthesized = _synthesize_running_stats(tensors, target, body)

    matched, missing, mismatched = compare_by_name(tensors, target)
    total = sum(v.numel() for v in target.values())
    loaded = sum(target[k].numel() for k in matched)
    report = WeightReport(
        path=str(path),
        source_format=source.source_format,
        source_norm=source.source_norm,
        target_norm=target_norm,
        matched=sorted(matched),
        missing=sorted(missing),
        unexpected=sorted([k for k in tensors if k not in target] + source.unexpected),
        shape_mismatched=sorted(mismatched),
        ignored=sorted(ignored),
        synthesized=synthesized,
        coverage=loaded / total if total else 0.0,
        input_convention=file_convention.to_dict(),
    )
    if report.coverage < min_coverage:
        shapes = [
            f"{k} (file {list(tensors[k].shape)} vs body {list(target[k].shape)})" for k in report.shape_mismatched
        ]
        minimum = f"{round(min_coverage * 100, 3):g}%"
        raise CheckpointError(
            f"{path} covers only {report.coverage:.1%} of the {body_name} backbone (min {minimum}): "
            f"first missing keys: {_first(report.missing)}; first unexpected: {_first(report.unexpected)}; "
            f"first shape mismatches: {_first(shapes)}; is this the right file/depth?"
        )
    result = body.load_state_dict({k: tensors[k] for k in matched}, strict=False)
    if result.unexpected_keys:  # cannot happen: every key was checked against body.state_dict() above
        raise RuntimeError(f"weights.py audit bug: unexpected keys {result.unexpected_keys[:5]}")
    return report
