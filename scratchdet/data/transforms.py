"""Training transforms for detection samples: short-side resize and horizontal flip.

A transform is called as `image, target = t(image, target, rng)`: image float32 [3, H, W]; target as produced by
`scratchdet.data.coco.CocoDetection` ("boxes" float32 [N, 4] XYXY absolute pixels, optional "masks" uint8
[N, H, W] and "keypoints" float32 [N, K, 3] as (x, y, visibility)). All randomness comes from `rng`, a
`random.Random` seeded per sample by the dataset, so augmentation is reproducible from the sampler alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from scratchdet.errors import ConfigError, DataError

Transform = Callable[[torch.Tensor, dict, random.Random], tuple[torch.Tensor, dict]]


class Compose:
    """Apply transforms in order, all drawing from the same rng."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict, rng: random.Random) -> tuple[torch.Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def resized_shape(height: int, width: int, short_size: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of a short-side resize: short side = short_size unless the long side would pass max_size.

    Same arithmetic and rounding as Detectron2's ResizeShortestEdge, so image sizes match the paper's setup.
    """
    scale = short_size / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        scale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)


class ResizeShortSide:
    """Resize so the short side is one of `short_sizes` (picked with rng), the long side at most `max_size`.

    The image is resized bilinearly (align_corners=False), masks with nearest neighbour, boxes and keypoints are
    scaled by the exact per-axis size ratio. Sets target["size"] = (new_h, new_w); "orig_size" is kept so
    predictions can be mapped back. A list of sizes, e.g. [640, 800], is the paper's scale augmentation.
    """

    def __init__(self, short_sizes: Sequence[int] | int, max_size: int):
        """Create the transform.

        Args:
            short_sizes: candidate short-side lengths in pixels; one is drawn per sample.
            max_size: cap on the long side in pixels.
        """
        sizes = (short_sizes,) if isinstance(short_sizes, int) else tuple(short_sizes)
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ConfigError(f"short_sizes must be positive integers, got {short_sizes!r}")
        if not isinstance(max_size, int) or max_size <= 0:
            raise ConfigError(f"max_size must be a positive integer, got {max_size!r}")
        self.short_sizes = sizes
        self.max_size = max_size

    def __call__(self, image: torch.Tensor, target: dict, rng: random.Random) -> tuple[torch.Tensor, dict]:
        short = rng.choice(self.short_sizes)
        height, width = image.shape[-2:]
        new_h, new_w = resized_shape(height, width, short, self.max_size)
        target = dict(target)
        target["size"] = (new_h, new_w)
        if (new_h, new_w) == (height, width):
            return image, target
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)[0]
        sx, sy = new_w / width, new_h / height
        if "boxes" in target:
            target["boxes"] = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
        if "masks" in target:
            masks = target["masks"]
            if masks.shape[0] == 0:  # interpolate rejects empty batches
                target["masks"] = masks.new_zeros((0, new_h, new_w))
            else:
                target["masks"] = F.interpolate(masks[None], size=(new_h, new_w), mode="nearest")[0]
        if "keypoints" in target:
            kps = target["keypoints"].clone()
            kps[..., 0] *= sx
            kps[..., 1] *= sy
            target["keypoints"] = kps
        return image, target

    def __repr__(self) -> str:
        return f"ResizeShortSide(short_sizes={list(self.short_sizes)}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the sample left-right with probability `prob`.

    Boxes map as x1' = W - x2, x2' = W - x1; keypoints as x' = W - x and are re-ordered with
    target["keypoint_flip_map"] (a left eye becomes a right eye), which must be there: without it a flip cannot know
    which keypoints change sides, and mirroring x alone would teach the wrong side (DataError; the identity map
    list(range(K)) says no keypoint has a side). Invisible keypoints (visibility 0)
    stay all-zero, the COCO convention. Exactly one rng.random() is drawn per call, flipped or not, so the rng
    stream of later transforms does not depend on this one's outcome.
    """

    def __init__(self, prob: float = 0.5):
        """Create the transform.

        Args:
            prob: flip probability in [0, 1].
        """
        if not 0.0 <= prob <= 1.0:
            raise ConfigError(f"flip prob must be in [0, 1], got {prob!r}")
        self.prob = prob

    def __call__(self, image: torch.Tensor, target: dict, rng: random.Random) -> tuple[torch.Tensor, dict]:
        if not rng.random() < self.prob:
            return image, target
        width = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            target["boxes"] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "keypoints" in target:
            kps = target["keypoints"].clone()
            flip_map = target.get("keypoint_flip_map")
            where = {"path": target.get("file"), "image_id": target.get("image_id"), "field": "keypoints"}
            if flip_map is None:
                raise DataError(
                    "the target has keypoints but no keypoint_flip_map, so a flip cannot tell which "
                    "keypoints change sides; add target['keypoint_flip_map'] (list(range(K)) if none has a "
                    "side)",
                    **where,
                )
            if sorted(flip_map) != list(range(kps.shape[1])):
                msg = f"keypoint_flip_map {list(flip_map)} is not a permutation of the {kps.shape[1]} keypoints"
                raise DataError(msg, **where)
            kps = kps[:, list(flip_map)]
            invisible = kps[..., 2] == 0
            kps[..., 0] = width - kps[..., 0]
            kps[invisible] = 0
            target["keypoints"] = kps
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


def build_train_transform(short_sizes: Sequence[int] | int, max_size: int, flip_prob: float = 0.5) -> Compose:
    """The paper's training augmentation: short-side resize (one size, or a list for scale aug) then random flip.

    Args:
        short_sizes: candidate short sides in pixels, e.g. [800] or the paper's [640, 800] "train aug".
        max_size: cap on the long side in pixels (1333 in the paper).
        flip_prob: horizontal flip probability.
    """
    return Compose([ResizeShortSide(short_sizes, max_size), RandomHorizontalFlip(flip_prob)])
