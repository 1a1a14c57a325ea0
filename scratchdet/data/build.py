"""From config to datasets and loaders: the one place that translates data.* keys into arguments
(docs/ARCHITECTURE.md, "Decisions worth knowing", Code style).

Also the training-only skip policy for unreadable images (data.skip_bad_images; docs/RELIABILITY.md, promise 8), a
wrapper around the training dataset so it applies to any dataset type and never to evaluation.
"""

from __future__ import annotations

import warnings

import torch
from torch.utils.data import DataLoader, Dataset

from scratchdet.config import Config
from scratchdet.data.coco import CocoDetection
from scratchdet.data.keypoints import KeypointCocoDetection
from scratchdet.data.samplers import TrainingBatchSampler, aspect_groups
from scratchdet.data.transforms import build_train_transform
from scratchdet.data.validate import check_same_categories
from scratchdet.data.voc import VocDetection
from scratchdet.errors import ConfigError, DataError


def _require(value: str | None, key: str) -> str:
    if not value:
        raise ConfigError(f"{key} is not set; give it, or data.root=DIR (a folder written by `scratchdet data synth`)")
    return value


def _voc_root(cfg: Config) -> str:
    root = cfg.data.voc_root or cfg.data.root
    if not root:
        raise ConfigError("data.format=voc needs data.voc_root=DIR (the folder holding VOC2007/, VOC2012/)")
    return root


class SkipUnreadableImages(Dataset):
    """A training dataset whose samples with a missing or undecodable image file are replaced, not fatal.

    The replacement for index i is the first readable image at i + 1, i + 2, ... (wrapping around), transformed
    with the sampler's seed for position i: a pure function of (seed, position) and the files, so a resumed run
    sees the same replacements. Every skip warns and is listed in the target as "skipped" (the trainer writes
    each to metrics.jsonl). Only unreadable files are skipped: a size that disagrees with the JSON, or a broken
    mask, is a data bug and still raises. Other attributes are those of the wrapped dataset.

    Args:
        dataset: a training dataset (train=True) that raises DataError with field "file_name" for a bad file.
        max_fraction: raise DataError once more than this fraction of its images turned out unreadable.
        check_files: look for missing files now, so a wrong image folder fails before training.

    Raises:
        ConfigError: dataset is an evaluation split, or max_fraction is outside [0, 1].
        DataError: more than max_fraction of the images are missing (now) or unreadable (when read).
    """

    def __init__(self, dataset: CocoDetection, max_fraction: float, check_files: bool = True):
        if not dataset.train:
            raise ConfigError("data.skip_bad_images applies to training only: evaluation must see every image")
        if not 0.0 <= max_fraction <= 1.0:
            raise ConfigError(f"data.max_skip_fraction={max_fraction} must be in [0, 1]")
        self.dataset = dataset
        self.max_fraction = max_fraction
        self.unreadable: dict[int, str] = {}  # image id -> error; per process (loader workers hold copies)
        missing = dataset.missing_files() if check_files else {}
        for image_id, path in missing.items():
            self._note(image_id, f"image file not found: {path}")
        if missing:
            warnings.warn(
                f"{len(missing)} of {len(dataset)} training image files are missing ({dataset.json_path}); "
                "data.skip_bad_images=true replaces them when sampled",
                stacklevel=2,
            )

    def __getattr__(self, name: str):
        if name == "dataset" or name.startswith("__"):  # not set yet (unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def _note(self, image_id: int, error: str) -> None:
        self.unreadable.setdefault(image_id, error)
        limit = self.max_fraction * len(self.dataset)
        if len(self.unreadable) > limit:
            first_id, first_error = next(iter(self.unreadable.items()))
            raise DataError(
                f"{len(self.unreadable)} of {len(self.dataset)} training images are unreadable, more than "
                f"data.max_skip_fraction={self.max_fraction} allows; first: {first_error}. Fix or remove these "
                "images (check data.train.images), or raise data.max_skip_fraction",
                path=self.dataset.json_path,
                image_id=first_id,
                field="file_name",
            )

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        index, sample_seed = key if isinstance(key, tuple) else (key, key)
        n = len(self.dataset)
        skipped: list[dict] = []
        for step in range(n):
            try:
                image, target = self.dataset[((index + step) % n, sample_seed)]
            except DataError as e:
                if e.field != "file_name":
                    raise
                self._note(e.image_id, str(e))
                skipped.append({"image_id": e.image_id, "error": str(e)})
                warnings.warn(f"skipped unreadable training image (data.skip_bad_images=true): {e}", stacklevel=2)
                continue
            target["skipped"] = skipped
            return image, target
        raise DataError(f"none of the {n} training images can be read", path=self.dataset.json_path)

    def record_skips(self, targets: list[dict]) -> list[dict]:
        """Counts a batch's skips run-wide in this (main-process) copy; returns one record per skip.

        Loader workers count in their own copies, so the max_fraction check over all workers happens here.

        Raises:
            DataError: more than max_fraction of the images are unreadable.
        """
        records = []
        for target in targets:
            for skip in target.get("skipped", ()):
                self._note(skip["image_id"], skip["error"])
                records.append(
                    {**skip, "replaced_by": int(target["image_id"]), "unreadable_images": len(self.unreadable)}
                )
        return records


def build_train_dataset(cfg: Config) -> CocoDetection | SkipUnreadableImages:
    """The training split: crowd excluded, images without usable annotations skipped, optional seeded subset.

    With data.skip_bad_images, wrapped in SkipUnreadableImages (missing files are then counted, not fatal).
    """
    d = cfg.data
    transform = build_train_transform(d.min_size_train, d.max_size_train, d.flip_prob)
    check_files = d.check_files and not d.skip_bad_images  # with the skip policy, missing files are counted instead
    if d.format == "voc":  # PASCAL VOC XML: boxes only, difficult objects excluded
        dataset = VocDetection(
            _voc_root(cfg),
            d.voc_train_sets,
            train=True,
            subset=d.train_subset,
            subset_seed=d.subset_seed,
            transform=transform,
            check_files=check_files,
            max_image_pixels=d.max_image_pixels,
        )
    elif cfg.model.arch == "keypoint_rcnn":  # one keypoint category, [N, K, 3] keypoint targets
        dataset = KeypointCocoDetection(
            _require(d.train.json, "data.train.json"),
            _require(d.train.images, "data.train.images"),
            train=True,
            keypoint_category=d.keypoint_category,
            keypoint_flip_map=d.keypoint_flip_map,
            kpt_oks_sigmas=cfg.eval.kpt_oks_sigmas,
            subset=d.train_subset,
            subset_seed=d.subset_seed,
            transform=transform,
            check_files=check_files,
            gt_area=d.gt_area,
            max_image_pixels=d.max_image_pixels,
        )
    else:
        dataset = CocoDetection(
            _require(d.train.json, "data.train.json"),
            _require(d.train.images, "data.train.images"),
            train=True,
            subset=d.train_subset,
            subset_seed=d.subset_seed,
            transform=transform,
            load_masks=cfg.model.arch == "mask_rcnn",
            check_files=check_files,
            gt_area=d.gt_area,
            max_image_pixels=d.max_image_pixels,
        )
    if d.skip_bad_images:
        return SkipUnreadableImages(dataset, d.max_skip_fraction, check_files=d.check_files)
    return dataset


def build_val_dataset(cfg: Config) -> CocoDetection:
    """The evaluation split: every image kept, original size (the model resizes to data.min_size_test).

    Never skips an image (data.skip_bad_images is for training only): an unreadable image raises DataError.
    """
    d = cfg.data
    if d.format == "voc":  # difficult objects kept, for the VOC evaluator to ignore
        return VocDetection(
            _voc_root(cfg), d.voc_val_sets, train=False, check_files=d.check_files, max_image_pixels=d.max_image_pixels
        )
    if cfg.model.arch == "keypoint_rcnn":  # evaluated on its keypoint category only (COCOeval catIds)
        return KeypointCocoDetection(
            _require(d.val.json, "data.val.json"),
            _require(d.val.images, "data.val.images"),
            train=False,
            keypoint_category=d.keypoint_category,
            keypoint_flip_map=d.keypoint_flip_map,
            kpt_oks_sigmas=cfg.eval.kpt_oks_sigmas,
            check_files=d.check_files,
            gt_area=d.gt_area,
            max_image_pixels=d.max_image_pixels,
        )
    return CocoDetection(
        _require(d.val.json, "data.val.json"),
        _require(d.val.images, "data.val.images"),
        train=False,
        load_masks=False,  # the metric reads the ground truth from the file, not from decoded masks
        check_files=d.check_files,
        # Mask AP rasterizes every ground-truth region: refuse unusable ones now, not at the first evaluation.
        segm_eval=cfg.model.arch == "mask_rcnn",
        gt_area=d.gt_area,
        max_image_pixels=d.max_image_pixels,
    )


def category_map(dataset) -> dict[int, str] | None:
    """A detection dataset's category id -> name over the classes the model predicts; None for formats whose
    classes are fixed by name (VOC)."""
    label_to_cat_id = getattr(dataset, "label_to_cat_id", None)
    coco = getattr(dataset, "coco", None)
    if label_to_cat_id is None or coco is None:
        return None
    return {int(cat_id): coco.cats[cat_id]["name"] for cat_id in label_to_cat_id.values()}


def check_categories(train_set, val_set) -> None:
    """Refuses a validation split whose categories differ from the training split's (DataError listing them).

    The model's label k is the k-th category of the training file, and evaluation writes label k with the
    validation file's id for k: the two maps must be one map, or a class is scored as another in silence.
    """
    train_map, val_map = category_map(train_set), category_map(val_set)
    if train_map is None or val_map is None:
        return
    check_same_categories(train_map, str(train_set.json_path), val_map, str(val_set.json_path))
    train_kps, val_kps = getattr(train_set, "keypoint_names", None), getattr(val_set, "keypoint_names", None)
    if train_kps is not None and val_kps is not None and tuple(train_kps) != tuple(val_kps):
        # Keypoint k of the model is keypoint k of the training file; OKS compares it with val's keypoint k.
        raise DataError(
            f"the keypoint names of {train_set.json_path} {list(train_kps)} and of "
            f"{val_set.json_path} {list(val_kps)} differ (names or order); give both files the same "
            "'keypoints' list",
            path=str(val_set.json_path),
            field="keypoints",
        )


def collate(batch: list) -> tuple[list, list]:
    """Keeps images of different sizes as a list; the model pads them into one tensor."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def build_train_loader(
    dataset: Dataset, cfg: Config, start_iter: int = 0, rank: int = 0, world_size: int = 1
) -> DataLoader:
    """An endless loader of this process's share (train.batch_size / world_size images) of every iteration's batch,
    starting at iteration `start_iter` of the stream (data/samplers.py: TrainingBatchSampler)."""
    groups = aspect_groups(dataset.image_sizes()) if cfg.data.aspect_ratio_grouping else None
    batches = TrainingBatchSampler(len(dataset), cfg.seed, cfg.train.batch_size, start_iter, rank, world_size, groups)
    workers = cfg.data.num_workers
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
        # Worker seeds come from this generator, not the global RNG, so resuming (which restores the global RNG
        # state) draws the same model-side random numbers as an uninterrupted run.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
