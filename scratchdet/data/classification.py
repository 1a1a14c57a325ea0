"""Image classification data for backbone pre-training: an ImageNet-style folder, or synthetic texture classes.

Both datasets return `(image, label)`: image float32 [3, H, W] RGB in [0, 1] (after the transform), label an int in
[0, num_classes). Like `scratchdet.data.coco.CocoDetection`, `__getitem__` takes an index or `(index, sample_seed)`
and the transform draws all its randomness from `random.Random(sample_seed)`, so the endless
`scratchdet.data.samplers.TrainingSampler` stream alone fixes every crop and flip, and resume is exact.

The synthetic set is deliberately a different task from the detection scenes of `scratchdet.data.synthetic`
(filled shapes on smooth backgrounds): whole-image textures (stripes at three orientations, checkerboards, rings,
dot lattices, noise blobs, ...) with random colours, periods, phases, edge sharpness and noise. Telling them apart
needs generic low-level features (edges, orientations, periodicity), much as ImageNet classes differ from COCO
objects. The generator's ranges were fixed up front for variety and are never tuned to make an experiment come out a
particular way.
"""

from __future__ import annotations

import math
import os
import random
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from scratchdet.data.images import read_image
from scratchdet.data.samplers import TrainingSampler
from scratchdet.errors import ConfigError, DataError

# transform(image uint8 [3, H, W], rng) -> image uint8 [3, h, w]
ClassificationTransform = Callable[[torch.Tensor, random.Random], torch.Tensor]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Every class is its own mirror image (diagonal stripes lean either way, spirals turn either way), so the random
# horizontal flip of the training transform never turns one class into another.
TEXTURE_CLASSES: tuple[str, ...] = (
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "rings",
    "dot_lattice",
    "random_dots",
    "blobs",
    "sunburst",
    "wavy_stripes",
    "grid_lines",
    "spiral",
)


def _parse_key(key: int | tuple[int, int], length: int, name: str) -> tuple[int, int]:
    if isinstance(key, tuple):
        index, sample_seed = int(key[0]), int(key[1])
    else:
        index = sample_seed = int(key)
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {name} of {length} images")
    return index % length, sample_seed


def _to_float(image: torch.Tensor) -> torch.Tensor:
    return image.float().div_(255.0)


# ---------------------------------------------------------------------------------------------------------------
# Transforms (uint8 tensors in and out: resampling uint8 is cheaper, and the float conversion happens once, last)
# ---------------------------------------------------------------------------------------------------------------


class RandomResizedCropFlip:
    """The standard ImageNet training augmentation: a random-area, random-aspect crop resized to `size` x `size`
    (Szegedy et al. 2015, as torchvision's RandomResizedCrop), then a horizontal flip with probability `flip_prob`.

    Args:
        size: output side in pixels (224 on ImageNet).
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        flip_prob: horizontal flip probability.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
    ):
        if size <= 0:
            raise ConfigError(f"crop size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(f"crop scale {scale} must satisfy 0 < min <= max <= 1 and ratio {ratio} 0 < min <= max")
        self.size, self.scale, self.ratio, self.flip_prob = size, scale, ratio, flip_prob

    def crop_box(self, height: int, width: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(top, left, crop_height, crop_width) in pixels; torchvision's sampling, drawn from `rng`."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        # Fallback (rare: extreme aspect images): the largest centred crop within the ratio range.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor, rng: random.Random) -> torch.Tensor:
        top, left, h, w = self.crop_box(image.shape[-2], image.shape[-1], rng)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        # One draw per call whatever the outcome, so later draws do not depend on this one.
        if rng.random() < self.flip_prob:
            image = image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomResizedCropFlip(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip_prob})"


class ResizeCenterCrop:
    """The standard ImageNet evaluation transform: short side to `resize` (crop x 256/224), centre crop `size`."""

    def __init__(self, size: int, resize: int | None = None):
        if size <= 0:
            raise ConfigError(f"crop size must be positive, got {size}")
        self.size = size
        self.resize = resize if resize is not None else round(size * 256 / 224)

    def __call__(self, image: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        image = TF.resize(image, [self.resize], antialias=True)  # one number = the short side
        return TF.center_crop(image, [self.size, self.size])

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, resize={self.resize})"


def build_classification_transform(crop_size: int, *, train: bool) -> ClassificationTransform:
    """Random-resized crop (scale 0.08-1) + flip for training; resize to crop x 256/224 + centre crop for eval."""
    return RandomResizedCropFlip(crop_size) if train else ResizeCenterCrop(crop_size)


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-style folder
# ---------------------------------------------------------------------------------------------------------------


class ImageFolderClassification(Dataset):
    """An ImageNet-style split folder: `root_split_dir/<class>/<image>.jpg|png`; classes sorted by folder name.

    Args:
        root_split_dir: e.g. datasets/imagenet/train.
        transform: called as `transform(image uint8 [3, H, W], rng)`; None returns the decoded image.
        classes: class folder names to use, in label order (pass the train split's for val, so labels agree);
            None = every sub-folder, sorted.
    """

    def __init__(
        self,
        root_split_dir: str | os.PathLike,
        transform: ClassificationTransform | None = None,
        *,
        classes: Sequence[str] | None = None,
    ):
        self.root = Path(root_split_dir)
        self.transform = transform
        if not self.root.is_dir():
            raise DataError(
                "image folder not found; data.root must hold train/<class>/*.jpg and val/<class>/*.jpg",
                path=str(self.root),
            )
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not found:
            raise DataError(
                "no class folders; an ImageNet-style split holds one sub-folder of images per class",
                path=str(self.root),
            )
        if classes is None:
            classes = found
        else:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise DataError(
                    f"class folders {unknown[:5]} are not among the {len(classes)} training classes; "
                    "train and val must have the same class folders",
                    path=str(self.root),
                )
        self.classes: list[str] = list(classes)
        self.samples: list[tuple[str, int]] = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            if not folder.is_dir():
                continue  # a class absent from val is allowed (its accuracy is just not measured)
            files = sorted(
                e.path for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not files:
                raise DataError(
                    f"class folder '{name}' holds no images ({', '.join(IMAGE_EXTENSIONS)}); remove it or add images",
                    path=str(folder),
                )
            self.samples += [(path, label) for path in files]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, index: int) -> torch.Tensor:
        """Decoded image `index` as uint8 [3, H, W] RGB."""
        path = self.samples[index][0]
        return read_image(path, dtype=torch.uint8)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Sample `key` (an index, or `(index, sample_seed)`; the seed defaults to the index)."""
        index, sample_seed = _parse_key(key, len(self), f"image folder {self.root}")
        image = self.read_image(index)
        if self.transform is not None:
            image = self.transform(image, random.Random(sample_seed))
        return _to_float(image), self.samples[index][1]


# ---------------------------------------------------------------------------------------------------------------
# Synthetic textures
# ---------------------------------------------------------------------------------------------------------------


def _soft(values: np.ndarray, sharpness: float) -> np.ndarray:
    """Maps a signed field to [0, 1]: near-sinusoidal for small sharpness, near-binary (hard edges) for large."""
    return 1.0 / (1.0 + np.exp(np.clip(-sharpness * values, -60.0, 60.0)))  # clip: no overflow warnings


def _rotated(x: np.ndarray, y: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(theta), math.sin(theta)
    return x * c + y * s, -x * s + y * c


def _texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Pattern field in [0, 1], float32 [size, size], for texture class `name` with random nuisance parameters."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    period = size * rng.uniform(1 / 12, 1 / 4)
    phase = rng.uniform(0, 2 * math.pi)
    sharp = float(np.exp(rng.uniform(math.log(1.5), math.log(25.0))))  # soft sinusoid ... hard square wave
    jitter = math.radians(rng.uniform(-12, 12))
    center = rng.uniform(0.15 * size, 0.85 * size, size=2)
    if name in ("horizontal_stripes", "vertical_stripes", "diagonal_stripes"):
        if name == "diagonal_stripes":
            theta = float(rng.choice([1, -1])) * math.pi / 4  # either diagonal: flips stay in class
        else:
            theta = math.pi / 2 if name == "horizontal_stripes" else 0.0
        u, _ = _rotated(x, y, theta + jitter)
        return _soft(np.cos(2 * math.pi * u / period + phase), sharp)
    if name == "checkerboard":
        u, v = _rotated(x, y, rng.uniform(0, math.pi / 2))
        return _soft(np.cos(2 * math.pi * u / period + phase) * np.cos(2 * math.pi * v / period + phase), sharp * 2)
    if name == "grid_lines":
        u, v = _rotated(x, y, rng.uniform(0, math.pi / 2))
        width = rng.uniform(0.1, 0.25)  # line width as a fraction of the period
        line = np.maximum(np.cos(2 * math.pi * u / period + phase), np.cos(2 * math.pi * v / period + phase))
        return _soft(line - math.cos(math.pi * width), sharp * 4)
    if name in ("rings", "spiral", "sunburst"):
        dx, dy = x - center[0], y - center[1]
        radius, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
        if name == "rings":
            return _soft(np.cos(2 * math.pi * radius / period + phase), sharp)
        if name == "spiral":
            arms = int(rng.integers(1, 4)) * int(rng.choice([1, -1]))  # either handedness: flips stay in class
            return _soft(np.cos(2 * math.pi * radius / period + arms * angle + phase), sharp)
        rays = int(rng.integers(6, 17))
        return _soft(np.cos(rays * angle + phase), sharp)
    if name == "dot_lattice":
        u, v = _rotated(x, y, rng.uniform(0, math.pi / 2))
        spacing = period * 1.2
        fu = (u / spacing + rng.uniform()) % 1.0 - 0.5
        fv = (v / spacing + rng.uniform()) % 1.0 - 0.5
        radius = rng.uniform(0.18, 0.35)
        return _soft(radius - np.hypot(fu, fv), sharp * 8)
    if name == "random_dots":
        spacing = period * 1.2
        n = max(int((size / spacing) ** 2), 3)
        px, py = rng.uniform(0, size, n), rng.uniform(0, size, n)
        radii = spacing * rng.uniform(0.15, 0.4, n)
        dist = np.min(np.hypot(x[..., None] - px, y[..., None] - py) - radii, axis=-1)
        return _soft(-dist / spacing, sharp * 8)
    if name == "blobs":
        noise = rng.standard_normal((size, size))
        fy, fx = np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :]
        sigma_f = 1.0 / (period * 1.5)  # Gaussian low-pass: blob size follows the period like the other classes
        smooth = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(fx**2 + fy**2) / (2 * sigma_f**2))).real
        smooth = (smooth - np.median(smooth)) / (smooth.std() + 1e-8)
        return _soft(smooth, sharp)
    if name == "wavy_stripes":
        u, v = _rotated(x, y, rng.uniform(0, math.pi))  # any orientation: a mirror image is another orientation
        amplitude = period * rng.uniform(0.4, 1.0)
        wavelength = period * rng.uniform(2.0, 4.0)
        warped = u + amplitude * np.sin(2 * math.pi * v / wavelength + rng.uniform(0, 2 * math.pi))
        return _soft(np.cos(2 * math.pi * warped / period + phase), sharp)
    raise ValueError(f"unknown texture class {name!r}; choose one of {', '.join(TEXTURE_CLASSES)}")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground RGB in [0, 1], at least 0.35 apart so the pattern is visible under the noise."""
    background = rng.uniform(0, 1, 3)
    for _ in range(50):
        foreground = rng.uniform(0, 1, 3)
        if np.linalg.norm(foreground - background) >= 0.35:
            return background, foreground
    return background, np.where(background > 0.5, 0.0, 1.0)  # >= 0.5 per channel away; practically never reached


def render_texture(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of texture class `name` as uint8 [size, size, 3]: pattern in two random colours, a smooth
    illumination gradient and Gaussian pixel noise of random strength."""
    pattern = _texture(name, size, rng)[..., None]
    background, foreground = _colours(rng)
    image = background * (1.0 - pattern) + foreground * pattern
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    gx, gy = rng.uniform(-0.4, 0.4, size=2)
    image = image * (1.0 + gx * x + gy * y)[..., None]
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.12), size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticClassification(Dataset):
    """Texture-classification images generated on the fly; image `i` is a pure function of (seed, split, i).

    Label of image `i` is `i % num_classes` (balanced classes; the sampler shuffles). Classes are the first
    `num_classes` of TEXTURE_CLASSES.

    Args:
        num_images: length of the split.
        num_classes: 2..len(TEXTURE_CLASSES).
        size: side of the square images in pixels.
        seed: generator seed; with `split`, fixes every image.
        split: any name ("train", "val"); different names give different images.
        transform: called as `transform(image uint8 [3, size, size], rng)`; None returns the image as generated.
    """

    def __init__(
        self,
        num_images: int,
        *,
        num_classes: int = 10,
        size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform: ClassificationTransform | None = None,
    ):
        if not 2 <= num_classes <= len(TEXTURE_CLASSES):
            raise ConfigError(f"synthetic num_classes={num_classes} must be in 2..{len(TEXTURE_CLASSES)}")
        if num_images <= 0 or size < 8:
            raise ConfigError(f"synthetic classification needs num_images > 0 and size >= 8, got {num_images}, {size}")
        self.num_images, self.size, self.seed, self.split = num_images, size, seed, split
        self.classes: list[str] = list(TEXTURE_CLASSES[:num_classes])
        self.transform = transform
        # crc32, not hash(): Python salts str hashes per process, and the images must not change between runs.
        self._split_code = zlib.crc32(split.encode())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def label(self, index: int) -> int:
        return index % self.num_classes

    def read_image(self, index: int) -> torch.Tensor:
        """Generated image `index` as uint8 [3, size, size] RGB."""
        rng = np.random.default_rng([self.seed, self._split_code, index])
        pixels = render_texture(self.classes[self.label(index)], self.size, rng)
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Sample `key` (an index, or `(index, sample_seed)`; the seed defaults to the index)."""
        index, sample_seed = _parse_key(key, len(self), f"synthetic {self.split} split")
        image = self.read_image(index)
        if self.transform is not None:
            image = self.transform(image, random.Random(sample_seed))
        return _to_float(image), self.label(index)


def write_synthetic_classification(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 10,
    train_per_class: int = 50,
    val_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
) -> dict:
    """Writes SyntheticClassification images as an ImageNet-style folder: out/{train,val}/<NN_class>/<NNNNNN>.png.

    Folder names start with the label (00_horizontal_stripes, ...), so sorted folders give the generator's labels,
    and file i of a split is `SyntheticClassification(..., split=that split)[i]` pixel for pixel.

    Returns:
        A summary: root, classes (folder names), images per split, size, seed.
    """
    out = Path(out_dir)
    summary: dict = {"root": str(out), "size": size, "seed": seed}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        dataset = SyntheticClassification(
            per_class * num_classes, num_classes=num_classes, size=size, seed=seed, split=split
        )
        folders = [f"{k:02d}_{name}" for k, name in enumerate(dataset.classes)]
        for folder in folders:
            (out / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(len(dataset)):
            pixels = dataset.read_image(i).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(out / split / folders[dataset.label(i)] / f"{i:06d}.png")
        summary["classes"] = folders
        summary[f"{split}_images"] = len(dataset)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


def collate_classification(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks same-size images into [B, 3, H, W] float32 and labels into [B] int64."""
    images, labels = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def build_classification_train_loader(
    dataset: Dataset, batch_size: int, *, seed: int, start_iter: int = 0, num_workers: int = 0
) -> DataLoader:
    """Endless loader of `batch_size` images per iteration, starting at iteration `start_iter` of the seeded stream."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=TrainingSampler(len(dataset), seed, start=start_iter * batch_size),
        num_workers=num_workers,
        collate_fn=collate_classification,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=2 if num_workers > 0 else None,
        # Worker seeds come from this generator, not the global RNG, so resuming restores the same RNG stream.
        generator=torch.Generator().manual_seed(seed),
    )


def build_classification_eval_loader(dataset: Dataset, batch_size: int, *, num_workers: int = 0) -> DataLoader:
    """Loader over `dataset` in index order, once (the eval transform uses no randomness)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_classification,
        pin_memory=torch.cuda.is_available(),
    )
