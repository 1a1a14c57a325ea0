"""Training transforms (scratchdet/data/transforms.py): exact geometry, mask/box consistency, determinism."""

from __future__ import annotations

import random

import pytest
import torch

from scratchdet.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortSide,
    build_train_transform,
    resized_shape,
)
from scratchdet.errors import ConfigError, DataError


def _rect(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    mask = torch.zeros(height, width, dtype=torch.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _sample(height: int = 10, width: int = 20) -> tuple[torch.Tensor, dict]:
    """Image with distinct pixel values and one box [2, 3, 8, 7] whose mask fills it exactly."""
    image = torch.arange(3 * height * width, dtype=torch.float32).reshape(3, height, width) / (3 * height * width)
    target = {
        "boxes": torch.tensor([[2.0, 3.0, 8.0, 7.0]]),
        "labels": torch.tensor([1]),
        "masks": _rect(height, width, 2, 3, 8, 7)[None],
        "image_id": 1,
        "orig_size": (height, width),
    }
    return image, target


def _mask_box(mask: torch.Tensor) -> list[float]:
    """XYXY box (pixel edges) of the ones in a [H, W] mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class _FixedRng(random.Random):
    """An rng whose choice() returns a given element and random() a given value."""

    def __init__(self, choice_index: int = 0, value: float = 0.0):
        super().__init__(0)
        self.choice_index, self.value = choice_index, value

    def choice(self, seq):
        return seq[self.choice_index]

    def random(self):
        return self.value


def test_resize_scales_short_side_and_boxes_exactly():
    image, target = _sample(10, 20)
    out_image, out = ResizeShortSide([20], max_size=100)(image, target, random.Random(0))
    assert out_image.shape == (3, 20, 40)
    assert out["size"] == (20, 40) and out["orig_size"] == (10, 20)
    assert out["boxes"].tolist() == [[4.0, 6.0, 16.0, 14.0]]  # x2 on both axes
    assert out["masks"].dtype == torch.uint8
    assert torch.equal(out["masks"][0], _rect(20, 40, 4, 6, 16, 14))  # nearest: the mask still fills the box
    # The input is not modified in place.
    assert target["boxes"].tolist() == [[2.0, 3.0, 8.0, 7.0]] and "size" not in target


def test_resize_respects_max_size():
    image, target = _sample(10, 40)
    target["boxes"] = torch.tensor([[4.0, 2.0, 20.0, 6.0]])
    out_image, out = ResizeShortSide([20], max_size=60)(image, target, random.Random(0))
    # Short side 20 would make the long side 80 > 60: the long side becomes 60 instead (scale 1.5).
    assert out_image.shape == (3, 15, 60) and out["size"] == (15, 60)
    assert out["boxes"].tolist() == [[6.0, 3.0, 30.0, 9.0]]
    assert out["masks"].shape == (1, 15, 60)


def test_resized_shape_matches_detectron_rounding():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resized_shape(427, 640, 800, 1333) == (800, 1199)
    assert resized_shape(640, 480, 800, 1333) == (1067, 800)
    assert resized_shape(100, 400, 800, 1333) == (333, 1333)  # capped: long side == max_size
    assert resized_shape(800, 1200, 800, 1333) == (800, 1200)


def test_resize_picks_short_size_with_rng_choice():
    image, target = _sample(4, 6)
    resize = ResizeShortSide([8, 12], max_size=100)
    for seed in range(10):
        expected = random.Random(seed).choice([8, 12])
        _, out = resize(image, target, random.Random(seed))
        assert min(out["size"]) == expected
    assert resize(image, target, _FixedRng(0))[1]["size"] == (8, 12)
    assert resize(image, target, _FixedRng(1))[1]["size"] == (12, 18)


def test_resize_image_is_bilinear_align_corners_false():
    image, target = _sample(10, 20)
    out_image, _ = ResizeShortSide([15], max_size=100)(image, target, random.Random(0))
    expected = torch.nn.functional.interpolate(image[None], size=(15, 30), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out_image, expected)


def test_flip_boxes_masks_and_image():
    image, target = _sample(10, 20)
    out_image, out = RandomHorizontalFlip(prob=1.0)(image, target, random.Random(0))
    assert out["boxes"].tolist() == [[12.0, 3.0, 18.0, 7.0]]  # x1' = 20 - 8, x2' = 20 - 2
    assert torch.equal(out["masks"][0], _rect(10, 20, 12, 3, 18, 7))
    assert _mask_box(out["masks"][0]) == out["boxes"][0].tolist()
    assert torch.equal(out_image[..., 0], image[..., 19]) and torch.equal(out_image[..., 19], image[..., 0])
    assert target["boxes"].tolist() == [[2.0, 3.0, 8.0, 7.0]]  # input untouched


def test_flip_follows_rng_and_probability():
    image, target = _sample()
    never, always, half = RandomHorizontalFlip(0.0), RandomHorizontalFlip(1.0), RandomHorizontalFlip(0.5)
    assert never(image, target, random.Random(0))[1]["boxes"].tolist() == [[2.0, 3.0, 8.0, 7.0]]
    assert always(image, target, random.Random(0))[1]["boxes"].tolist() == [[12.0, 3.0, 18.0, 7.0]]
    flips = []
    for seed in range(20):
        flipped = half(image, target, random.Random(seed))[1]["boxes"][0, 0].item() == 12.0
        assert flipped == (random.Random(seed).random() < 0.5)
        flips.append(flipped)
    assert any(flips) and not all(flips)
    # Boundary: rng.random() < prob, so a draw equal to prob does not flip.
    assert half(image, target, _FixedRng(value=0.5))[1]["boxes"][0, 0].item() == 2.0


def test_flip_mirrors_and_permutes_keypoints():
    image, target = _sample(10, 20)
    # One instance, keypoints (left, right, invisible) as (x, y, visibility).
    target["keypoints"] = torch.tensor([[[2.0, 3.0, 2.0], [8.0, 4.0, 1.0], [0.0, 0.0, 0.0]]])
    target["keypoint_flip_map"] = [1, 0, 2]
    _, out = RandomHorizontalFlip(1.0)(image, target, random.Random(0))
    # The new "left" keypoint is the mirrored old "right" one and vice versa; invisible ones stay zero.
    assert out["keypoints"].tolist() == [[[12.0, 4.0, 1.0], [18.0, 3.0, 2.0], [0.0, 0.0, 0.0]]]
    target["keypoint_flip_map"] = [0, 1, 2]  # no keypoint has a side: only x is mirrored
    _, out = RandomHorizontalFlip(1.0)(image, target, random.Random(0))
    assert out["keypoints"].tolist() == [[[18.0, 3.0, 2.0], [12.0, 4.0, 1.0], [0.0, 0.0, 0.0]]]
    del target["keypoint_flip_map"]  # a flip that cannot know the sides refuses instead of keeping them wrong
    with pytest.raises(DataError, match="no keypoint_flip_map"):
        RandomHorizontalFlip(1.0)(image, target, random.Random(0))
    assert RandomHorizontalFlip(0.0)(image, target, random.Random(0))[1]["keypoints"].tolist()[0][0] == [2.0, 3.0, 2.0]
    target["keypoint_flip_map"] = [1, 0]
    with pytest.raises(DataError, match="keypoint_flip_map"):
        RandomHorizontalFlip(1.0)(image, target, random.Random(0))


def test_resize_scales_keypoints():
    image, target = _sample(10, 20)
    target["keypoints"] = torch.tensor([[[2.0, 3.0, 2.0], [8.0, 4.0, 1.0]]])
    _, out = ResizeShortSide([20], max_size=100)(image, target, random.Random(0))
    assert out["keypoints"].tolist() == [[[4.0, 6.0, 2.0], [16.0, 8.0, 1.0]]]


def test_train_transform_keeps_masks_and_boxes_consistent():
    image, target = _sample(10, 20)
    transform = build_train_transform([20], max_size=100, flip_prob=1.0)
    out_image, out = transform(image, target, random.Random(0))
    assert out_image.shape == (3, 20, 40)
    assert out["boxes"].tolist() == [[24.0, 6.0, 36.0, 14.0]]  # resized to [4, 6, 16, 14], then 40 - x
    assert _mask_box(out["masks"][0]) == out["boxes"][0].tolist()


def test_train_transform_is_deterministic_per_seed():
    image, target = _sample(12, 18)
    transform = build_train_transform([8, 10, 14], max_size=30)
    results = {}
    for seed in range(12):
        a_image, a = transform(image, target, random.Random(seed))
        b_image, b = transform(image, target, random.Random(seed))
        assert torch.equal(a_image, b_image) and torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(a["masks"], b["masks"]) and a["size"] == b["size"]
        results[seed] = (a["size"], tuple(a["boxes"][0].tolist()))
    assert len(set(results.values())) > 1  # different seeds give different augmentations


def test_empty_targets_pass_through():
    image = torch.rand(3, 6, 8)
    target = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 6, 8, dtype=torch.uint8),
    }
    out_image, out = build_train_transform([12], max_size=100, flip_prob=1.0)(image, target, random.Random(0))
    assert out_image.shape == (3, 12, 16)
    assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 12, 16)


def test_compose_applies_in_order():
    calls = []

    def step(name):
        def apply(image, target, rng):
            calls.append(name)
            return image, target

        return apply

    Compose([step("a"), step("b")])(torch.zeros(3, 2, 2), {}, random.Random(0))
    assert calls == ["a", "b"]


@pytest.mark.parametrize(("sizes", "max_size"), [([], 100), ([0], 100), ([8], 0), ([8.5], 100)])
def test_bad_resize_arguments(sizes, max_size):
    with pytest.raises(ConfigError):
        ResizeShortSide(sizes, max_size)


def test_bad_flip_probability():
    with pytest.raises(ConfigError, match="flip prob"):
        RandomHorizontalFlip(1.5)


def test_resize_masks_use_nearest_neighbour():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 7, 9, generator=generator) > 0.5).to(torch.uint8)
    target = {"boxes": torch.zeros(3, 4), "masks": masks}
    _, out = ResizeShortSide([10], max_size=100)(torch.rand(3, 7, 9), target, random.Random(0))
    assert out["size"] == (10, 13)  # 9 * 10 / 7 = 12.86 -> 13
    expected = torch.nn.functional.interpolate(masks[None].float(), size=(10, 13), mode="nearest")[0].to(torch.uint8)
    assert out["masks"].dtype == torch.uint8 and torch.equal(out["masks"], expected)
