"""Applies `init` to a freshly built detector and records what happened (issue 3, parts 3-4).

`init=scratch` loads nothing: the MSRA initialization of modeling/init.py stands, and the record says so.
`init=pretrained weights=PATH` loads the backbone from a published ImageNet file or a `scratchdet pretrain` run
through the audited loader (modeling/weights.py), with every other hyper-parameter unchanged: the controlled
comparison of the paper. The record also carries the samples the pre-training saw, so "pre-train + fine-tune"
totals can be set against "from scratch" (PAPER.md, "Sample accounting", Fig. 2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from scratchdet.config import Config
from scratchdet.engine.checkpoint import latest_checkpoint
from scratchdet.errors import CheckpointError
from scratchdet.modeling.vgg_weights import load_vgg16_weights
from scratchdet.modeling.weights import load_backbone_weights

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
        latest = latest_checkpoint(path / "checkpoints")
        if latest is None:
            raise CheckpointError(f"weights={weights} is a folder without checkpoints/last_checkpoint; name a file")
        return latest
    if not path.is_file():
        raise CheckpointError(f"weights={weights} does not exist; give a weight file or a run folder")
    return path


def initialize(model: nn.Module, cfg: Config) -> dict:
    """Loads cfg.weights into the backbone when init=pretrained; returns the record written to init.json."""
    if cfg.init == "scratch":
        if cfg.weights:
            raise CheckpointError(f"init=scratch must load nothing, but weights={cfg.weights} was given")
        return {"init": "scratch", "weights": None, "loaded_keys": 0, "pretrain_seen": dict(ZERO_SEEN)}
    path = resolve_weights(cfg.weights)
    if cfg.model.backbone == "vgg16":
        # No norm layers to reconcile; the ImageNet file also fills the box head's fc6/fc7 (original Faster R-CNN).
        report = load_vgg16_weights(model.backbone.body, path, box_head=model.roi_heads.box_head,
                                    min_coverage=cfg.pretrained.min_coverage)
    else:
        report = load_backbone_weights(
            model.backbone.body,
            path,
            target_norm=cfg.model.norm,
            min_coverage=cfg.pretrained.min_coverage,
            norm_mismatch=cfg.pretrained.norm_mismatch,
        )
    print(report.summary())
    return {
        "init": "pretrained",
        "weights": str(path),
        "loaded_keys": len(report.matched),
        "report": report.to_dict(),
        "pretrain_seen": pretrain_seen(path, report.source_format),
    }
