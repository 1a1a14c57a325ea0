"""ImageNet VGG-16 weights into the VGG-16 Faster R-CNN: conv1_1..conv5_3 and the box head's fc6/fc7.

The paper's pre-trained VGG-16 arm fine-tunes from ImageNet weights, and the original Faster R-CNN initializes not
only the convolutions but also fc6/fc7 from VGG-16's first two classifier layers; only fc8 (the 1000-way ImageNet
classifier) is left behind. This module does the same, with the ResNet audit (audit.py): nothing is loaded when the file
fills less than `min_coverage` of the body, and the report lists what was matched, missing, unexpected or ignored.

Every file is read into torchvision's vgg16 naming, which is also what the report lists:
- body: `features.N.{weight,bias}` = our `VGG16Backbone.body` key `N.*` (the body mirrors `vgg16().features[:30]`);
- fc6 / fc7: `classifier.0.*` (4096 x 25088) / `classifier.3.*` (4096 x 4096) = `roi_heads.box_head.fc6.*` / `fc7.*`;
  they load only when the head has those shapes (full width and model.vgg_fc_dim=4096), else they are reported as
  shape-mismatched and keep their initialization;
- fc8: `classifier.6.*`, ignored (reported).
Coverage counts the body only: fc6/fc7 are 88% of VGG-16's parameters, and a narrower head (vgg_fc_dim != 4096) is a
legitimate choice that should not make the backbone import fail.

Files are read with files.py's safe readers (torch.load(weights_only=True), or the numpy-only unpickler). Caffe
VGG-16 pickles (Detectron's VGG16.pkl, conv1_1_w naming) are refused with an explanation: they expect BGR inputs in
0..255 minus a mean pixel, while scratchdet feeds RGB in 0..1 normalized with torchvision's ImageNet mean/std
(docs/WEIGHTS.md), so loading them unchanged would silently mis-scale every image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from scratchdet.errors import CheckpointError
from scratchdet.weights.audit import WeightReport, _first, compare_by_name
from scratchdet.weights.convention import InputConvention, convention_mismatch, detect_file_convention
from scratchdet.weights.files import _META_KEYS, as_tensor, read_object, unwrap
from scratchdet.weights.names import _strip_prefix

VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
BODY_PREFIX = "features."
# torchvision vgg16().classifier indices of our TwoMLPHead layers (1, 4 are ReLU; 2, 5 Dropout; 6 is fc8).
HEAD_LAYERS = {"classifier.0": "fc6", "classifier.3": "fc7"}
FC8_PREFIX = "classifier.6."
# A scratchdet VGG detector checkpoint: the body under backbone.body., the head under roi_heads.box_head.
_DETECTOR_BODY = "backbone.body."
_DETECTOR_HEAD = {f"roi_heads.box_head.{fc}.": f"{src}." for src, fc in HEAD_LAYERS.items()}
# Caffe / Detectron VGG-16 blob names: conv1_1_w .. conv5_3_b, fc6_w .. fc8_b.
_CAFFE_VGG = re.compile(r"^(conv\d_\d|fc[678])_[wb]$")
_RESNET_KEY = re.compile(r"^(conv1|bn1|layer\d+)\.|^res\d|^(res_)?conv1_")
_WEIGHT_NAME = re.compile(r"^[\w.]+\.(weight|bias|running_mean|running_var)$")


def _convert(entries: dict, wrapper: str | None, path: Path) -> tuple[dict[str, torch.Tensor], str, list, list]:
    """Renames a file's entries to torchvision vgg16 names.

    Returns:
        (tensors, source_format, ignored, unexpected): ignored are non-weights, fc8 and detector parts other than
        body/fc6/fc7; unexpected are weight-looking entries with no place in VGG-16 (e.g. a ResNet's).
    """
    entries = _strip_prefix({str(k): v for k, v in entries.items()}, "module.")  # saved from DistributedDataParallel
    caffe = sorted(k for k in entries if _CAFFE_VGG.match(k))
    if caffe:
        raise CheckpointError(
            f"{path} is a Caffe VGG-16 file (Detectron naming: {_first(caffe, 3)}), which is not supported: its "
            "weights expect BGR images in 0..255 minus a mean pixel, while scratchdet feeds RGB in 0..1 normalized "
            f"with the ImageNet mean/std. Use torchvision's ImageNet VGG-16 instead: {VGG16_URL} (docs/WEIGHTS.md)"
        )
    detector = any(k.startswith(_DETECTOR_BODY) for k in entries)
    source_format = "scratchdet" if detector or wrapper == "model" else "torchvision"
    tensors: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for raw, value in entries.items():
        name: str | None = raw
        if detector:
            if raw.startswith(_DETECTOR_BODY):
                name = BODY_PREFIX + raw[len(_DETECTOR_BODY) :]
            else:
                head = next((p for p in _DETECTOR_HEAD if raw.startswith(p)), None)
                # RPN and box predictor are trained for another dataset's classes: not part of the import.
                name = _DETECTOR_HEAD[head] + raw[len(head) :] if head else None
        elif raw.startswith(FC8_PREFIX) or not _WEIGHT_NAME.match(raw):
            name = None  # fc8 (the 1000 ImageNet classes) and metadata
        tensor = as_tensor(value)
        if name is None or tensor is None or raw.endswith("num_batches_tracked"):
            ignored.append(raw)
        elif name.startswith(BODY_PREFIX) or name.rsplit(".", 1)[0] in HEAD_LAYERS:
            tensors[name] = tensor
        else:
            unexpected.append(raw)
    return tensors, source_format, sorted(ignored), sorted(unexpected)


def read_vgg16_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str, list[str], list[str]]:
    """Reads a torchvision vgg16 .pth or a scratchdet VGG detector checkpoint into torchvision vgg16 names.

    Returns:
        (tensors, source_format, ignored, unexpected), source_format being torchvision | scratchdet.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or a Caffe VGG-16 pickle.
    """
    path = Path(path)
    obj, _ = read_object(path)
    entries, wrapper = unwrap(obj, path)
    return _convert(entries, wrapper, path)


def vgg16_targets(body: nn.Module, box_head: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The tensors an import fills, in torchvision vgg16 names; the values share storage with the modules."""
    target = {BODY_PREFIX + k: v for k, v in body.state_dict().items()}
    for src, attr in HEAD_LAYERS.items():
        layer = getattr(box_head, attr, None) if box_head is not None else None
        if isinstance(layer, nn.Linear):
            target.update({f"{src}.{k}": v for k, v in layer.state_dict().items()})
    return target


def audit_vgg16(tensors: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict:
    """Compares file tensors with the targets by name and shape only (so it also works on meta tensors).

    Returns:
        {"matched", "missing", "shape_mismatched", "unexpected"} as sorted name lists, and "coverage": matched
        elements of the body (features.*) / all body elements.
    """
    matched, missing, mismatched = compare_by_name(tensors, target)
    body = [k for k in target if k.startswith(BODY_PREFIX)]
    total = sum(target[k].numel() for k in body)
    loaded = sum(target[k].numel() for k in matched if k.startswith(BODY_PREFIX))
    return {
        "matched": sorted(matched),
        "missing": sorted(missing),
        "shape_mismatched": sorted(mismatched),
        "unexpected": sorted(k for k in tensors if k not in target),
        "coverage": loaded / total if total else 0.0,
    }


def _hint(keys: list[str]) -> str:
    """What the file most likely is, when it is not a VGG-16 one."""
    if any(_RESNET_KEY.match(k) for k in keys):
        return " It looks like a ResNet file (conv1/bn1/layerN keys); a model.backbone=vgg16 run needs VGG-16 weights."
    if any(k.startswith(BODY_PREFIX) and k.endswith("running_mean") for k in keys):
        return (
            " It looks like torchvision's vgg16_bn (BatchNorm after every conv), whose layer indices differ; the "
            "paper's VGG-16 has no normalization: use vgg16-397923af.pth."
        )
    return ""


def load_vgg16_weights(
    body: nn.Module,
    path: str | Path,
    *,
    box_head: nn.Module | None = None,
    min_coverage: float = 0.99,
    input_convention: InputConvention | None = None,
    checkpoint_key: str | None = None,
) -> WeightReport:
    """Loads ImageNet VGG-16 weights into a VGG16Backbone body, and fc6/fc7 into `box_head` where shapes match.

    Args:
        body: `VGG16Backbone.body` (a detector's `model.backbone.body`).
        path: torchvision vgg16 .pth (e.g. vgg16-397923af.pth; also {"state_dict": ...} or a DDP "module." prefix),
            or a scratchdet checkpoint of a VGG-16 detector.
        box_head: the detector's TwoMLPHead (`model.roi_heads.box_head`); None loads the body only.
        min_coverage: fraction of the body's elements the file must fill; below it nothing is loaded.
        input_convention: the model's input convention; given, a file whose known convention differs is refused
            (a scratchdet VGG run records its own in its config.yaml; torchvision's file is RGB 0..1, ImageNet
            mean/std).
        checkpoint_key: the top-level entry holding the network, for files with several (files.unwrap).

    Returns:
        The audit (torchvision vgg16 names); coverage is of the body only.

    Raises:
        CheckpointError: unreadable, unsafe or Caffe file, body coverage below min_coverage, or another input
            convention than the file's.
    """
    path = Path(path)
    obj, _ = read_object(path)
    entries, wrapper = unwrap(obj, path, checkpoint_key)
    tensors, source_format, ignored, unexpected = _convert(entries, wrapper, path)
    detector = any(str(k).removeprefix("module.").startswith(_DETECTOR_BODY) for k in entries)
    meta = {k: obj[k] for k in _META_KEYS if k in obj} if isinstance(obj, Mapping) else {}
    file_convention = detect_file_convention(
        path, layout="scratchdet-detector" if detector else source_format, source_norm="none", grouped=False, meta=meta
    )
    problem = input_convention and convention_mismatch(
        input_convention, file_convention, path, what=f"the model built for {path.name}"
    )
    if problem:
        raise CheckpointError(problem)
    target = vgg16_targets(body, box_head)
    audit = audit_vgg16(tensors, target)
    report = WeightReport(
        path=str(path),
        source_format=source_format,
        source_norm="none",  # VGG-16 has no normalization layers, neither in the file nor in the model
        target_norm="none",
        matched=audit["matched"],
        missing=audit["missing"],
        unexpected=sorted(audit["unexpected"] + unexpected),
        shape_mismatched=audit["shape_mismatched"],
        ignored=ignored,
        coverage=audit["coverage"],
        input_convention=file_convention.to_dict(),
    )
    if report.coverage < min_coverage:
        shapes = [
            f"{k} (file {list(tensors[k].shape)} vs model {list(target[k].shape)})" for k in report.shape_mismatched
        ]
        minimum = f"{round(min_coverage * 100, 3):g}%"
        raise CheckpointError(
            f"{path} covers only {report.coverage:.1%} of the VGG-16 backbone (min {minimum}): "
            f"first missing keys: {_first(report.missing)}; first unexpected: {_first(report.unexpected)}; "
            f"first shape mismatches: {_first(shapes)}; expected torchvision's vgg16 layout (features.N.weight, "
            f"classifier.0/3 for fc6/fc7) at the model's width, e.g. {VGG16_URL}.{_hint(report.unexpected)}"
        )
    with torch.no_grad():
        for key in report.matched:
            target[key].copy_(tensors[key])  # state_dict() values share storage with the parameters
    return report
