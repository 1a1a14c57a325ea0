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
import dataclasses
import gc
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from scratchdet.data.detection import DetectionDataset, SummaryCounts, Transform, is_int
from scratchdet.data.masks import decode_mask, rle_string_total
from scratchdet.data.validate import (
    GT_AREA_POLICIES,
    Problem,
    annotation_id_note,
    area_problems,
    box_segmentation_problems,
    category_id_note,
    clean_eval_segmentations,
    duplicate_category_names,
    duplicate_image_files,
    geometric_areas,
    raise_first,
)
from scratchdet.errors import ConfigError, DataError

_TOP_LEVEL_KEYS = ("images", "annotations", "categories")


@dataclass
class DatasetSummary(SummaryCounts):
    """What loading a dataset kept and dropped; every cleaning action is counted.

    Annotation counts cover the whole file (cleaning runs before the subset is drawn); each dropped annotation is
    counted in exactly one of crowd_excluded, boxes_outside_dropped, degenerate_boxes_dropped and
    invalid_polygons_dropped, checked in that order. `boxes_clipped` counts kept boxes that were clipped.
    `polygon_parts_dropped` counts short polygons removed from annotations that kept at least one valid polygon.
    `annotations_used` counts the instances in the images this dataset yields. Polygons are checked only when
    masks are loaded.

    Checks of the whole file (data/validate.py): `area_mismatches` counts annotations whose stored area disagrees
    with their geometry (refused in an evaluation split unless data.gt_area says otherwise),
    `areas_from_geometry` the areas replaced under data.gt_area=geometry, `eval_polygon_parts_dropped` the short
    polygons removed from the evaluation copy of the masks. `categories` is the file's [id, name] list (compared
    across splits and with a run's checkpoint); `notes` are facts about the file that change nothing but are worth
    knowing (e.g. annotation ids that COCOeval cannot represent and that evaluation shifts).
    """

    crowd_excluded: int = 0
    boxes_outside_dropped: int = 0
    invalid_polygons_dropped: int = 0
    polygon_parts_dropped: int = 0
    area_mismatches: int = 0
    areas_from_geometry: int = 0
    eval_polygon_parts_dropped: int = 0
    categories: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)


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
        if not is_int(entry_id):
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
        if not is_int(value) or value <= 0:
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
    if not isinstance(size, list) or len(size) != 2 or not all(is_int(v) for v in size):
        raise DataError(f"malformed RLE segmentation: 'size' must be [height, width], got {size!r}", **where)
    if size != expected:
        raise DataError(
            f"RLE size {size} does not match the image's [height, width] {expected}; the mask was "
            "encoded for a different image size, re-encode it",
            **where,
        )
    if isinstance(counts, list):
        if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != expected[0] * expected[1]:
            raise DataError(
                f"malformed uncompressed RLE: 'counts' must be non-negative integers summing to "
                f"height*width = {expected[0] * expected[1]}",
                **where,
            )
    elif not isinstance(counts, (str, bytes)) or not counts:
        raise DataError(
            "malformed RLE segmentation: 'counts' must be a compressed string or a list of integers", **where
        )
    elif rle_string_total(counts) != expected[0] * expected[1]:
        # pycocotools would decode it into garbage or overrun its buffer, and its IoU can loop forever on it.
        raise DataError(
            f"malformed compressed RLE: 'counts' does not decode to height*width = {expected[0] * expected[1]} "
            "pixels (a corrupt or non-ASCII string, or one encoded for another size); re-encode the mask",
            **where,
        )


def _validate_annotation(ann: dict, images: dict[int, dict], cat_ids: set[int], path: str) -> None:
    ann_id = ann["id"]
    image_id = ann.get("image_id")
    if not is_int(image_id) or image_id not in images:
        msg = f"annotation refers to unknown image id {image_id!r}; add the image to 'images' or remove the annotation"
        raise DataError(msg, path=path, ann_id=ann_id, field="image_id")
    img = images[image_id]
    where = {"path": path, "image_id": image_id, "ann_id": ann_id}
    cat_id = ann.get("category_id")
    if not is_int(cat_id) or cat_id not in cat_ids:
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
    # COCOeval reads 'area' (area ranges) and 'iscrowd' of every ground-truth annotation; a missing area is filled
    # in by load_coco_json from the geometry, so a box-only file evaluates instead of failing inside pycocotools.
    area = ann.get("area")
    if area is not None and (not _is_number(area) or area < 0):
        raise DataError(f"'area' must be a finite number >= 0, got {area!r}", field="area", **where)
    if "segmentation" in ann:
        _validate_segmentation(ann["segmentation"], img, ann_id, path)


@_gc_paused()
def load_coco_json(json_path: str | os.PathLike) -> dict:
    """Read a COCO annotation file and validate its structure.

    Checks top-level keys, unique image/annotation/category ids, that annotations refer to known images and
    categories, boxes ([x, y, width, height], absolute pixels) of 4 finite numbers with non-negative size, positive
    integer image sizes and well-formed segmentations (polygons or RLE of the image's size). Fills in the optional
    fields COCOeval needs: missing 'iscrowd' = 0, missing 'area' = the area of the segmentation (polygon area or
    RLE pixel count), or box width * height without one (data/validate.py `geometric_areas`). Runs in linear time.

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
    # Missing area = the geometry's area (mask area when there is a segmentation, else box area): COCO's meaning.
    no_area = [ann for ann in entries["annotations"] if ann.get("area") is None]
    for ann, area in zip(no_area, geometric_areas(no_area, images).tolist(), strict=True):
        ann["area"] = area
    return data


def _build_coco(data: dict) -> COCO:
    # Build the index from the validated dict: no second read of a file that can be hundreds of MB, and no
    # "creating index..." prints in the training log.
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def audit_annotations(
    data: dict, summary: DatasetSummary, *, train: bool, segm_eval: bool, gt_area: str, contradictions: bool = True
) -> tuple[list[Problem], list[Problem]]:
    """Runs the whole-file checks of data/validate.py on a file loaded by `load_coco_json`; fills `summary`.

    In place: areas become the geometry's under gt_area="geometry"; with `segm_eval`, polygons of fewer than 3
    points are dropped from the annotations so both metric backends rasterize the same masks. Refused in every
    split: one image file under two image ids, one category name under two ids, a segmentation that contradicts its
    own box.

    Args:
        train: a training split (stored areas are unused in training: mismatches are counted, never refused).
        segm_eval: the split is scored with mask AP, so every annotation needs a rasterizable region.
        gt_area: data.gt_area: "check" refuses area mismatches in an evaluation split, "file" keeps the file's
            areas, "geometry" replaces every area by the geometry's.
        contradictions: run the checks refused in every split (False: `scratchdet data check`, which runs them
            once itself and still wants the cleaning counts).

    Returns:
        (every problem found, the ones loading must refuse).

    Raises:
        ConfigError: gt_area is not one of GT_AREA_POLICIES.
    """
    if gt_area not in GT_AREA_POLICIES:
        raise ConfigError(f"data.gt_area={gt_area!r} is not valid; choose one of {', '.join(GT_AREA_POLICIES)}")
    anns = data["annotations"]
    images = {img["id"]: img for img in data["images"]}
    summary.categories = [[cat["id"], cat["name"]] for cat in sorted(data["categories"], key=lambda c: c["id"])]
    for note in (annotation_id_note(anns), category_id_note(data["categories"])):
        if note:
            summary.notes.append(note)
    geometric = geometric_areas(anns, images)
    areas = area_problems(anns, geometric, images)
    summary.area_mismatches = len(areas)
    if gt_area == "geometry":
        for ann, area in zip(anns, geometric.tolist(), strict=True):
            ann["area"] = area
        summary.areas_from_geometry = len(anns)
    fatal = areas if gt_area == "check" and not train else []
    problems = list(areas)
    # Refused in every split: each gives a wrong number in training and in evaluation (data/validate.py).
    if contradictions:
        found = (
            duplicate_image_files(data["images"])
            + duplicate_category_names(data["categories"])
            + box_segmentation_problems(anns, images)
        )
        problems += found
        fatal = found + fatal
    if segm_eval:
        segs, summary.eval_polygon_parts_dropped = clean_eval_segmentations(anns)
        problems += segs
        fatal = fatal + segs
    return problems, fatal


def _no_usable_images_error(summary: DatasetSummary, what: str) -> DataError:
    reasons = {
        "images_without_annotations": "images without a usable annotation",
        "crowd_excluded": "crowd regions excluded",
        "boxes_outside_dropped": "boxes outside their image",
        "degenerate_boxes_dropped": "boxes under 1 px",
        "invalid_polygons_dropped": "annotations without a polygon of >= 3 points",
    }
    counts = summary.to_dict()
    why = ", ".join(f"{counts[k]} {text}" for k, text in reasons.items() if counts.get(k))
    return DataError(
        f"no usable training images: {summary.images_total} images, {summary.annotations_total} "
        f"annotations, none left after cleaning ({why or 'the file has no images'}); training needs at "
        f"least one image with a {what}",
        path=summary.path,
    )


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


class CocoDetection(DetectionDataset):
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
        segm_eval: bool = False,
        gt_area: str = "check",
        max_image_pixels: int | None = None,
        refuse_contradictions: bool = True,
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
            segm_eval: this split is scored with mask AP: every annotation needs a region pycocotools can
                rasterize (data/validate.py `clean_eval_segmentations`), checked now rather than at the first
                evaluation.
            gt_area: data.gt_area, what to do with stored areas that disagree with the geometry (see
                `audit_annotations`).
            max_image_pixels: data.max_image_pixels: images whose annotated width x height is larger are refused
                now (ImageTooLargeError), and by the reader; None = Pillow's limit (data/images.py).
            refuse_contradictions: False only for `scratchdet data check`, which lists those problems itself
                (see `audit_annotations`).

        Raises:
            DataError: on structural problems, missing image files, a subset larger than the usable images, a
                training split with no usable image, images above the pixel limit, a file that contradicts itself
                (one image file under two ids, one category name under two ids, a segmentation outside its box),
                or (evaluation split) an area or segmentation the metric would score wrongly.
            ConfigError: if subset < 1.
        """
        self.json_path = str(json_path)
        self.image_dir = Path(image_dir)
        self.train = train
        self.transform = transform
        self.load_masks = load_masks
        self.max_image_pixels = max_image_pixels
        data = load_coco_json(self.json_path)
        summary = DatasetSummary(self.json_path, len(data["images"]), annotations_total=len(data["annotations"]))
        self.problems, fatal = audit_annotations(
            data, summary, train=train, segm_eval=segm_eval, gt_area=gt_area, contradictions=refuse_contradictions
        )
        raise_first(fatal, self.json_path)
        self.coco = _build_coco(data)
        self.coco.source_path = self.json_path  # named by the metric code's errors (evaluation/backends.py)

        cat_ids = sorted(self.coco.cats)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.class_names = ["__background__"] + [self.coco.cats[cat_id]["name"] for cat_id in cat_ids]
        self.num_classes = len(self.class_names)

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

    def _finalize(
        self,
        summary: DatasetSummary,
        subset: int | None,
        subset_seed: int,
        check_files: bool,
        usable: str = "box of at least 1x1 px",
    ) -> None:
        """Draws the subset from self._instances (sorted by id), checks files, completes the summary.

        Shared with subclasses that filter the instances first (data/keypoints.py); `usable` says what a training
        image needs, for the error when none has it.

        Raises:
            DataError: a training split left with no image (before anything else is done with it); an image above
                the pixel limit (ImageTooLargeError).
        """
        if self.train and not self._instances:
            raise _no_usable_images_error(summary, usable)
        self.image_ids = self.select_subset(list(self._instances), subset, subset_seed)
        if subset is not None:
            chosen = set(self.image_ids)
            self._instances = {i: inst for i, inst in self._instances.items() if i in chosen}
        self.check_pixel_limit()
        if check_files:
            self.check_files(f"check image_dir ({self.image_dir}) and the 'file_name' entries")
        summary.images_used, summary.subset = len(self.image_ids), subset
        summary.annotations_used = sum(len(self._instances[i].labels) for i in self.image_ids)
        self.summary = summary

    def image_file(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def annotated_size(self, image_id: int) -> tuple[int, int]:
        img = self.coco.imgs[image_id]
        return img["width"], img["height"]

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

    def _target(self, image_id: int, image: torch.Tensor) -> dict:
        inst = self._instances[image_id]
        height, width = (int(v) for v in image.shape[-2:])
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(inst.boxes.copy()),
            "labels": torch.from_numpy(inst.labels.copy()),
            "image_id": image_id,
            "orig_size": (height, width),
            "file": str(self.image_file(image_id)),
        }
        if self.load_masks:
            target["masks"] = self._masks(image_id, inst, height, width)
        return target
