"""From config to datasets and loaders: the one place that translates data.* keys into arguments (style rule 2)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from scratchdet.config import Config
from scratchdet.data.coco import CocoDetection
from scratchdet.data.samplers import TrainingSampler
from scratchdet.data.transforms import build_train_transform
from scratchdet.errors import ConfigError


def _require(value: str | None, key: str) -> str:
    if not value:
        raise ConfigError(f"{key} is not set; give it, or data.root=DIR (a folder written by `scratchdet data synth`)")
    return value


def build_train_dataset(cfg: Config) -> CocoDetection:
    """The training split: crowd excluded, images without usable annotations skipped, optional seeded subset."""
    d = cfg.data
    return CocoDetection(
        _require(d.train.json, "data.train.json"),
        _require(d.train.images, "data.train.images"),
        train=True,
        subset=d.train_subset,
        subset_seed=d.subset_seed,
        transform=build_train_transform(d.min_size_train, d.max_size_train, d.flip_prob),
        load_masks=cfg.model.arch == "mask_rcnn",
        check_files=d.check_files,
    )


def build_val_dataset(cfg: Config) -> CocoDetection:
    """The evaluation split: every image kept, original size (the model resizes to data.min_size_test)."""
    d = cfg.data
    return CocoDetection(
        _require(d.val.json, "data.val.json"),
        _require(d.val.images, "data.val.images"),
        train=False,
        load_masks=False,
        check_files=d.check_files,
    )


def collate(batch: list) -> tuple[list, list]:
    """Keeps images of different sizes as a list; the model pads them into one tensor."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def build_train_loader(dataset: CocoDetection, cfg: Config, start_iter: int = 0) -> DataLoader:
    """An endless loader of `train.batch_size` images per step, starting at iteration `start_iter` of the stream."""
    batch = cfg.train.batch_size
    sampler = TrainingSampler(len(dataset), cfg.seed, start=start_iter * batch)
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        # Worker seeds come from this generator, not the global RNG, so resuming (which restores the global RNG
        # state) draws the same model-side random numbers as an uninterrupted run.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
