"""Fixtures for the data tests: a tiny, valid COCO dataset written into tmp_path (JSON + PNG images)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ({"size": [H, W], "counts": [...]}) of a [H, W] 0/1 mask; runs start with zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)  # COCO RLE runs down columns
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with a str 'counts', as found in JSON files."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rect_mask(height: int, width: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """[H, W] uint8 mask with ones in rows y1..y2-1 and columns x1..x2-1."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def image_pixels(image_id: int, height: int, width: int) -> np.ndarray:
    """Deterministic RGB content of a test image: a horizontal ramp in red, the id in green, a constant in blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = (np.arange(width) * 7 % 256)[None, :]
    pixels[..., 1] = image_id % 256
    pixels[..., 2] = 200
    return pixels


@pytest.fixture
def coco_spec() -> dict:
    """A fresh, valid COCO dict with non-contiguous category ids 3, 7, 20.

    Image 1 (32x24): ann 10 (dog, polygon), ann 11 (cat, compressed RLE). Image 2 (20x16): ann 12 (bird,
    uncompressed RLE), ann 13 (crowd). Image 5 (16x16): no annotations.
    """
    return {
        "info": {"description": "scratchdet test"},
        "categories": [{"id": 20, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "images": [
            {"id": 1, "width": 32, "height": 24, "file_name": "a.png"},
            {"id": 2, "width": 20, "height": 16, "file_name": "sub/b.png"},
            {"id": 5, "width": 16, "height": 16, "file_name": "c.png"},
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 4, 10, 6],
                "area": 60.0,
                "iscrowd": 0,
                "segmentation": [[2, 4, 12, 4, 12, 10, 2, 10]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "bbox": [20, 2, 8, 8],
                "area": 64.0,
                "iscrowd": 0,
                "segmentation": compressed_rle(rect_mask(24, 32, 20, 2, 28, 10)),
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 20,
                "bbox": [1, 1, 5, 5],
                "area": 25.0,
                "iscrowd": 0,
                "segmentation": uncompressed_rle(rect_mask(16, 20, 1, 1, 6, 6)),
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 3,
                "bbox": [10, 0, 10, 10],
                "area": 100.0,
                "iscrowd": 1,
                "segmentation": uncompressed_rle(rect_mask(16, 20, 10, 0, 20, 10)),
            },
        ],
    }


@pytest.fixture
def write_coco(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory: write(spec, write_images=True, name="instances.json") -> (json_path, image_dir).

    Writes one PNG per image entry with the entry's width and height (skipped for entries without valid sizes).
    """

    def write(spec: dict, *, write_images: bool = True, name: str = "instances.json") -> tuple[Path, Path]:
        image_dir = tmp_path / "images"
        image_dir.mkdir(exist_ok=True)
        if write_images:
            for img in spec["images"]:
                width, height = img.get("width"), img.get("height")
                if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
                    continue
                path = image_dir / img["file_name"]
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image_pixels(img["id"], height, width)).save(path)
        json_path = tmp_path / name
        json_path.write_text(json.dumps(spec))
        return json_path, image_dir

    return write


@pytest.fixture
def many_images_spec() -> dict:
    """30 annotated 8x8 images (ids 100..129, one box each) and one image without annotations (id 999)."""
    images = [{"id": 100 + i, "width": 8, "height": 8, "file_name": f"img{i}.png"} for i in range(30)]
    images.append({"id": 999, "width": 8, "height": 8, "file_name": "empty.png"})
    annotations = [
        {
            "id": 1000 + i,
            "image_id": 100 + i,
            "category_id": 1,
            "bbox": [1, 1, 4, 4],
            "iscrowd": 0,
            "area": 16,
            "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
        }
        for i in range(30)
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}


@pytest.fixture
def helpers() -> SimpleNamespace:
    """The module's helpers for tests (conftest is not importable under pytest's importlib import mode)."""
    return SimpleNamespace(
        uncompressed_rle=uncompressed_rle, compressed_rle=compressed_rle, rect_mask=rect_mask, image_pixels=image_pixels
    )
