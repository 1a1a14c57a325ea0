"""Name maps: a weight file's entries renamed from their source layout to our torchvision-style names.

Every file is read into one naming, torchvision's (conv1, bn1, layer1.0.downsample.1.weight, fc.weight), which is
also the name of our ResNet body's state (modeling/backbones.py). One function per source layout maps one key:
`_torchvision_name` for torchvision's and scratchdet's own names (a scratchdet detector checkpoint holds them under
backbone.body.), `_c2_name` for Detectron's Caffe2 blob names, `_d2_name` for Detectron2's (a detectron2 detector
holds them under backbone.bottom_up.). `_convert` recognizes the layout, strips the wrapper prefixes (module. from
DistributedDataParallel, a detector's body prefix), sets aside entries that are not backbone weights, and tells the
kind of norm layers the file's network had (`_source_norm`). A new layout is one more name function, recognized in
`_convert`.

Reading the file without running code from it is files.py's; checking the names against a body is audit.py's.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scratchdet.errors import CheckpointError
from scratchdet.weights.files import _META_KEYS, as_tensor, read_object, unwrap

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
class _Source:
    """A weight file in torchvision naming, before auditing."""

    tensors: dict[str, torch.Tensor]
    source_format: str
    source_norm: str
    ignored: list[str]
    unexpected: list[str]  # file names that look like backbone weights but follow no known layout
    layout: str = "torchvision"  # convention.detect_file_convention's layouts
    meta: dict = field(default_factory=dict)  # top-level metadata: __author__, scratchdet's input_convention record


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


def _torchvision_name(name: str) -> str | None:
    """torchvision name of a torchvision-named key (torchvision's files, scratchdet's bodies): the key itself, or None
    for a key that is not a backbone weight."""
    if _BACKBONE_KEY.match(name) or name.startswith("fc."):
        return name
    # torchvision naming: anything else is not ours unless it merely lost its layout (renamed stages)
    return name if re.match(r"^[\w.]+\.(weight|bias|running_mean|running_var)$", name) else None


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
        elif name is not None:
            name = _torchvision_name(name)
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
