"""Synthetic "shape scenes" in genuine COCO instance-segmentation format: the project's embedded default dataset.

There is no internet and no COCO on the machines this project is developed on, so `write_synthetic_coco` writes a
small dataset that exercises every path a real COCO file exercises, and the same commands then run unchanged on COCO:

- category ids are not contiguous (2, 5, 7, 11, 13), so loaders must map ids to contiguous labels and back;
- masks come as polygons (exact vertex lists; circles and ellipses as 32-gons), as compressed RLE (every occluded
  object, plus ~10% of the others) and, for crowd regions, as uncompressed RLE, so every decoder path runs;
- `iscrowd: 1` regions (a cluster of small same-category shapes under one mask) appear in ~7% of the images;
- later objects are drawn over earlier ones; an annotation's mask is its *visible* region, and an object whose
  visible part would fall below 16 px or 15% of its full area is not drawn at all, so no drawn object is unlabelled;
- image sizes and aspect ratios vary (portrait and landscape), object sizes range from ~10 px to about half the
  image, and object colour is random and independent of the category (the category must be learned from shape);
- the "walker" category (an articulated stick figure) carries COCO keypoints with left_/right_ pairs, so horizontal
  flip needs `keypoint_flip_map`; occluded joints are labelled v=1 or, like skipped COCO joints, left at v=0.
  COCOeval needs `params.kpt_oks_sigmas = np.array(KEYPOINT_OKS_SIGMAS)` and `params.catIds = [13]` for them.

Object pixels are painted from the very masks pycocotools decodes from the stored segmentation, so image, area and
box agree exactly. Output is a pure function of the arguments (byte-identical JSON and PNGs for a seed). The
generator's parameters were fixed up front for format coverage and are never tuned to make any experiment come out
a particular way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from scratchdet.data.keypoint_flip import flip_indices, keypoint_flip_pairs
from scratchdet.errors import ConfigError

# The walker faces the viewer, as COCO people mostly do: its own left limbs are on the image's right.
KEYPOINT_NAMES: tuple[str, ...] = (
    "head",
    "neck",
    "left_elbow",
    "right_elbow",
    "left_hand",
    "right_hand",
    "pelvis",
    "left_knee",
    "right_knee",
    "left_foot",
    "right_foot",
)
# Per-keypoint OKS sigmas for COCOeval (`params.kpt_oks_sigmas`; its default holds COCO's 17). Each joint borrows
# the sigma of the matching COCO joint (neck and head: shoulder, hand: wrist, pelvis: hip, foot: ankle).
KEYPOINT_OKS_SIGMAS: tuple[float, ...] = (0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.087, 0.087, 0.089, 0.089)
# 1-based index pairs, as in COCO's person category.
KEYPOINT_SKELETON: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 3), (2, 4), (3, 5), (4, 6), (2, 7), (7, 8), (7, 9), (8, 10), (9, 11),
)  # fmt: skip

SHAPE_CATEGORY_IDS: dict[str, int] = {"circle": 2, "square": 5, "triangle": 7, "ellipse": 11}
WALKER_CATEGORY_ID = 13

MAX_OBJECTS = 6
MIN_VISIBLE_PIXELS = 16
MIN_VISIBLE_FRACTION = 0.15
CROWD_PROBABILITY = 0.07
RLE_PROBABILITY = 0.10
OCCLUDED_KEYPOINT_LABEL_PROBABILITY = 0.7
# A split at least this large is guaranteed a crowd region, a polygon mask and a compressed RLE mask.
GUARANTEE_MIN_IMAGES = 20

_MIN_SHAPE_SIZE = 10.0
_MIN_WALKER_HEIGHT = 28.0
_SPLITS = ("train", "val")


@dataclass
class _Instance:
    """One annotated object while its image is being composed; coordinates are absolute pixels, XY."""

    category_id: int
    polygons: list[np.ndarray]  # each (V, 2); empty for crowd regions
    full: np.ndarray  # (H, W) bool, as pycocotools decodes the polygons
    iscrowd: bool = False
    keypoints: np.ndarray | None = None  # (K, 2) for walkers
    pieces: list[np.ndarray] = field(default_factory=list)  # (H, W) bool masks painted one colour each
    visible: np.ndarray = field(init=False)
    full_area: int = field(init=False)

    def __post_init__(self) -> None:
        self.visible = self.full.copy()
        self.full_area = int(self.full.sum())
        if not self.pieces:
            self.pieces = [self.full]


def keypoint_flip_map(names: Sequence[str]) -> list[int]:
    """Index of each keypoint's horizontal mirror, by the rule of data/keypoint_flip.py (left_*/right_* and the
    other common spellings of a side); names without a side map to themselves.

    Args:
        names: keypoint names, e.g. `KEYPOINT_NAMES` or COCO's 17 person keypoints.

    Returns:
        flip[i] = index of the keypoint that keypoint i becomes after a horizontal flip.

    Raises:
        ValueError: duplicate names, or names that look lateral but have no recognisable mirror
            (keypoint_flip.UnpairedKeypointsError).
    """
    return flip_indices(names, keypoint_flip_pairs(names))


def write_synthetic_coco(
    out_dir: str | Path,
    *,
    train_images: int = 200,
    val_images: int = 50,
    seed: int = 0,
    min_side: int = 96,
    max_side: int = 192,
) -> dict:
    """Writes out_dir/instances_{train,val}.json and the PNGs under out_dir/train/ and out_dir/val/.

    `file_name` in the JSON is relative to the split folder ("000000.png"). Boxes are XYWH in absolute pixels.

    Args:
        out_dir: output folder, created if missing; existing files of the same name are overwritten.
        train_images: number of training images.
        val_images: number of validation images (drawn from a different seed than train).
        seed: master seed; the same arguments give byte-identical files.
        min_side: smallest image side in pixels (>= 32).
        max_side: largest image side in pixels (>= min_side).

    Returns:
        {"train": counts, "val": counts}, counts having images, annotations, crowd, polygon_masks, rle_masks
        (non-crowd compressed RLE) and keypoint_instances (walkers with at least one labelled keypoint).
    """
    for name, value in (("train_images", train_images), ("val_images", val_images)):
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if min_side < 32:
        raise ConfigError(f"min_side must be >= 32 so objects fit, got {min_side}")
    if max_side < min_side:
        raise ConfigError(f"max_side ({max_side}) must be >= min_side ({min_side})")
    out = Path(out_dir)
    summary = {}
    for split_index, (split, count) in enumerate(zip(_SPLITS, (train_images, val_images), strict=True)):
        coco, summary[split] = _generate_split(out / split, count, seed, split_index, min_side, max_side)
        coco["info"]["description"] += f" ({split})"
        text = json.dumps(coco, separators=(",", ":"))
        (out / f"instances_{split}.json").write_text(text, encoding="utf-8")
    return summary


def _categories() -> list[dict]:
    cats: list[dict] = [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in SHAPE_CATEGORY_IDS.items()]
    cats.append(
        {
            "id": WALKER_CATEGORY_ID,
            "name": "walker",
            "supercategory": "figure",
            "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in KEYPOINT_SKELETON],
        }
    )
    return cats


def _generate_split(
    image_dir: Path, num_images: int, seed: int, split_index: int, min_side: int, max_side: int
) -> tuple[dict, dict]:
    image_dir.mkdir(parents=True, exist_ok=True)
    # Per-image generators keyed by (seed, split, index): val is not a copy of train, and image i does not depend on
    # how many images come before or after it (except for the forced crowd below).
    image_rngs = [np.random.default_rng([seed, split_index, i]) for i in range(num_images)]
    with_crowd = [bool(rng.random() < CROWD_PROBABILITY) for rng in image_rngs]
    if num_images >= GUARANTEE_MIN_IMAGES and not any(with_crowd):
        with_crowd[int(np.random.default_rng([seed, split_index]).integers(num_images))] = True

    images: list[dict] = []
    annotations: list[dict] = []
    polygons_of_rle: dict[int, list[np.ndarray]] = {}  # non-occluded RLE anns, kept to convert one back if needed
    for i, rng in enumerate(image_rngs):
        image_id = i + 1
        pixels, instances = _compose_image(rng, min_side, max_side, with_crowd[i])
        height, width = pixels.shape[:2]
        file_name = f"{i:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG")
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        covered_later = np.zeros((height, width), dtype=bool)
        image_anns: list[dict] = []
        # Top-most first, to know what covers each walker's joints; ids follow drawing order, unique in the file.
        for j in reversed(range(len(instances))):
            inst = instances[j]
            ann_id = len(annotations) + j + 1
            occluded = int(inst.visible.sum()) < inst.full_area
            use_rle = inst.iscrowd or occluded or bool(rng.random() < RLE_PROBABILITY)
            if use_rle and not inst.iscrowd and not occluded:
                polygons_of_rle[ann_id] = inst.polygons
            image_anns.append(_annotation(inst, ann_id, image_id, use_rle, covered_later, rng))
            covered_later |= inst.full
        image_anns.reverse()
        annotations.extend(image_anns)

    if num_images >= GUARANTEE_MIN_IMAGES:
        _ensure_both_encodings(annotations, images, polygons_of_rle)
    coco = {
        "info": {
            "description": "scratchdet synthetic shape scenes",
            "version": "1.0",
            "year": 2024,
            "contributor": "scratchdet",
            "url": "",
            "date_created": "2024-01-01",
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    return coco, _count(images, annotations)


def _ensure_both_encodings(annotations: list[dict], images: list[dict], polygons_of_rle: dict) -> None:
    """Re-encodes one non-occluded object if a split drew only polygons or only compressed RLE masks."""
    plain = [a for a in annotations if not a["iscrowd"]]
    has_polygon = any(isinstance(a["segmentation"], list) for a in plain)
    has_rle = any(isinstance(a["segmentation"], dict) for a in plain)
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    if has_polygon and not has_rle:
        ann = next(a for a in plain if isinstance(a["segmentation"], list))
        height, width = sizes[ann["image_id"]]
        rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], height, width))
        ann["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        ann["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
    elif has_rle and not has_polygon and polygons_of_rle:
        ann = next(a for a in plain if a["id"] in polygons_of_rle)
        polygons = polygons_of_rle[ann["id"]]
        ann["segmentation"] = [_flat(p) for p in polygons]
        ann["bbox"] = _polygon_bbox(polygons)


def _count(images: list[dict], annotations: list[dict]) -> dict:
    plain = [a for a in annotations if not a["iscrowd"]]
    return {
        "images": len(images),
        "annotations": len(annotations),
        "crowd": len(annotations) - len(plain),
        "polygon_masks": sum(isinstance(a["segmentation"], list) for a in plain),
        "rle_masks": sum(isinstance(a["segmentation"], dict) for a in plain),
        "keypoint_instances": sum(a.get("num_keypoints", 0) > 0 for a in plain),
    }


def _annotation(
    inst: _Instance, ann_id: int, image_id: int, use_rle: bool, covered_later: np.ndarray, rng: np.random.Generator
) -> dict:
    """COCO annotation dict of one instance; `covered_later` is the union of the masks drawn after it."""
    height, width = inst.full.shape
    encoded = mask_utils.encode(np.asfortranarray(inst.visible.astype(np.uint8)))
    ann: dict = {"id": ann_id, "image_id": image_id, "category_id": inst.category_id}
    if inst.iscrowd:
        # COCO stores crowd regions as uncompressed RLE (column-major run lengths starting with a zero run).
        ann["segmentation"] = {"size": [height, width], "counts": _uncompressed_counts(inst.visible)}
    elif use_rle:
        ann["segmentation"] = {"size": [height, width], "counts": encoded["counts"].decode("ascii")}
    else:
        ann["segmentation"] = [_flat(p) for p in inst.polygons]
    if use_rle:
        ann["bbox"] = [float(v) for v in mask_utils.toBbox(encoded)]
    else:
        ann["bbox"] = _polygon_bbox(inst.polygons)
    ann["area"] = float(mask_utils.area(encoded))
    ann["iscrowd"] = int(inst.iscrowd)
    if inst.keypoints is not None:
        flat: list[float] = []
        labelled = 0
        for x, y in inst.keypoints:
            col = min(max(int(x), 0), width - 1)
            row = min(max(int(y), 0), height - 1)
            if not covered_later[row, col]:
                v = 2
            elif rng.random() < OCCLUDED_KEYPOINT_LABEL_PROBABILITY:
                v = 1
            else:
                v = 0  # like a COCO annotator skipping a hidden joint; loaders and losses must ignore it
            flat.extend([round(float(x), 2), round(float(y), 2), v] if v else [0, 0, 0])
            labelled += v > 0
        ann["keypoints"] = flat
        ann["num_keypoints"] = labelled
    return ann


def _flat(polygon: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in polygon.reshape(-1)]


def _polygon_bbox(polygons: list[np.ndarray]) -> list[float]:
    points = np.concatenate(polygons)
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts.insert(0, 0)
    return [int(c) for c in counts]


def _rasterize(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """(H, W) bool mask exactly as pycocotools decodes these polygons (pixel (x, y) covers [x, x+1) x [y, y+1))."""
    rles = mask_utils.frPyObjects([_flat(p) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _sample_image_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    ratio = math.exp(rng.uniform(0.0, math.log(min(1.7, max_side / min_side))))
    short = int(rng.integers(min_side, max(min_side, int(max_side / ratio)) + 1))
    long = min(max_side, max(short, round(short * ratio)))
    return (long, short) if rng.random() < 0.5 else (short, long)  # (height, width): portrait or landscape


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32: a smooth random colour field plus a finer, fainter texture."""
    grid = int(rng.integers(2, 6))
    coarse = rng.uniform(0, 255, size=(grid, grid, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    fine = rng.normal(0, 18, size=(max(2, height // 8), max(2, width // 8), 3)).clip(-127, 127) + 128
    fine = np.asarray(Image.fromarray(fine.astype(np.uint8)).resize((width, height), Image.BILINEAR), np.float32)
    return smooth + (fine - 128.0)


def _shape_polygon(rng: np.random.Generator, shape: str, size: float) -> np.ndarray:
    """(V, 2) polygon centred on the origin whose circumscribed diameter is about `size` pixels."""
    radius = size / 2.0
    angle = rng.uniform(0.0, 2.0 * math.pi)
    if shape == "circle":
        t = np.linspace(0.0, 2.0 * math.pi, 32, endpoint=False) + angle
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "ellipse":
        # Axis ratio kept well away from 1 so an ellipse is never a circle.
        t = np.linspace(0.0, 2.0 * math.pi, 32, endpoint=False)
        local = np.stack([radius * np.cos(t), radius * rng.uniform(0.35, 0.6) * np.sin(t)], axis=1)
        return local @ _rotation(angle).T
    if shape == "square":
        t = angle + np.arange(4) * (math.pi / 2.0)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "triangle":
        t = angle + np.arange(3) * (2.0 * math.pi / 3.0) + rng.uniform(-0.15, 0.15, size=3)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    raise ValueError(f"unknown shape '{shape}'; valid: {sorted(SHAPE_CATEGORY_IDS)}")


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _limb(p: np.ndarray, q: np.ndarray, half_width: float) -> np.ndarray:
    """Quad around segment p->q, extended by half_width at both ends so the joints lie inside the mask."""
    d = (q - p) / max(float(np.linalg.norm(q - p)), 1e-6)
    n = np.array([-d[1], d[0]]) * half_width
    a, b = p - d * half_width, q + d * half_width
    return np.stack([a + n, b + n, b - n, a - n])


def _walker(rng: np.random.Generator, height: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Stick figure of the given height around the origin: (polygons, (K, 2) keypoints in KEYPOINT_NAMES order).

    Image y points down; angles are measured from +x towards +y. The figure's left limbs point to +x.
    """
    s = height
    pelvis, neck = np.array([0.0, 0.0]), np.array([0.0, -0.3 * s])
    head_r = 0.1 * s
    head = neck + np.array([0.0, -0.9 * head_r])
    joints = {"head": head, "neck": neck, "pelvis": pelvis}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        # Left and right limbs are drawn independently (articulation), then the right side is mirrored to -x;
        # the angle ranges keep each hand and foot on its own side of the body axis.
        a1 = math.radians(rng.uniform(-60, 75))
        a2 = float(np.clip(a1 + math.radians(rng.uniform(-50, 50)), math.radians(-80), math.radians(90)))
        b1 = math.radians(rng.uniform(55, 85))
        b2 = float(np.clip(b1 + math.radians(rng.uniform(-20, 25)), math.radians(45), math.radians(95)))
        elbow = neck + 0.16 * s * np.array([sign * math.cos(a1), math.sin(a1)])
        hand = elbow + 0.15 * s * np.array([sign * math.cos(a2), math.sin(a2)])
        knee = pelvis + 0.24 * s * np.array([sign * math.cos(b1), math.sin(b1)])
        foot = knee + 0.22 * s * np.array([sign * math.cos(b2), math.sin(b2)])
        joints.update({f"{side}_elbow": elbow, f"{side}_hand": hand, f"{side}_knee": knee, f"{side}_foot": foot})
    keypoints = np.stack([joints[name] for name in KEYPOINT_NAMES])
    limb_w = max(1.2, 0.04 * s)
    t = np.linspace(0.0, 2.0 * math.pi, 16, endpoint=False)
    polygons = [head + head_r * np.stack([np.cos(t), np.sin(t)], axis=1), _limb(neck, pelvis, max(2.0, 0.07 * s))]
    for a, b in ((1, 2), (1, 3), (2, 4), (3, 5), (6, 7), (6, 8), (7, 9), (8, 10)):  # 0-based: arms and legs
        polygons.append(_limb(keypoints[a], keypoints[b], limb_w))
    rotation = _rotation(rng.uniform(-0.3, 0.3))  # a slight lean; the figure stays upright
    return [p @ rotation.T for p in polygons], keypoints @ rotation.T


def _place(
    rng: np.random.Generator, polygons: list[np.ndarray], keypoints: np.ndarray | None, height: int, width: int
) -> tuple[list[np.ndarray], np.ndarray | None] | None:
    """Translates the shape to a random spot fully inside the image (coordinates rounded as stored); None if too big."""
    points = np.concatenate(polygons)
    low = np.array([0.5, 0.5]) - points.min(axis=0)
    high = np.array([width - 0.5, height - 0.5]) - points.max(axis=0)
    if np.any(high < low):
        return None
    shift = rng.uniform(low, high)
    moved = [np.round(p + shift, 2) for p in polygons]
    return moved, (None if keypoints is None else np.round(keypoints + shift, 2))


def _sample_object(rng: np.random.Generator, height: int, width: int) -> _Instance | None:
    short = min(height, width)
    names = [*SHAPE_CATEGORY_IDS, "walker"]
    name = names[int(rng.integers(len(names)))]
    if name == "walker":
        size = math.exp(rng.uniform(math.log(_MIN_WALKER_HEIGHT), math.log(max(_MIN_WALKER_HEIGHT, 0.75 * short))))
        polygons, keypoints = _walker(rng, size)
        category_id = WALKER_CATEGORY_ID
    else:
        # Log-uniform size: many small objects, a few as large as half the image's short side.
        size = math.exp(rng.uniform(math.log(_MIN_SHAPE_SIZE), math.log(max(_MIN_SHAPE_SIZE, 0.5 * short))))
        polygons, keypoints = [_shape_polygon(rng, name, size)], None
        category_id = SHAPE_CATEGORY_IDS[name]
    placed = _place(rng, polygons, keypoints, height, width)
    if placed is None:
        return None
    polygons, keypoints = placed
    return _Instance(category_id, polygons, _rasterize(polygons, height, width), keypoints=keypoints)


def _sample_crowd(rng: np.random.Generator, height: int, width: int) -> _Instance:
    """A cluster of 4-9 small same-category shapes, annotated as one iscrowd region."""
    name = list(SHAPE_CATEGORY_IDS)[int(rng.integers(len(SHAPE_CATEGORY_IDS)))]
    spread = min(rng.uniform(8.0, 18.0), 0.5 * min(height, width) - 8.0)  # the cluster must fit small images too
    margin = spread + 7.0
    center = rng.uniform([margin, margin], [width - margin, height - margin])
    pieces = []
    for _ in range(int(rng.integers(4, 10))):
        polygon = _shape_polygon(rng, name, rng.uniform(6.0, 11.0))
        offset = spread * math.sqrt(rng.random()) * np.array(_unit(rng.uniform(0.0, 2.0 * math.pi)))
        polygon = np.round(np.clip(polygon + center + offset, 0.5, [width - 0.5, height - 0.5]), 2)
        pieces.append(_rasterize([polygon], height, width))
    full = np.logical_or.reduce(pieces)
    return _Instance(SHAPE_CATEGORY_IDS[name], [], full, iscrowd=True, pieces=pieces)


def _unit(angle: float) -> tuple[float, float]:
    return math.cos(angle), math.sin(angle)


def _keeps_others_visible(instances: list[_Instance], new_mask: np.ndarray) -> bool:
    for inst in instances:
        left = int(np.count_nonzero(inst.visible & ~new_mask))
        if left < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * inst.full_area):
            return False
    return True


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> None:
    """Paints a random colour (contrasting with what lies under it) with a slight linear shading."""
    ys, xs = np.nonzero(mask)
    under = canvas[ys, xs].mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(8):  # the colour is independent of the category; only contrast with the backdrop is sought
        colour = rng.uniform(0.0, 255.0, size=3)
        dist = float(np.linalg.norm(colour - under))
        if dist > best_dist:
            best, best_dist = colour, dist
        if dist >= 90.0:
            break
    dx, dy = _unit(rng.uniform(0.0, 2.0 * math.pi))
    span = max(int(np.ptp(xs)), int(np.ptp(ys)), 1)
    ramp = ((xs - xs.mean()) * dx + (ys - ys.mean()) * dy) / span * rng.uniform(0.0, 40.0)
    canvas[ys, xs] = best + ramp[:, None]


def _compose_image(
    rng: np.random.Generator, min_side: int, max_side: int, with_crowd: bool
) -> tuple[np.ndarray, list[_Instance]]:
    """Draws one scene: (H, W, 3) uint8 pixels and the instances in drawing order (visible masks final)."""
    height, width = _sample_image_size(rng, min_side, max_side)
    canvas = _background(rng, height, width)
    instances: list[_Instance] = []
    if with_crowd:
        crowd = _sample_crowd(rng, height, width)
        for piece in crowd.pieces:
            _paint(rng, canvas, piece)
        instances.append(crowd)
    target = int(rng.integers(1, MAX_OBJECTS + 1))
    placed = 0
    for _ in range(4 * target):
        if placed == target:
            break
        inst = _sample_object(rng, height, width)
        if inst is None or inst.full_area < MIN_VISIBLE_PIXELS:
            continue
        # An object that would hide too much of an earlier one is not drawn at all, so that every drawn object
        # is annotated (no unlabelled foreground) and every annotation shows enough of its object.
        if not _keeps_others_visible(instances, inst.full):
            continue
        for prev in instances:
            prev.visible &= ~inst.full
        _paint(rng, canvas, inst.full)
        instances.append(inst)
        placed += 1
    noise = rng.normal(0.0, rng.uniform(2.0, 8.0), size=canvas.shape)
    pixels = np.clip(np.rint(canvas + noise), 0, 255).astype(np.uint8)
    return pixels, instances
