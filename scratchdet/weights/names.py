"""Name maps: a weight file's entries renamed from their source layout to our torchvision-style names.

Every file is read into one naming, torchvision's (conv1, bn1, layer1.0.downsample.1.weight, fc.weight), which is
also the name of our ResNet body's state (modeling/backbones.py). One function per source layout maps one key:
`_torchvision_name` for torchvision's and scratchdet's own names (a scratchdet detector checkpoint holds them under
backbone.body.), `_c2_name` for Detectron's Caffe2 blob names, `_d2_name` for Detectron2's (a detectron2 detector
holds them under backbone.bottom_up.), `_hf_name` for Hugging Face transformers' ResNet
(`resnet.encoder.stages.N.layers.M.layer.K.convolution.weight`). `_convert` recognizes the layout, strips the
wrapper prefixes (module. from DistributedDataParallel, a detector's body prefix), sets aside entries that are not
backbone weights, and tells the kind of norm layers the file's network had (`_source_norm`). A new layout is one
more name function, recognized in `_convert`.

Self-supervised and OpenMMLab checkpoints keep torchvision names under a prefix, beside parts that are not the
backbone (`_PREFIXED`): MoCo v1/v2 `encoder_q.` (moco/builder.py), MoCo v3 `base_encoder.` (moco-v3/moco/builder.py),
DINO, Barlow Twins and OpenMMLab `backbone.` (dino/utils.py MultiCropWrapper, barlowtwins/main.py,
mmpretrain/models/classifiers/image.py). Their projection and prediction heads, key/momentum encoders and queues are
set aside by rule (`_Source.set_aside`, reason -> keys): listed in the report, never loaded, never counted in coverage.

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
from scratchdet.weights.hub import HubConfig, read_hub_config

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
# Hugging Face transformers' ResNet (models/resnet/modeling_resnet.py): ResNetConvLayer = convolution + normalization;
# the stem is embedder.embedder, block M of stage N is encoder.stages.N.layers.M with layer.0..2 (bottleneck) or
# layer.0..1 (basic) and a shortcut where the width or stride changes. ResNetForImageClassification adds the
# "resnet." prefix and classifier.1 (a Linear after a Flatten).
_HF_STEM = re.compile(r"^embedder\.embedder\.(?P<part>convolution|normalization)\.(?P<field>\w+)$")
_HF_BLOCK = re.compile(
    r"^encoder\.stages\.(?P<stage>\d+)\.layers\.(?P<block>\d+)\."
    r"(?:layer\.(?P<conv>\d+)|(?P<shortcut>shortcut))\.(?P<part>convolution|normalization)\.(?P<field>\w+)$"
)
_HF_KEY = re.compile(r"^(resnet\.)?(embedder\.embedder|encoder\.stages)\.")

# Layouts holding torchvision names under a body prefix beside parts that are not the backbone:
# layout -> (body prefix, {prefix of another part: why it is set aside}, why the body's own fc.* is set aside).
_MOCO_FC = "projection head (MoCo replaces the ResNet's fc by it: v1 a linear layer, v2 an MLP)"
_PREFIXED = {
    "moco": (
        "encoder_q.",
        {
            "encoder_k.": "MoCo key encoder: the momentum copy of encoder_q; MoCo's own transfer takes encoder_q "
            "(moco/detection/convert-pretrain-to-detectron2.py)",
            "queue": "MoCo queue of negative keys",
        },
        _MOCO_FC,
    ),
    "moco-v3": (
        "base_encoder.",
        {
            "momentum_encoder.": "MoCo v3 momentum encoder: the EMA copy of base_encoder; MoCo v3's own transfer "
            "takes base_encoder (moco-v3/main_lincls.py)",
            "predictor.": "MoCo v3 prediction head",
        },
        "projection head (MoCo v3 replaces the ResNet's fc by an MLP)",
    ),
    "dino": ("backbone.", {"head.": "DINO projection head (DINOHead: mlp and weight-normalized last_layer)"}, None),
    "barlowtwins": (
        "backbone.",
        {"projector.": "Barlow Twins projector", "bn.": "Barlow Twins BN of the projector's output"},
        None,
    ),
    "openmmlab": ("backbone.", {}, None),
}
_OPENMMLAB_OTHER = "not the backbone: OpenMMLab loads a backbone from init_cfg prefix='backbone.' (neck, head, "
_OPENMMLAB_OTHER += "momentum encoder, queue, data preprocessor)"
_SWAV_PARTS = {"projection_head.": "SwAV projection head", "prototypes": "SwAV prototypes"}


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
    set_aside: dict[str, list[str]] = field(default_factory=dict)  # why -> file keys (heads, queues; also in ignored)
    checkpoint_key: str | None = None  # the top-level entry the network was taken from (files.unwrap)
    container: str = "torch"  # torch | safetensors | pickle
    hub: HubConfig = field(default_factory=HubConfig)  # config.json / preprocessor_config.json beside the file


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


def _hf_name(name: str) -> str | None:
    """torchvision name of a Hugging Face transformers ResNet key (with or without ResNetForImageClassification's
    "resnet." prefix). Returns "" for a backbone-looking key with no known place, None for a key that is not a
    backbone weight (the classifier aside, which maps to fc.* and is set aside later)."""
    if name.startswith("classifier.1."):
        return "fc." + name.rsplit(".", 1)[1]
    name = name.removeprefix("resnet.")
    stem = _HF_STEM.match(name)
    block = _HF_BLOCK.match(name)
    if stem:
        module = "conv1" if stem["part"] == "convolution" else "bn1"
        return f"{module}.{stem['field']}"
    if block:
        prefix = f"layer{int(block['stage']) + 1}.{int(block['block'])}."
        conv = "downsample.0" if block["shortcut"] else f"conv{int(block['conv']) + 1}"
        norm = "downsample.1" if block["shortcut"] else f"bn{int(block['conv']) + 1}"
        return prefix + (conv if block["part"] == "convolution" else norm) + "." + block["field"]
    return "" if name.startswith(("embedder.", "encoder.")) else None


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


def _prefixed_layout(names: list[str]) -> str | None:
    """Which _PREFIXED layout the (module.-stripped) names follow, if any.

    backbone.* is looked at first: mmselfsup 0.x registers its backbone twice, as backbone and as encoder_q.0, and
    backbone. is the prefix its own transfer loads (mmselfsup tools/model_converters/extract_backbone_weights.py).
    """
    if any(k.startswith("backbone.") and _BACKBONE_KEY.match(k[9:]) for k in names):
        if any(k.startswith("head.last_layer.") for k in names):
            return "dino"
        if any(k.startswith("projector.") for k in names):
            return "barlowtwins"
        return "openmmlab"
    if any(k.startswith("encoder_q.") for k in names):
        return "moco"
    if any(k.startswith("base_encoder.") for k in names):
        return "moco-v3"
    return None


def _layout(names: list[str], container: str, wrapper: str | None, hub: HubConfig) -> str:
    """The source layout of a file's (module.-stripped) entry names; see convention.detect_file_convention."""
    if any(k.startswith("backbone.body.") for k in names):
        return "scratchdet-detector"
    caffe2 = any(_C2_STEM.match(k) or _C2_BLOCK.match(k) for k in names)
    if any(k.startswith("backbone.bottom_up.") for k in names) and not caffe2:
        return "detectron2-detector"
    if caffe2:
        return "caffe2"
    if any(_D2_STEM.match(k) or _D2_BLOCK.match(k) for k in names):
        return "detectron2"
    if hub.kind == "transformers" or any(_HF_KEY.match(k) for k in names):
        return "transformers"
    prefixed = _prefixed_layout(names)
    if prefixed:
        return prefixed
    if any(k.startswith(tuple(_SWAV_PARTS)) for k in names):
        return "swav"
    if hub.kind == "timm":
        return "timm"
    if container == "safetensors":
        return "safetensors"
    return "scratchdet" if wrapper == "model" else "torchvision"


_FORMATS = {
    "scratchdet-detector": "scratchdet",
    "scratchdet": "scratchdet",
    "caffe2": "detectron",
    "detectron2": "detectron",
    "detectron2-detector": "detectron",
}


def _convert(
    entries: dict,
    container: str,
    wrapper: str | None,
    hub: HubConfig | None = None,
) -> _Source:
    """Renames a file's entries to torchvision names, separating non-backbone entries (ignored; those set aside by a
    layout's rule also under `set_aside`) from unknown ones (unexpected)."""
    hub = hub or HubConfig()
    entries = {str(k): v for k, v in entries.items()}
    entries = _strip_prefix(entries, "module.")  # saved from DistributedDataParallel
    tensors: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    set_aside: dict[str, list[str]] = collections.defaultdict(list)
    c2_kinds: set[str] = set()
    names = list(entries)
    layout = _layout(names, container, wrapper, hub)
    source_format = _FORMATS.get(layout, layout)
    if layout == "torchvision" and container == "pickle":
        source_format = "detectron"  # a plain pickle of torchvision names: a detectron2-era export
    prefixed = _PREFIXED.get(layout)

    for raw, value in entries.items():
        name: str | None = raw
        if raw.endswith("num_batches_tracked"):  # BN's step counter: not a weight, and no target keeps it
            ignored.append(raw)
            continue
        if layout in ("scratchdet-detector", "detectron2-detector"):
            prefix = "backbone.body." if layout == "scratchdet-detector" else "backbone.bottom_up."
            name = raw[len(prefix) :] if raw.startswith(prefix) else None  # FPN, RPN, RoI heads: not the body
        elif prefixed:
            body, parts, fc_reason = prefixed
            if raw.startswith(body):
                name = raw[len(body) :]
                if fc_reason and name.startswith("fc."):
                    set_aside[fc_reason].append(raw)
                    ignored.append(raw)
                    continue
            else:
                why = next((r for p, r in parts.items() if raw.startswith(p)), None)
                if why is None and layout == "openmmlab":
                    why = _OPENMMLAB_OTHER
                if why is not None:
                    set_aside[why].append(raw)
                    ignored.append(raw)
                    continue
                name = None
        elif layout == "swav":
            why = next((r for p, r in _SWAV_PARTS.items() if raw.startswith(p)), None)
            if why is not None:
                set_aside[why].append(raw)
                ignored.append(raw)
                continue
        if name is not None and layout == "caffe2":
            c2 = _c2_name(name)
            suffix = name.rsplit("_", 2)
            if c2 and len(suffix) == 3 and suffix[1] in ("bn", "gn"):
                c2_kinds.add(suffix[1])
            name = c2
        elif name is not None and layout in ("detectron2", "detectron2-detector"):
            name = _d2_name(name)
        elif name is not None and layout == "transformers":
            name = _hf_name(name)
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
    return _Source(
        tensors,
        source_format,
        _source_norm(tensors, c2_kinds),
        sorted(ignored),
        sorted(unexpected),
        layout,
        set_aside={k: sorted(v) for k, v in set_aside.items()},
        container=container,
        hub=hub,
    )


def _read(path: Path, checkpoint_key: str | None = None) -> _Source:
    obj, container = read_object(path)
    entries, wrapper = unwrap(obj, path, checkpoint_key)
    top_level = obj if isinstance(obj, Mapping) else {}
    source = _convert(entries, container, wrapper, read_hub_config(path))
    source.checkpoint_key = wrapper
    source.meta = {k: top_level[k] for k in _META_KEYS if k in top_level}
    if isinstance(top_level.get("meta"), Mapping):  # mmengine / mmcv checkpoints: meta.cfg or meta.config
        source.meta["openmmlab_meta"] = dict(top_level["meta"])
    return source


def read_weight_file(path: str | Path, checkpoint_key: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Reads a weight file of any accepted source (docs/WEIGHTS.md, "Accepted sources") into torchvision names.

    Non-weight entries (SGD momenta, metadata, detection heads of a detector checkpoint) are left out; the
    classifier is kept as fc.weight / fc.bias.

    Args:
        checkpoint_key: the top-level entry holding the network, for files with several (pretrained.checkpoint_key).

    Returns:
        ({torchvision-style key: tensor}, source_format), source_format being torchvision | scratchdet | detectron |
        moco | moco-v3 | dino | barlowtwins | openmmlab | swav | timm | transformers | safetensors.

    Raises:
        CheckpointError: the file is missing, unreadable, holds anything but plain weights, or several networks and
            no checkpoint_key.
    """
    source = _read(Path(path), checkpoint_key)
    return source.tensors, source.source_format
