"""Pre-trained backbone weights: audit the match of a file with a ResNet body, then load.

The paper's pre-trained arm fine-tunes from ImageNet weights: GN models from GN-pre-trained weights (Detectron's
R-50-GN.pkl) and SyncBN models from BN-pre-trained ones, with the norm layers trained, not frozen (docs/PAPER.md,
"Normalization", "Initialization"). A silently partial load would make that arm look like a half-from-scratch run,
so every load is audited first: which of the body's tensors the file fills, which it lacks, and which it has extra;
below `min_coverage` nothing is loaded.

The file is read without running code from it (files.py) into torchvision names, which are also the names of our
ResNet body's state (names.py). What happens to BN statistics across norm types (the norm-mismatch policy, running
statistics synthesized for Detectron's BN-affine weights) is documented in docs/WEIGHTS.md.

Reading a file also tells the input convention and stride placement its network was trained with
(convention.py): from a record in the file, its run folder, or its layout (Caffe2 names, norm layers, groups).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from scratchdet.errors import CheckpointError
from scratchdet.weights.convention import (
    InputConvention,
    _file_convention,
    convention_mismatch,
    recorded_file_convention,
)
from scratchdet.weights.names import _NORM_KEY, _RUNNING_STATS, _read, _Source, _source_norm

TARGET_NORMS = ("GN", "BN", "FrozenBN", "SyncBN", "none")
NORM_MISMATCH_POLICIES = ("error", "skip_norm", "load_affine")

# Norm families: weights move freely within one. BN-affine is Detectron's AffineChannel (BN folded to scale/bias).
_SOURCE_FAMILY = {"BN": "BN", "BN-affine": "BN", "GN": "GN", "none": "none", "unknown": None}
_TARGET_FAMILY = {"BN": "BN", "FrozenBN": "BN", "SyncBN": "BN", "GN": "GN", "none": "none"}


@dataclass
class WeightReport:
    """What a pre-trained file gave the backbone; key lists use our (torchvision) names, sorted.

    Attributes:
        source_format: torchvision | scratchdet | detectron | moco | moco-v3 | dino | barlowtwins | swav | openmmlab |
            timm | transformers | safetensors (docs/WEIGHTS.md, "Accepted sources").
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
            (FileConvention.to_dict(): the model.* values, None when the file does not determine them, whether they
            are known or assumed, and why).
        checkpoint_key: the top-level entry of the file the network was taken from (teacher, state_dict, ...), None
            when the file is one state_dict.
        set_aside: parts of the file that are not the backbone by the rule of its layout (projection and prediction
            heads, key/momentum encoders, queues): why -> file keys. Also in `ignored`; never loaded or counted.
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
    checkpoint_key: str | None = None
    set_aside: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict of all fields (for the run folder's records)."""
        return asdict(self)

    def summary(self) -> str:
        """A few lines for the terminal."""
        network = f", network {self.checkpoint_key!r}" if self.checkpoint_key else ""
        lines = [
            f"pre-trained weights {self.path} ({self.source_format}{network}, norm {self.source_norm} -> "
            f"{self.target_norm}): {len(self.matched)} tensors loaded, coverage {self.coverage:.2%}",
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
        for why, keys in self.set_aside.items():
            lines.append(f"  set aside by rule, not loaded: {len(keys)} ({why}): {_first(keys, 3)}")
        if self.ignored:
            lines.append(f"  ignored (classifier, heads, metadata, norms dropped by the policy): {len(self.ignored)}")
        if self.input_convention:
            conv = recorded_file_convention(self.input_convention)
            how = "known" if self.input_convention["known"] else "ASSUMED" if conv else "NOT STATED"
            values = conv.describe() if conv else "the model.* keys decide"
            lines.append(f"  the file's input convention ({how}): {values}: {self.input_convention['origin']}")
        return "\n".join(lines)


def _first(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "") if keys else "none"


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
    # Imported here: modeling/ imports weights/ (the convention values), so weights/ imports nothing of it at load.
    from scratchdet.modeling.backbones import RESNET_SPECS

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
    checkpoint_key: str | None = None,
) -> WeightReport:
    """Loads pre-trained weights into a ResNet/ResNeXt body after auditing the match.

    Args:
        body: our ResNet, or a detector's `model.backbone.body` (same key names).
        path: a file of any accepted source (docs/WEIGHTS.md, "Accepted sources"): torchvision .pth, scratchdet
            checkpoint, Detectron .pkl, MoCo/DINO/SwAV/Barlow Twins/OpenMMLab checkpoint, timm or transformers
            model.safetensors / pytorch_model.bin (with its config.json beside it).
        target_norm: the body's normalization: GN | BN | FrozenBN | SyncBN | none.
        min_coverage: fraction of the body's state elements the file must fill; below it nothing is loaded.
        norm_mismatch: error | skip_norm | load_affine, for BN-family weights into GN or back (docs/WEIGHTS.md).
        input_convention: the convention the model feeds the body with (model_input_convention, in
            modeling/input_transform.py); given, a file whose known convention differs is refused before anything is
            loaded.
        checkpoint_key: the top-level entry holding the network, for files with several (teacher, student,
            state_dict_ema, ...).

    Returns:
        The audit; print `report.summary()`, store `report.to_dict()`.

    Raises:
        CheckpointError: unreadable or unsafe file, several networks and no checkpoint_key, norm mismatch under
            "error", coverage below min_coverage, or an input convention other than the file's (known) one.
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
    source = _read(path, checkpoint_key)
    file_convention = _file_convention(source, path)
    if input_convention is not None and file_convention.convention is not None:
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
                "building it: weights.initialization.resolve_input_convention, as `scratchdet "
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
        checkpoint_key=source.checkpoint_key,
        set_aside=source.set_aside,
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
        raise RuntimeError(f"weights/audit.py bug: unexpected keys {result.unexpected_keys[:5]}")
    return report
