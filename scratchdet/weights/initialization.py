"""Applies `init` to a freshly built detector and records what happened (docs/RELIABILITY.md, promise 5).

`init=scratch` loads nothing: the MSRA initialization of modeling/init.py stands, and the record says so.
`init=pretrained weights=PATH` loads the backbone from a published ImageNet file or a `scratchdet pretrain` run
through the audited loader (audit.py), with every other hyper-parameter unchanged: the controlled
comparison of the paper. The record also carries the samples the pre-training saw, so "pre-train + fine-tune"
totals can be set against "from scratch" (docs/PAPER.md, "Sample accounting (Fig. 2)").

Input conventions (convention.py): a pre-trained network must be fed as it was trained, and its
stride placement changes the network that is built, so `resolve_input_convention(cfg)` runs before the detector is
built (the trainer calls it first): it fills the unset model.input_format / pixel_scale / pixel_mean / pixel_std /
stride_in_1x1 keys from the weight file (init=pretrained) or with torchvision's convention (init=scratch), and
refuses explicit values that conflict with a file whose convention is known. `initialize` checks the built model
against the file again and records the convention and its source in init.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import yaml
from torch import nn

from scratchdet.config import Config, validate_input_convention
from scratchdet.engine.checkpoint import latest_checkpoint
from scratchdet.errors import CheckpointError, ConfigError
from scratchdet.run_folder import RunFolder
from scratchdet.weights.audit import load_backbone_weights
from scratchdet.weights.convention import (
    CONVENTION_KEYS,
    DETECTRON_FAIR,
    PIXEL_KEYS,
    TORCHVISION,
    FileConvention,
    InputConvention,
    convention_mismatch,
    read_weight_convention,
    recorded_file_convention,
)
from scratchdet.weights.vgg import load_vgg16_weights

ZERO_SEEN = {"images": 0, "instances": 0, "pixels": 0}

# Published ImageNet-1k weights come without their counts; the standard recipe gives them: 1,281,167 images x 100
# epochs at 224x224 crops, one labelled object per image. Marked as an estimate wherever it is reported.
IMAGENET_IMAGES = 1_281_167
IMAGENET_RECIPE_SEEN = {
    "images": IMAGENET_IMAGES * 100,
    "instances": IMAGENET_IMAGES * 100,
    "pixels": IMAGENET_IMAGES * 100 * 224 * 224,
    "estimate": "ImageNet-1k recipe: 1,281,167 images x 100 epochs at 224x224 (published weights carry no counts)",
}


def pretrain_seen(path: str | Path, source_format: str) -> dict:
    """Samples seen by the pre-training that produced `path`: recorded counts for our own runs, else the recipe."""
    if source_format != "scratchdet":
        return dict(IMAGENET_RECIPE_SEEN)
    state = torch.load(path, map_location="cpu", weights_only=True)
    seen = dict(state.get("seen") or ZERO_SEEN)
    # A detection checkpoint used as weights carries its own pre-training counts too: add them up.
    earlier = state.get("pretrain_seen") or {}
    return {k: int(seen.get(k, 0)) + int(earlier.get(k, 0)) for k in ZERO_SEEN}


def resolve_weights(weights: str | Path) -> Path:
    """`weights` may name a file, or a run folder (pre-training or detection), meaning its latest checkpoint."""
    path = Path(weights)
    if path.is_dir():
        latest = latest_checkpoint(RunFolder(path).checkpoints)
        if latest is None:
            raise CheckpointError(f"weights={weights} is a folder without checkpoints/last_checkpoint; name a file")
        return latest
    if not path.is_file():
        raise CheckpointError(f"weights={weights} does not exist; give a weight file or a run folder")
    return path


def _saved_convention(cfg: Config) -> InputConvention | None:
    """The convention in the config.yaml of the run being resumed (keys it lacks: torchvision's, the only one
    scratchdet had before recording them), or None when there is nothing to resume."""
    saved = RunFolder(cfg.output).config
    if not (cfg.resume and saved.is_file()):
        return None
    model = (yaml.safe_load(saved.read_text()) or {}).get("model") or {}
    return InputConvention.from_values(model)


def apply_input_convention(
    cfg: Config, base: InputConvention, file: FileConvention | None = None, path: str | Path | None = None
) -> dict:
    """Fills cfg.model's unset convention keys from `base` (in place); returns where each value came from.

    Args:
        base: the values unset keys take (the file's, torchvision's, or a resumed run's).
        file: the weight file's convention, when a file is loaded: explicit keys must agree with it if it is known.
        path: the weight file, for messages.

    Raises:
        ConfigError: explicit keys that conflict with a known file convention, or values invalid for the model
            (e.g. stride_in_1x1 for a basic-block ResNet).
    """
    m = cfg.model
    given = [k for k in CONVENTION_KEYS if getattr(m, k) is not None]
    # The four pixel keys describe one map (order, scale, then mean and std in those units), so a partly given set is
    # completed from `base` and checked against the file as a whole: e.g. pixel_scale=1.0 alone with a 0..255 file
    # mean is refused, while torchvision's 0..1 values given for a file written in 0..255 units are accepted.
    used = InputConvention.from_values({k: getattr(m, k) for k in given}, default=base)
    if file is not None:
        problem = convention_mismatch(used, file, path, given_keys=given)
        if problem:
            raise ConfigError(problem)
    given_pixels = [k for k in PIXEL_KEYS if k in given]
    if given_pixels and len(given_pixels) < len(PIXEL_KEYS) and not used.same_pixels(base):
        # e.g. input_format=BGR alone would apply an RGB-ordered mean to BGR channels, pixel_scale=255 alone a
        # 0..1 mean to 0..255 pixels: the completed set would not be the map the user meant.
        missing = [f"model.{k}" for k in PIXEL_KEYS if k not in given]
        raise ConfigError(
            f"{', '.join(f'model.{k}' for k in given_pixels)} given without {', '.join(missing)}: the four keys "
            f"describe one pixel map (channel order, scale, then mean and std in that order and those units), and "
            f"completing it with {base.describe()} would mix conventions; give all four, e.g. "
            + " ".join(DETECTRON_FAIR.overrides()[:4])
            + " (Detectron's)"
        )
    if "stride_in_1x1" not in given and used.stride_in_1x1 and (m.backbone != "resnet" or m.depth < 50):
        # A bottleneck file's placement means nothing to a basic-block body; the weight audit then says the file
        # does not fit this depth, which is the real problem.
        used = dataclasses.replace(used, stride_in_1x1=False)
    for key, value in used.to_dict().items():
        setattr(m, key, value)
    validate_input_convention(m)
    return {k: "config" if k in given else "default" for k in CONVENTION_KEYS}


def resolve_input_convention(cfg: Config) -> dict:
    """Fills the unset model.* convention keys of `cfg` in place, before the detector is built; returns a record.

    init=pretrained: the weight file's convention (read from the file: its layout, a recorded one, the config files
    beside it, or the run folder of a scratchdet file); a file whose layout does not determine it (a bare
    safetensors file, an OpenMMLab checkpoint without its config, ...) needs all five keys given. init=scratch:
    torchvision's; a resumed run: its saved config's.

    Returns:
        {model key: value, ..., "source": {key: where it came from}, "weights_file": the file's convention or None}.

    Raises:
        ConfigError: an explicit key conflicts with a file whose convention is known (the message names the key,
            the value given and what the file needs), or the file does not determine its convention and the keys
            are not all given (the message names the missing ones).
        CheckpointError: the weight file is missing, unreadable, or holds several networks and no
            pretrained.checkpoint_key.
    """
    saved = _saved_convention(cfg)
    file, path = None, None
    if saved is not None:
        base, origin = saved, "the resumed run's config.yaml"
    elif cfg.init == "pretrained" and cfg.weights:
        path = resolve_weights(cfg.weights)
        file = read_weight_convention(path, cfg.pretrained.checkpoint_key)
        if file.convention is None:
            missing = [f"model.{k}" for k in CONVENTION_KEYS if getattr(cfg.model, k) is None]
            if missing:
                raise ConfigError(
                    f"the input convention of weights={path} is not determined by the file ({file.origin}); set "
                    f"{', '.join(missing)} to the values its network was trained with (e.g. torchvision's: "
                    + " ".join(TORCHVISION.overrides())
                    + ")"
                )
            base = InputConvention.from_values({k: getattr(cfg.model, k) for k in CONVENTION_KEYS})
        else:
            base = file.convention
        origin = f"weights file {path.name}"
    else:
        base, origin = TORCHVISION, "torchvision's convention (the default without a weight file)"
    source = apply_input_convention(cfg, base, file, path)
    return {
        **{k: getattr(cfg.model, k) for k in CONVENTION_KEYS},
        "source": {k: origin if v == "default" else "config" for k, v in source.items()},
        "weights_file": file.to_dict() if file else None,
    }


def convention_record(used: InputConvention, file: dict | None) -> dict:
    """init.json's account of the convention the model ran with, and where it came from."""
    if file is None:
        source = (
            "torchvision's convention (the default without a weight file)"
            if used.same_network(TORCHVISION)
            else "config (model.* keys)"
        )
    elif recorded_file_convention(file) is None:
        source = "config (model.* keys): the weights file does not state its convention (see weights_file)"
    elif used.same_network(recorded_file_convention(file)):
        source = "weights file" + ("" if file["known"] else " (assumed: the file does not say; see weights_file)")
    else:
        source = "config (model.* keys), overriding the weights file's assumed convention"
    return {**used.to_dict(), "source": source, "weights_file": file}


def initialize(model: nn.Module, cfg: Config) -> dict:
    """Loads cfg.weights into the backbone when init=pretrained; returns the record written to init.json.

    Raises:
        CheckpointError: unreadable or unsafe file, failed audit, or a model built for another input convention
            than the file's (known) one.
    """
    # Imported here: modeling/ imports weights/ (the convention values), so weights/ imports nothing of it at load.
    from scratchdet.modeling.input_transform import model_input_convention

    used = model_input_convention(model)
    if cfg.init == "scratch":
        if cfg.weights:
            raise CheckpointError(f"init=scratch must load nothing, but weights={cfg.weights} was given")
        return {
            "init": "scratch",
            "weights": None,
            "loaded_keys": 0,
            "pretrain_seen": dict(ZERO_SEEN),
            "input_convention": convention_record(used, None),
        }
    path = resolve_weights(cfg.weights)
    if cfg.model.backbone == "vgg16":
        # No norm layers to reconcile; the ImageNet file also fills the box head's fc6/fc7 (original Faster R-CNN).
        report = load_vgg16_weights(
            model.backbone.body,
            path,
            box_head=model.roi_heads.box_head,
            min_coverage=cfg.pretrained.min_coverage,
            input_convention=used,
            checkpoint_key=cfg.pretrained.checkpoint_key,
        )
    else:
        report = load_backbone_weights(
            model.backbone.body,
            path,
            target_norm=cfg.model.norm,
            min_coverage=cfg.pretrained.min_coverage,
            norm_mismatch=cfg.pretrained.norm_mismatch,
            input_convention=used,
            checkpoint_key=cfg.pretrained.checkpoint_key,
        )
    print(report.summary())
    file_convention = recorded_file_convention(report.input_convention)
    if file_convention is not None and not used.same_network(file_convention):
        print(f"  the model runs with the config's convention instead: {used.describe()}")
    return {
        "init": "pretrained",
        "weights": str(path),
        "loaded_keys": len(report.matched),
        "report": report.to_dict(),
        "pretrain_seen": pretrain_seen(path, report.source_format),
        "input_convention": convention_record(used, report.input_convention),
    }
