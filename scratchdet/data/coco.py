"""COCO-format detection data: parse and validate the annotation JSON, clean it for training, serve samples.

Two views of the same file:
- `CocoDetection.coco` is the pycocotools index of the file as written (crowd regions and out-of-image boxes kept),
  the ground truth that COCOeval needs.
- The samples are cleaned for training: crowd regions excluded, boxes clipped to the image, unusable boxes and
  polygons dropped. Every cleaning action is counted in `DatasetSummary`, which the trainer writes to the run folder.

Structural problems (bad JSON, duplicate or unknown ids, negative box sizes, missing image files, ...) raise
`DataError` naming the file, image id, annotation id and field.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import operator
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from scratchdet.data.masks import decode_mask
from scratchdet.errors import ConfigError, DataError

# transform(image, target, rng) -> (image, target); see scratchdet/data/transforms.py.
Transform = Callable[[torch.Tensor, dict, random.Random], tuple[torch.Tensor, dict]]

_TOP_LEVEL_KEYS = ("images", "annotations", "categories")


@dataclass
class DatasetSummary:
    """What loading a dataset kept and dropped; every cleaning action is counted.

    Annotation counts cover the whole file (cleaning runs before the subset is drawn); each dropped annotation is
    counted in exactly one of crowd_excluded, boxes_outside_dropped, degenerate_boxes_dropped and
    invalid_polygons_dropped, checked in that order. `boxes_clipped` counts kept boxes that were clipped.
    `polygon_parts_dropped` counts short polygons removed from annotations that kept at least one valid polygon.
    `annotations_used` counts the instances in the images this dataset yields. Polygons are checked only when
    masks are loaded.
    """

    path: str
    images_total: int = 0
    images_used: int = 0
    images_without_annotations: int = 0  # skipped for training only; evaluation keeps every image
    annotations_total: int = 0
    crowd_excluded: int = 0
    boxes_clipped: int = 0
    boxes_outside_dropped: int = 0
    degenerate_boxes_dropped: int = 0
    invalid_polygons_dropped: int = 0
    subset: int | None = None
    polygon_parts_dropped: int = 0
    annotations_used: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-serializable dict of all counts."""
        return asdict(self)


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `true` is never a valid id or size in a COCO file.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # Not math.isfinite: it raises on ints beyond float range such as 10**400 (tests/reliability/test_fuzz_coco.py).
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _all_finite_numbers(values: list) -> bool:
    # Fast path: sum() runs in C and raises TypeError on any non-number, and NaN/inf propagate to the total.
    # Polygons hold tens of millions of coordinates on COCO, so a per-element Python check is too slow.
    try:
        total = sum(values)
    except TypeError:
        return False
    return _is_number(total)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Parsing and indexing a COCO-sized file allocates tens of millions of acyclic objects; each allocation burst
    # triggers a full cyclic-GC pass over all of them, a third of the load time on train2017-sized files.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        raise DataError("annotation file not found; check the dataset path in the config", path=path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} (a truncated file ends this way; "
            "re-download or re-export it)",
            path=path,
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"not a UTF-8 JSON file ({e.reason} at byte {e.start}); re-export it as UTF-8", path=path
        ) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits, nesting too deep
        raise DataError(f"not a readable JSON file: {e}; re-export it", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read the annotation file: {e.strerror or e}", path=path) from None


def _entries(data: dict, key: str, path: str) -> list[dict]:
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(f"top-level '{key}' must be a list, got {type(entries).__name__}", path=path, field=key)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{key}[{i}] must be an object, got {type(entry).__name__}", path=path, field=key)
    return entries


def _unique_ids(entries: list[dict], key: str, path: str) -> None:
    kind = {"images": "image", "annotations": "annotation", "categories": "category"}[key]
    seen: set[int] = set()
    for i, entry in enumerate(entries):
        entry_id = entry.get("id")
        if not _is_int(entry_id):
            msg = f"{key}[{i}] has no integer 'id' (got {entry_id!r}); every {kind} needs a unique integer id"
            raise DataError(msg, path=path, field="id")
        if entry_id in seen:
            ids = {"image_id": entry_id} if kind == "image" else {"ann_id": entry_id} if kind == "annotation" else {}
            msg = f"duplicate {kind} id {entry_id} ({key}[{i}] repeats an earlier id); ids must be unique, fix the file"
            raise DataError(msg, path=path, field="id", **ids)
        seen.add(entry_id)


def _validate_image(img: dict, path: str) -> None:
    for field in ("width", "height"):
        value = img.get(field)
        if not _is_int(value) or value <= 0:
            msg = f"image has no positive integer '{field}' (got {value!r}); set it to the image's size in pixels"
            raise DataError(msg, path=path, image_id=img["id"], field=field)
    name = img.get("file_name")
    if not isinstance(name, str) or not name:
        msg = f"image has no 'file_name' string (got {name!r}); set it to the path relative to the image directory"
        raise DataError(msg, path=path, image_id=img["id"], field="file_name")


def _validate_segmentation(seg: Any, img: dict, ann_id: int, path: str) -> None:
    where = {"path": path, "image_id": img["id"], "ann_id": ann_id, "field": "segmentation"}
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not _all_finite_numbers(poly):
                raise DataError(
                    f"malformed segmentation: polygon {i} must be a list of finite numbers "
                    "[x1, y1, x2, y2, ...]; fix the annotation",
                    **where,
                )
            if len(poly) % 2:
                raise DataError(
                    f"malformed segmentation: polygon {i} has an odd number of coordinates ({len(poly)}); "
                    "polygons are flat [x1, y1, x2, y2, ...] lists",
                    **where,
                )
            side = max(img["width"], img["height"])  # pycocotools' memory grows with coordinates; 1e12 segfaults
            if poly and (min(poly) < -side or max(poly) > 2 * side):
                msg = f"polygon {i} has points far outside the {img['width']}x{img['height']} image (allowed: "
                raise DataError(f"malformed segmentation: {msg}[-{side}, {2 * side}] px); fix the annotation", **where)
        return
    if not isinstance(seg, dict):
        raise DataError(
            f"malformed segmentation: expected a polygon list or an RLE object, got {type(seg).__name__}", **where
        )
    size, counts = seg.get("size"), seg.get("counts")
    expected = [img["height"], img["width"]]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) for v in size):
        raise DataError(f"malformed RLE segmentation: 'size' must be [height, width], got {size!r}", **where)
    if size != expected:
        raise DataError(
            f"RLE size {size} does not match the image's [height, width] {expected}; the mask was "
            "encoded for a different image size, re-encode it",
            **where,
        )
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != expected[0] * expected[1]:
            raise DataError(
                f"malformed uncompressed RLE: 'counts' must be non-negative integers summing to "
                f"height*width = {expected[0] * expected[1]}",
                **where,
            )
    elif not isinstance(counts, (str, bytes)) or not counts:
        raise DataError(
            "malformed RLE segmentation: 'counts' must be a compressed string or a list of integers", **where
        )


def _validate_annotation(ann: dict, images: dict[int, dict], cat_ids: set[int], path: str) -> None:
    ann_id = ann["id"]
    image_id = ann.get("image_id")
    if not _is_int(image_id) or image_id not in images:
        msg = f"annotation refers to unknown image id {image_id!r}; add the image to 'images' or remove the annotation"
        raise DataError(msg, path=path, ann_id=ann_id, field="image_id")
    img = images[image_id]
    where = {"path": path, "image_id": image_id, "ann_id": ann_id}
    cat_id = ann.get("category_id")
    if not _is_int(cat_id) or cat_id not in cat_ids:
        raise DataError(
            f"annotation has unknown category id {cat_id!r} (known: {sorted(cat_ids)}); add the category "
            "to 'categories' or fix the annotation",
            field="category_id",
            **where,
        )
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise DataError(f"bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}", field="bbox", **where)
    if bbox[2] < 0 or bbox[3] < 0:
        raise DataError(
            f"negative box size: bbox {bbox} has width {bbox[2]} and height {bbox[3]}; COCO boxes are "
            "[x, y, width, height] with width, height >= 0, fix the exporter",
            field="bbox",
            **where,
        )
    iscrowd = ann.setdefault("iscrowd", 0)
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        raise DataError(f"'iscrowd' must be 0 or 1, got {iscrowd!r}", field="iscrowd", **where)
    # COCOeval reads 'area' (area ranges) and 'iscrowd' of every ground-truth annotation; default them here so a
    # box-only file evaluates instead of failing deep inside pycocotools. Missing area = box area.
    area = ann.setdefault("area", float(bbox[2] * bbox[3]))
    if not _is_number(area) or area < 0:
        raise DataError(f"'area' must be a finite number >= 0, got {area!r}", field="area", **where)
    if "segmentation" in ann:
        _validate_segmentation(ann["segmentation"], img, ann_id, path)


@_gc_paused()
def load_coco_json(json_path: str | os.PathLike) -> dict:
    """Read a COCO annotation file and validate its structure.

    Checks top-level keys, unique image/annotation/category ids, that annotations refer to known images and
    categories, boxes ([x, y, width, height], absolute pixels) of 4 finite numbers with non-negative size, positive
    integer image sizes and well-formed segmentations (polygons or RLE of the image's size). Fills in the optional
    fields COCOeval needs: missing 'iscrowd' = 0, missing 'area' = box width * height. Runs in linear time.

    Args:
        json_path: path of the annotation JSON.

    Returns:
        The parsed dict, otherwise as written in the file.

    Raises:
        DataError: naming the file, image id, annotation id and field of the first problem found.
    """
    path = str(json_path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(
            f"top level must be a JSON object with {list(_TOP_LEVEL_KEYS)}, got {type(data).__name__}", path=path
        )
    for key in _TOP_LEVEL_KEYS:
        if key not in data:
            raise DataError(
                f"missing top-level '{key}'; a COCO file needs {list(_TOP_LEVEL_KEYS)}", path=path, field=key
            )
    entries = {key: _entries(data, key, path) for key in _TOP_LEVEL_KEYS}
    for key in _TOP_LEVEL_KEYS:
        _unique_ids(entries[key], key, path)
    for cat in entries["categories"]:
        if not isinstance(cat.get("name"), str):
            raise DataError(
                f"category {cat['id']} has no 'name' string (got {cat.get('name')!r})", path=path, field="name"
            )
    images = {img["id"]: img for img in entries["images"]}
    for img in entries["images"]:
        _validate_image(img, path)
    cat_ids = {cat["id"] for cat in entries["categories"]}
    for ann in entries["annotations"]:
        _validate_annotation(ann, images, cat_ids, path)
    return data


def _build_coco(data: dict) -> COCO:
    # Build the index from the validated dict: no second read of a file that can be hundreds of MB, and no
    # "creating index..." prints in the training log.
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass
class _Instances:
    """The usable instances of one image, in file order."""

    boxes: np.ndarray  # float32 [N, 4], XYXY absolute pixels, clipped to the image
    labels: np.ndarray  # int64 [N], contiguous labels 1..K
    segmentations: list  # N cleaned segmentations (polygon lists or RLE dicts); empty when masks are not loaded
    ann_ids: list[int]


def _clean_image(
    img: dict,
    anns: list[dict],
    cat_id_to_label: dict[int, int],
    load_masks: bool,
    summary: DatasetSummary,
) -> _Instances:
    width, height = img["width"], img["height"]
    boxes, labels, segs, ann_ids = [], [], [], []
    for ann in anns:
        if ann["iscrowd"]:
            # Crowd regions are "ignore" areas for COCOeval, not instances to learn (Detectron does the same).
            summary.crowd_excluded += 1
            continue
        x, y, w, h = ann["bbox"]
        x1, y1, x2, y2 = x, y, x + w, y + h
        # A zero-size box is degenerate wherever it lies; "outside" means a real box with no overlap.
        if w > 0 and h > 0 and (x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0):
            summary.boxes_outside_dropped += 1
            continue
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
        # torchvision's detectors raise on zero-size boxes, and sub-pixel ones give extreme log-size regression targets.
        if cx2 - cx1 < 1 or cy2 - cy1 < 1:
            summary.degenerate_boxes_dropped += 1
            continue
        seg = None
        if load_masks:
            if "segmentation" not in ann:
                where = {"path": summary.path, "image_id": img["id"], "ann_id": ann["id"], "field": "segmentation"}
                msg = "annotation has no 'segmentation' but masks are requested; pass load_masks=False or add masks"
                raise DataError(msg, **where)
            seg = ann["segmentation"]
            if isinstance(seg, list):
                # pycocotools reads a 4-number polygon as a box and rejects shorter ones: need >= 3 points.
                valid = [poly for poly in seg if len(poly) >= 6]
                if not valid:
                    summary.invalid_polygons_dropped += 1
                    continue
                summary.polygon_parts_dropped += len(seg) - len(valid)
                seg = valid
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            summary.boxes_clipped += 1
        boxes.append((cx1, cy1, cx2, cy2))
        labels.append(cat_id_to_label[ann["category_id"]])
        if load_masks:
            segs.append(seg)
        ann_ids.append(ann["id"])
    return _Instances(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        segmentations=segs,
        ann_ids=ann_ids,
    )


class CocoDetection(torch.utils.data.Dataset):
    """Images and instance targets from a COCO-format dataset.

    Samples are `(image, target)`: image float32 [3, H, W] RGB in [0, 1]; target has "boxes" float32 [N, 4] (XYXY,
    absolute pixels), "labels" int64 [N] (1..K, 0 is background), "masks" uint8 [N, H, W] (when `load_masks`),
    "image_id" int, "orig_size" (H, W) and "file" (the image path). Index with an int, or with
    `(index, sample_seed)` so the sampler alone decides the augmentation (exact resume).

    Attributes:
        coco: pycocotools index of the file as written (crowd kept), for COCOeval.
        image_ids: the images this dataset yields, sorted by id.
        cat_id_to_label: dataset category id -> contiguous label 1..K, by sorted category id.
        label_to_cat_id: the inverse map.
        class_names: category names by label; class_names[0] == "__background__".
        num_classes: K + 1 (background included), torchvision's convention.
        summary: counts of what loading kept and dropped.
    """

    @_gc_paused()
    def __init__(
        self,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        train: bool,
        subset: int | None = None,
        subset_seed: int = 0,
        transform: Transform | None = None,
        load_masks: bool = True,
        check_files: bool = True,
    ):
        """Load, validate and clean the dataset.

        Args:
            json_path: COCO annotation JSON.
            image_dir: directory the images' 'file_name' entries are relative to.
            train: True skips images without usable annotations; False keeps every image (evaluation).
            subset: if set, use this many images, drawn with a seeded permutation so smaller subsets are nested in
                larger ones (the paper's 1k / 3.5k / 10k COCO experiments).
            subset_seed: seed of that permutation.
            transform: called as `transform(image, target, rng)`; rng is `random.Random(sample_seed)`.
            load_masks: decode instance masks; False for box-only training and datasets without masks.
            check_files: check that every yielded image file exists, so a bad path fails now, not hours in.

        Raises:
            DataError: on structural problems, missing image files or a subset larger than the usable images.
            ConfigError: if subset < 1.
        """
        self.json_path = str(json_path)
        self.image_dir = Path(image_dir)
        self.train = train
        self.transform = transform
        self.load_masks = load_masks
        data = load_coco_json(self.json_path)
        self.coco = _build_coco(data)

        cat_ids = sorted(self.coco.cats)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.class_names = ["__background__"] + [self.coco.cats[cat_id]["name"] for cat_id in cat_ids]
        self.num_classes = len(self.class_names)

        summary = DatasetSummary(self.json_path, len(self.coco.imgs), annotations_total=len(self.coco.anns))
        self._instances: dict[int, _Instances] = {}
        for image_id in sorted(self.coco.imgs):
            anns = self.coco.imgToAnns.get(image_id, [])
            inst = _clean_image(self.coco.imgs[image_id], anns, self.cat_id_to_label, load_masks, summary)
            if len(inst.labels) == 0:
                summary.images_without_annotations += 1
                if train:
                    continue
            self._instances[image_id] = inst
        self._finalize(summary, subset, subset_seed, check_files)

    def _finalize(self, summary: DatasetSummary, subset: int | None, subset_seed: int, check_files: bool) -> None:
        """Draws the subset from self._instances (sorted by id), checks files, completes the summary.

        Shared with subclasses that filter the instances first (data/keypoints.py).
        """
        self.image_ids = self._select_subset(list(self._instances), subset, subset_seed)
        if subset is not None:
            chosen = set(self.image_ids)
            self._instances = {i: inst for i, inst in self._instances.items() if i in chosen}
        if check_files:
            self._check_files()
        summary.images_used, summary.subset = len(self.image_ids), subset
        summary.annotations_used = sum(len(self._instances[i].labels) for i in self.image_ids)
        self.summary = summary

    def _select_subset(self, candidates: list[int], subset: int | None, seed: int) -> list[int]:
        if subset is None:
            return candidates
        if not _is_int(subset) or subset < 1:
            raise ConfigError(f"subset must be a positive number of images or None, got {subset!r}")
        if subset > len(candidates):
            usable = "usable (annotated) " if self.train else ""
            n = len(candidates)
            msg = f"subset of {subset} images requested but only {n} {usable}images are available; lower it to <= {n}"
            raise DataError(msg, path=self.json_path, field="subset")
        # One fixed permutation per seed, truncated: the first 1k images are also the first 1k of any larger subset.
        order = list(candidates)
        random.Random(seed).shuffle(order)
        return sorted(order[:subset])

    def _image_path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def missing_files(self) -> dict[int, Path]:
        """The yielded images whose file does not exist: image id -> expected path."""
        return {i: path for i in self.image_ids if not (path := self._image_path(i)).is_file()}

    def _check_files(self) -> None:
        missing = self.missing_files()
        if missing:
            first = next(iter(missing))
            raise DataError(
                f"image file not found: {missing[first]} ({len(missing)} of {len(self.image_ids)} "
                f"image files are missing); check image_dir ({self.image_dir}) and the 'file_name' entries",
                path=self.json_path,
                image_id=first,
                field="file_name",
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every yielded image from the JSON, in index order (aspect-ratio grouping)."""
        return [(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) for i in self.image_ids]

    def _read_image(self, image_id: int) -> torch.Tensor:
        img = self.coco.imgs[image_id]
        path = self._image_path(image_id)
        try:
            with Image.open(path) as pil:
                rgb = pil.convert("RGB")  # convert() forces the full decode, so truncation surfaces here
        except FileNotFoundError:
            raise DataError(
                f"image file not found: {path}", path=self.json_path, image_id=image_id, field="file_name"
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            # PIL reports truncated/corrupt files as OSError, some broken PNG chunks as SyntaxError.
            raise DataError(
                f"cannot decode image file {path}: {e}; the file is corrupt or truncated, replace it",
                path=self.json_path,
                image_id=image_id,
                field="file_name",
            ) from None
        for field, actual, expected in (("width", rgb.width, img["width"]), ("height", rgb.height, img["height"])):
            if actual != expected:
                raise DataError(
                    f"image file {path} is {rgb.width}x{rgb.height} (WxH) but the annotation says "
                    f"{img['width']}x{img['height']}; fix the JSON or the image",
                    path=self.json_path,
                    image_id=image_id,
                    field=field,
                )
        array = np.array(rgb, dtype=np.uint8)  # [H, W, 3], a writable copy
        return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)

    def _masks(self, image_id: int, inst: _Instances, height: int, width: int) -> torch.Tensor:
        masks = np.zeros((len(inst.segmentations), height, width), dtype=np.uint8)
        for k, (seg, ann_id) in enumerate(zip(inst.segmentations, inst.ann_ids, strict=True)):
            try:
                masks[k] = decode_mask(seg, height, width)
            except (TypeError, ValueError) as e:
                raise DataError(
                    f"cannot decode segmentation: {e}; re-encode the mask",
                    path=self.json_path,
                    image_id=image_id,
                    ann_id=ann_id,
                    field="segmentation",
                ) from None
        return torch.from_numpy(masks)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """Sample `key` (an index, or `(index, sample_seed)`; the seed defaults to the index)."""
        if isinstance(key, tuple):
            index, sample_seed = operator.index(key[0]), operator.index(key[1])
        else:
            index = sample_seed = operator.index(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images ({self.json_path})")
        image_id = self.image_ids[index]
        inst = self._instances[image_id]
        image = self._read_image(image_id)
        height, width = image.shape[-2:]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(inst.boxes.copy()),
            "labels": torch.from_numpy(inst.labels.copy()),
            "image_id": image_id,
            "orig_size": (int(height), int(width)),
            "file": str(self._image_path(image_id)),
        }
        if self.load_masks:
            target["masks"] = self._masks(image_id, inst, int(height), int(width))
        if self.transform is not None:
            image, target = self.transform(image, target, random.Random(sample_seed))
        return image, target
