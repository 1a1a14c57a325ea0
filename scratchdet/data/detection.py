"""What every detection dataset (COCO, keypoints, VOC) shares once its annotation files are parsed.

A subclass parses its format and fills `image_ids` (through `select_subset`); this base turns that into samples:
indexing by int or `(index, sample_seed)` (the sampler alone decides the augmentation, so resume is exact), reading
the image through the one reader (data/images.py) with its size checked against the annotation, the transform, and
the file checks. Subclasses give the per-image facts: `image_file`, `annotated_size`, `image_where` and
`_target`.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from scratchdet.data.images import ImageTooLargeError, read_image, too_large_message
from scratchdet.errors import ConfigError, DataError

# transform(image, target, rng) -> (image, target); see scratchdet/data/transforms.py.
Transform = Callable[[torch.Tensor, dict, random.Random], tuple[torch.Tensor, dict]]


def is_int(value: Any) -> bool:
    """An int that is not a bool: `true` is never a valid id, size or count in an annotation file."""
    return isinstance(value, int) and not isinstance(value, bool)


def sample_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """(index, sample_seed) of a dataset key: an index (the seed defaults to it) or an `(index, sample_seed)` pair."""
    if isinstance(key, tuple):
        return operator.index(key[0]), operator.index(key[1])
    index = operator.index(key)
    return index, index


@dataclass
class SummaryCounts:
    """The counts every detection format's loading summary has (coco.DatasetSummary, voc.VocSummary add their own):
    images and objects in the file, what training uses, and what was clipped or dropped."""

    path: str
    images_total: int = 0
    images_used: int = 0
    images_without_annotations: int = 0  # skipped for training only; evaluation keeps every image
    annotations_total: int = 0
    annotations_used: int = 0
    boxes_clipped: int = 0
    degenerate_boxes_dropped: int = 0
    subset: int | None = None

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict of all counts."""
        return asdict(self)


class DetectionDataset(torch.utils.data.Dataset):
    """Base of the detection datasets. Subclasses set `json_path` (what messages name), `train`, `transform` and
    `image_ids`, and implement `image_file`, `annotated_size`, `image_where` and `_target`."""

    json_path: str
    train: bool
    transform: Transform | None
    image_ids: list[int]
    max_image_pixels: int | None = None  # data.max_image_pixels; None = Pillow's limit (data/images.py)

    # --- per image, from the subclass ---------------------------------------------------------------------------

    def image_file(self, image_id: int) -> Path:
        """The image file of `image_id`."""
        raise NotImplementedError

    def annotated_size(self, image_id: int) -> tuple[int, int]:
        """(width, height) the annotation gives for `image_id`."""
        raise NotImplementedError

    def image_where(self, image_id: int) -> dict:
        """DataError context of `image_id`: the annotation file and the id to name."""
        return {"path": self.json_path, "image_id": image_id}

    def _target(self, image_id: int, image: torch.Tensor) -> dict:
        """The target of `image_id` before the transform ("boxes", "labels", ...), for its decoded image."""
        raise NotImplementedError

    # --- shared -----------------------------------------------------------------------------------------------

    def select_subset(self, candidates: list[int], subset: int | None, seed: int) -> list[int]:
        """`subset` images of `candidates` (sorted), or all of them for None.

        One fixed permutation per seed, truncated: the first 1k images are also the first 1k of any larger subset
        (the paper's nested 1k / 3.5k / 10k / 35k COCO subsets, Figs. 7-8).

        Raises:
            ConfigError: subset < 1. DataError: more images requested than available.
        """
        if subset is None:
            return candidates
        if not is_int(subset) or subset < 1:
            raise ConfigError(f"subset must be a positive number of images or None, got {subset!r}")
        if subset > len(candidates):
            usable = "usable (annotated) " if self.train else ""
            n = len(candidates)
            msg = f"subset of {subset} images requested but only {n} {usable}images are available; lower it to <= {n}"
            raise DataError(msg, path=self.json_path, field="subset")
        order = list(candidates)
        random.Random(seed).shuffle(order)
        return sorted(order[:subset])

    def missing_files(self) -> dict[int, Path]:
        """The yielded images whose file does not exist: image id -> expected path."""
        return {i: path for i in self.image_ids if not (path := self.image_file(i)).is_file()}

    def check_files(self, hint: str) -> None:
        """Raises DataError naming the first missing image file and how many are missing; `hint` says where to look."""
        missing = self.missing_files()
        if missing:
            first = next(iter(missing))
            raise DataError(
                f"image file not found: {missing[first]} ({len(missing)} of {len(self.image_ids)} "
                f"image files are missing); {hint}",
                field="file_name",
                **self.image_where(first),
            )

    def check_pixel_limit(self) -> None:
        """Refuses, before training, yielded images whose annotated width x height exceeds max_image_pixels.

        The reader would refuse them at their first read, hours in (data/images.py); the annotation's size is known
        now. Raises ImageTooLargeError naming the first one (and how many there are) and the setting to raise.
        """
        too_large = []
        for image_id in self.image_ids:
            width, height = self.annotated_size(image_id)
            message = too_large_message(width, height, self.max_image_pixels, "the image's annotated size")
            if message:
                too_large.append((image_id, message))
        if too_large:
            image_id, message = too_large[0]
            more = f" ({len(too_large) - 1} more image(s) like it)" if len(too_large) > 1 else ""
            raise ImageTooLargeError(message + more, field="width", **self.image_where(image_id))

    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every yielded image from the annotation, in index order (aspect-ratio grouping)."""
        return [self.annotated_size(i) for i in self.image_ids]

    def _read_image(self, image_id: int) -> torch.Tensor:
        return read_image(
            self.image_file(image_id),
            where=self.image_where(image_id),
            expected_size=self.annotated_size(image_id),
            max_pixels=self.max_image_pixels,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """Sample `key` (an index, or `(index, sample_seed)`; the seed defaults to the index)."""
        index, sample_seed = sample_key(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images ({self.json_path})")
        image_id = self.image_ids[index]
        image = self._read_image(image_id)
        target = self._target(image_id, image)
        if self.transform is not None:
            image, target = self.transform(image, target, random.Random(sample_seed))
        return image, target
