"""Checks of a COCO file whose every field parses but whose fields do not fit together or do not fit the metric.

`load_coco_json` (data/coco.py) refuses files that are structurally wrong. The checks here find annotations that
parse and still give a wrong number: a stored `area` that contradicts the box or mask (COCOeval bins objects by
`area` and divides OKS by it), segmentations pycocotools cannot rasterize in the evaluation split, and two splits
whose category ids name different things. Each returns every problem it finds, so `scratchdet data check` can list
them all with counts while dataset loading raises on the first (with the count).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util

from scratchdet.errors import DataError

GT_AREA_POLICIES = ("check", "file", "geometry")


@dataclass(frozen=True)
class Problem:
    """One annotation or image that loading refuses or changes; `kind` groups problems for counting."""

    kind: str
    message: str
    image_id: int | None = None
    ann_id: int | None = None
    field: str | None = None
    category_id: int | None = None

    def error(self, path: str, count: int = 1) -> DataError:
        """This problem as the DataError loading raises (with how many more of its kind there are)."""
        more = f" ({count - 1} more like it in this file; `scratchdet data check` lists them all)" if count > 1 else ""
        return DataError(
            self.message + more,
            path=path,
            image_id=self.image_id,
            ann_id=self.ann_id,
            field=self.field,
            category_id=self.category_id,
        )


def raise_first(problems: list[Problem], path: str) -> None:
    """Raises the first problem as a DataError naming how many there are; does nothing when there are none."""
    if problems:
        raise problems[0].error(path, len(problems))


def count_kinds(problems: Iterable[Problem]) -> dict[str, int]:
    return dict(Counter(p.kind for p in problems))


# --- areas -----------------------------------------------------------------------------------------------------------


def _polygon_areas(polygons: list[list[float]]) -> np.ndarray:
    """Shoelace area of every polygon (flat [x1, y1, x2, y2, ...] lists), in one vectorized pass.

    COCO's own `area` of a polygon instance is exactly the sum of its polygons' shoelace areas (checked on the
    official annotations of ../shared/data/coco_tiny: ratio 1.000 for every polygon annotation).
    """
    lengths = np.fromiter((len(p) // 2 for p in polygons), dtype=np.int64, count=len(polygons))
    total = int(lengths.sum())
    areas = np.zeros(len(polygons), dtype=np.float64)
    if total == 0:
        return areas
    flat = np.fromiter(
        itertools.chain.from_iterable(p[: 2 * (len(p) // 2)] for p in polygons), dtype=np.float64, count=2 * total
    )
    x, y = flat[0::2], flat[1::2]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nxt = np.arange(total) + 1
    nonempty = lengths > 0
    ends = starts[nonempty] + lengths[nonempty] - 1
    nxt[ends] = starts[nonempty]  # each polygon closes on its own first point
    cross = x * y[nxt] - x[nxt] * y
    areas[nonempty] = np.abs(np.add.reduceat(cross, starts[nonempty])) / 2.0
    return areas


SHOELACE_SUSPECT_FRACTION = 0.05  # polygon area below this fraction of the box area: rasterized instead


def geometric_areas(annotations: list[dict], images: Mapping[int, dict]) -> np.ndarray:
    """The area each annotation's geometry gives, in pixels: polygon area (sum of the polygons' shoelace areas;
    the rasterized pixel count where that is below 5% of the box, e.g. a self-intersecting polygon), RLE pixel
    count, or box width * height when there is no segmentation (COCO's convention for `area`).

    Annotations must have passed `load_coco_json`'s structural checks.
    """
    areas = np.zeros(len(annotations), dtype=np.float64)
    polygons, owners = [], []
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation")
        if isinstance(seg, list) and any(len(p) >= 6 for p in seg):
            polygons.extend(seg)
            owners.extend([i] * len(seg))
        elif isinstance(seg, dict):
            counts = seg["counts"]
            if isinstance(counts, list):  # uncompressed RLE: runs alternate background, foreground
                areas[i] = float(sum(counts[1::2]))
            else:
                rle = {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
                areas[i] = float(mask_util.area(rle))
        else:
            _, _, w, h = ann["bbox"]
            areas[i] = float(w) * float(h)
    if polygons:
        areas += np.bincount(np.asarray(owners), weights=_polygon_areas(polygons), minlength=len(annotations))
        # A self-intersecting polygon (a figure 8) has a shoelace area near 0 while pycocotools fills both lobes; an
        # area far below the box's is rasterized to tell the two apart (rare: thin diagonal objects, real figure 8s).
        for i in sorted(set(owners)):
            _, _, w, h = annotations[i]["bbox"]
            if areas[i] < SHOELACE_SUSPECT_FRACTION * w * h:
                areas[i] = _raster_area(annotations[i]["segmentation"], images[annotations[i]["image_id"]])
    return areas


def _raster_area(polygons: list, image: dict) -> float:
    """Pixels pycocotools fills for the polygons (of >= 3 points) of one annotation."""
    valid = [p for p in polygons if len(p) >= 6]
    return float(mask_util.area(mask_util.merge(mask_util.frPyObjects(valid, image["height"], image["width"]))))


def area_tolerance(geometric: np.ndarray) -> np.ndarray:
    """How far a stored area may lie from the geometric one, in pixels: 10% plus a boundary band.

    Exporters that rasterize masks before measuring them differ from the polygon area by about half a pixel along
    the outline (COCO's polygon areas are exact; rasterized ones differ by up to 32% on coco_tiny's small objects),
    hence the 4 * sqrt(area) + 4 term. A box area stored for a mask instance (area = w * h, about 1.6x the mask area
    on COCO) is outside this band for all but tiny objects.
    """
    return 0.1 * geometric + 4.0 * np.sqrt(geometric) + 4.0


def _agrees_with_raster(stored: float, polygons: list, image: dict) -> bool:
    # Files made from masks (and the synthetic set) store the pixel count of the rasterized polygon, which can
    # differ from the polygon's area by more than the band on thin shapes. Checked only where the polygon area
    # disagreed, so the cost stays off the common path.
    if not any(len(p) >= 6 for p in polygons):
        return False
    raster = _raster_area(polygons, image)
    return abs(stored - raster) <= float(area_tolerance(np.array([raster]))[0])


def area_problems(annotations: list[dict], geometric: np.ndarray, images: Mapping[int, dict]) -> list[Problem]:
    """Non-crowd annotations whose stored `area` disagrees with their geometry beyond `area_tolerance`: with the
    polygon area and with the rasterized polygon's pixel count, for polygon segmentations.

    Crowd regions are exempt: COCOeval ignores them whatever their area, and COCO's own crowd areas differ from
    their RLE pixel count (by up to 1.8x in coco_tiny's official annotations).
    """
    stored = np.fromiter((float(a["area"]) for a in annotations), dtype=np.float64, count=len(annotations))
    crowd = np.fromiter((bool(a.get("iscrowd")) for a in annotations), dtype=bool, count=len(annotations))
    bad = np.flatnonzero((np.abs(stored - geometric) > area_tolerance(geometric)) & ~crowd)
    problems = []
    for i in bad.tolist():
        ann = annotations[i]
        seg = ann.get("segmentation")
        if isinstance(seg, list) and _agrees_with_raster(stored[i], seg, images[ann["image_id"]]):
            continue
        source = "segmentation" if ann.get("segmentation") else "box"
        problems.append(
            Problem(
                "area_mismatch",
                f"stored area {stored[i]:.6g} px disagrees with the {source}'s area {geometric[i]:.6g} px; "
                "COCOeval bins objects by this field (small/medium/large, and ignores areas beyond 1e10) and OKS "
                "divides by it. Fix the exporter, or set data.gt_area=geometry (use the areas of the geometry) or "
                "data.gt_area=file (keep the file's values)",
                image_id=ann["image_id"],
                ann_id=ann["id"],
                field="area",
            )
        )
    return problems


# --- segmentations of the evaluation split ---------------------------------------------------------------------------


def clean_eval_segmentations(annotations: list[dict]) -> tuple[list[Problem], int]:
    """Makes the evaluation split's segmentations rasterizable by both metric backends, with training's rule.

    Training drops polygons of fewer than 3 points (data/coco.py `_clean_image`); they enclose no area, and
    pycocotools refuses them (a first polygon of 4 numbers is even read as a box). Here they are dropped from the
    evaluation copy too, in place, so pycocotools and faster-coco-eval score the same masks. An annotation left
    with no region at all (`[]`, `[[]]`, only short polygons, or a crowd region / instance without
    'segmentation') cannot be scored as a mask: it is returned as a problem, and loading refuses the file.

    Returns:
        (problems, number of short polygons dropped from annotations that keep a valid one).
    """
    problems: list[Problem] = []
    dropped = 0
    for ann in annotations:
        where = {"image_id": ann["image_id"], "ann_id": ann["id"], "field": "segmentation"}
        kind = "crowd region" if ann.get("iscrowd") else "instance"
        if "segmentation" not in ann:
            problems.append(
                Problem(
                    "unusable_eval_segmentation",
                    f"{kind} has no 'segmentation', but mask AP (segm) needs one for every ground "
                    "truth annotation; add it, or evaluate boxes only (model.arch=faster_rcnn)",
                    **where,
                )
            )
            continue
        seg = ann["segmentation"]
        if not isinstance(seg, list):
            continue  # RLE, validated by load_coco_json
        valid = [poly for poly in seg if len(poly) >= 6]
        if not valid:
            shape = "an empty list" if not seg else f"{len(seg)} polygon(s) of fewer than 3 points"
            problems.append(
                Problem(
                    "unusable_eval_segmentation",
                    f"{kind}'s segmentation is {shape}: no region pycocotools can rasterize, so "
                    "mask AP cannot score it (training drops such annotations); fix or remove it",
                    **where,
                )
            )
        elif len(valid) != len(seg):
            dropped += len(seg) - len(valid)
            ann["segmentation"] = valid
    return problems, dropped


# --- ids ------------------------------------------------------------------------------------------------------------


def annotation_id_note(annotations: list[dict]) -> str | None:
    """A note when annotation ids include values < 1, which COCOeval cannot represent (it stores the matched
    ground truth's id and reads 0 as "unmatched"; cocoapi#507). scratchdet's metric code evaluates a copy with
    shifted ids (evaluation/backends.py `metric_ground_truth`), so the note is informational."""
    low = [a["id"] for a in annotations if a["id"] < 1]
    if not low:
        return None
    return (
        f"{len(low)} annotation id(s) < 1 (smallest {min(low)}); COCOeval reads a matched id of 0 as unmatched, so "
        "scratchdet evaluates a copy whose annotation ids are shifted to start at 1 (other COCO tools would "
        "score this file wrongly)"
    )


def category_id_note(categories: list[dict]) -> str | None:
    """A note when category ids lie outside 1..2**31-1 (64-bit hash ids some exporters write, or 0): both metric
    backends lose a category with ids beyond int32 (evaluation/backends.py `metric_view`), so scratchdet evaluates a
    copy whose category ids are renumbered 1..K in their order, and results it writes keep the file's ids."""
    odd = sorted(c["id"] for c in categories if not 1 <= c["id"] <= 2**31 - 1)
    if not odd:
        return None
    shown = ", ".join(map(str, odd[:5])) + (", ..." if len(odd) > 5 else "")
    return (
        f"{len(odd)} category id(s) outside 1..2**31-1 ({shown}; field 'id' of 'categories'); COCOeval and "
        "faster-coco-eval cannot hold ids beyond 2**31-1, so scratchdet evaluates a copy whose category ids are "
        "renumbered 1..K in their order (written results keep the file's ids; other COCO tools may score this file "
        "wrongly)"
    )


# --- one file under two image ids, one name under two category ids ---------------------------------------------------


def duplicate_image_files(images: list[dict]) -> list[Problem]:
    """Images whose `file_name` names a file an earlier image already names (after os.path.normpath, so "./a.jpg"
    and "a.jpg" are one file).

    Two image ids for one picture split its objects between them: COCOeval scores a detection of an object
    annotated under the other id as a false positive (two ids with one object each, a detector that finds both
    objects on both ids: 75.2 AP in both backends instead of 100), and training teaches each object as background
    in the other entry. LIVECell's files had 65
    such images. There is no right way to score it, so loading refuses it: merge the entries.
    """
    first: dict[str, int] = {}
    problems = []
    for img in images:
        key = os.path.normpath(img["file_name"])
        if key in first:
            problems.append(
                Problem(
                    "duplicate_image_file",
                    f"image ids {first[key]} and {img['id']} both name the file {img['file_name']!r}: one picture "
                    "under two ids scores each id's objects as false positives on the other and trains them as "
                    "background; merge the two entries (their annotations under one image id)",
                    image_id=img["id"],
                    field="file_name",
                )
            )
        else:
            first[key] = img["id"]
    return problems


def duplicate_category_names(categories: list[dict]) -> list[Problem]:
    """Categories whose `name` an earlier category (by file order) already has.

    A detector has one class per category id, so a class under two ids (merged exports, a Roboflow root category
    named like a class) becomes two classes that split its instances; COCO AP is per id, and a perfect detector
    that reports the class under one of the ids scores 61 AP instead of 100 (bad-inputs c03). Loading refuses it:
    give the class one id.
    """
    first: dict[str, int] = {}
    problems = []
    for cat in categories:
        name = cat["name"]
        if name in first:
            problems.append(
                Problem(
                    "duplicate_category_name",
                    f"category ids {first[name]} and {cat['id']} are both named {name!r}: a detector would learn "
                    "and be scored on two classes for one; give the class one id (relabel the annotations of the "
                    "other and remove it), or rename one if they are different classes",
                    field="name",
                    category_id=cat["id"],
                )
            )
        else:
            first[name] = cat["id"]
    return problems


# --- a segmentation that contradicts its own box --------------------------------------------------------------------

# A segmentation is refused when less than this fraction of its extent lies inside its box (both grown by
# BOX_SLACK_PX). Box-contains-mask is COCO's relation (the bbox is the mask's extent: on the official annotations of
# ../shared/data/coco_tiny the IoU of the two is at least 0.958), and it also holds for amodal boxes around a
# partly visible mask; polygons in 0..1 units, masks outside their box and a [0, 0, 0, 0] box beside a real polygon
# have no part of the extent inside the box.
BOX_SEGMENTATION_MIN_INSIDE = 0.5
BOX_SLACK_PX = 1.0  # rasterization and rounding: a pixel each side, so 1-2 px objects are not flagged for rounding


def segmentation_extents(annotations: list[dict], images: Mapping[int, dict]) -> np.ndarray:
    """[N, 4] XYXY extent of each annotation's segmentation (polygons of >= 3 points; RLE: pycocotools' toBbox);
    NaN rows for annotations without a usable segmentation. Annotations must have passed load_coco_json."""
    extents = np.full((len(annotations), 4), np.nan)
    polygons, owners = [], []
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            valid = [p for p in seg if len(p) >= 6]
            polygons.extend(valid)
            owners.extend([i] * len(valid))
        elif isinstance(seg, dict):
            image = images[ann["image_id"]]
            counts = seg["counts"]
            if isinstance(counts, list):
                rle = mask_util.frPyObjects(seg, image["height"], image["width"])
            else:
                rle = {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
            if mask_util.area(rle) > 0:
                x, y, w, h = mask_util.toBbox(rle).tolist()
                extents[i] = (x, y, x + w, y + h)
    if polygons:
        lengths = np.fromiter((len(p) // 2 for p in polygons), dtype=np.int64, count=len(polygons))
        flat = np.fromiter(
            itertools.chain.from_iterable(p[: 2 * (len(p) // 2)] for p in polygons),
            dtype=np.float64,
            count=2 * int(lengths.sum()),
        )
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        x, y = flat[0::2], flat[1::2]
        per_polygon = np.stack(
            [
                np.minimum.reduceat(x, starts),
                np.minimum.reduceat(y, starts),
                np.maximum.reduceat(x, starts),
                np.maximum.reduceat(y, starts),
            ],
            axis=1,
        )
        owners_arr = np.asarray(owners)
        agg = np.full((len(annotations), 4), np.nan)
        agg[:, :2], agg[:, 2:] = np.inf, -np.inf
        np.minimum.at(agg[:, 0], owners_arr, per_polygon[:, 0])
        np.minimum.at(agg[:, 1], owners_arr, per_polygon[:, 1])
        np.maximum.at(agg[:, 2], owners_arr, per_polygon[:, 2])
        np.maximum.at(agg[:, 3], owners_arr, per_polygon[:, 3])
        has = np.zeros(len(annotations), dtype=bool)
        has[owners_arr] = True
        extents[has] = agg[has]
    return extents


def box_segmentation_problems(annotations: list[dict], images: Mapping[int, dict]) -> list[Problem]:
    """Annotations whose `bbox` and segmentation describe different regions: less than BOX_SEGMENTATION_MIN_INSIDE
    of the segmentation's extent inside the box (both clipped to the image, then grown by BOX_SLACK_PX), or a
    segmentation under a pixel wide or high beside a box of at least 1 x 1 px.

    COCO's bbox is the extent of the object's segmentation (the official files agree to IoU >= 0.958). When they
    disagree the file contradicts itself, and whichever one is wrong gives a wrong number: Mask R-CNN's mask
    target is cropped to the box (0 pixels of the mask inside it: a mask head trained on nothing), mask AP is 0
    for a correct mask if the segmentation is off (polygons in 0..1 units, a mask outside its box), box AP is 0 for
    a correct box if the box is off (`bbox: [0, 0, 0, 0]` beside a real polygon). Seen in FiftyOne and hand-written
    exporters. Loading refuses it in every split: fix the exporter, or (boxes only) drop the segmentations.
    """
    if not annotations:
        return []
    extents = segmentation_extents(annotations, images)
    boxes = np.asarray([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    # Both are compared inside the image: exporters clip polygons to it but not always boxes (and the reverse),
    # and training clips boxes the same way (data/coco.py _clean_image).
    limits = np.asarray(
        [[images[a["image_id"]]["width"], images[a["image_id"]]["height"]] * 2 for a in annotations], dtype=np.float64
    )
    boxes, extents = np.clip(boxes, 0, limits), np.clip(extents, 0, limits)
    with np.errstate(invalid="ignore"):
        size = extents[:, 2:] - extents[:, :2]
        present = (size > 0).all(axis=1)  # a segmentation with some extent in the image
        slack = np.asarray([-BOX_SLACK_PX, -BOX_SLACK_PX, BOX_SLACK_PX, BOX_SLACK_PX])
        a, b = boxes + slack, extents + slack
        inter = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None).prod(axis=1)
        inside = inter / (b[:, 2:] - b[:, :2]).prod(axis=1)
        # A sub-pixel segmentation beside a real box (polygons in 0..1 units near the box's corner): nothing to
        # learn or score as a mask, whatever the overlap.
        real_box = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(axis=1)
        tiny = (size < 1).any(axis=1) & real_box
    bad = np.flatnonzero(present & ((inside < BOX_SEGMENTATION_MIN_INSIDE) | tiny))
    problems = []
    for i in bad.tolist():
        ann = annotations[i]
        ex = ", ".join(f"{v:.4g}" for v in extents[i])  # clipped to the image
        box = ", ".join(f"{v:.4g}" for v in ann["bbox"])
        problems.append(
            Problem(
                "box_segmentation_mismatch",
                f"the bbox [{box}] (XYWH) and the segmentation (extent in the image [{ex}], XYXY) describe "
                f"different regions ({inside[i]:.0%} of the segmentation's extent inside the box, at least "
                f"{BOX_SEGMENTATION_MIN_INSIDE:.0%} expected; a segmentation under a pixel wide is refused beside a "
                "real box): one of them is wrong (polygons in 0..1 units? a mask outside its box? a [0, 0, 0, 0] "
                "box?), and Mask R-CNN's mask targets and box or mask AP would use the wrong one; fix the exporter, "
                "or drop the segmentations to train and score boxes only",
                image_id=ann["image_id"],
                ann_id=ann["id"],
                field="bbox",
            )
        )
    return problems


# --- keypoint counts --------------------------------------------------------------------------------------------------


def fix_num_keypoints(annotations: list[dict], keypoint_counts: Mapping[int, int]) -> tuple[list[Problem], int]:
    """Sets `num_keypoints` of every annotation of the categories in `keypoint_counts` (category id -> K, its number
    of keypoint names) to the number of its labelled keypoints (visibility v > 0), in place; an annotation without
    'keypoints' gets K all-zero keypoints (COCOeval's OKS reads the list of every ground truth of the category).

    COCOeval decides which ground truth it scores from this field, not from the keypoints (pycocotools
    cocoeval.py evaluate: `gt['ignore'] = (gt['num_keypoints'] == 0) or gt['ignore']`; a missing field is a
    KeyError, and faster-coco-eval then reports nothing). A labelled person stored with num_keypoints 0 is ignored,
    so missing it costs nothing (keypoint AP 100 instead of 60 in bad-inputs c10). COCO defines the field as the
    number of labelled keypoints (COCO format docs, "keypoint detection"), so it is computed: a missing one is
    filled, a contradicting one replaced, and each replacement is returned as a problem (`data check` lists them;
    loading counts them). Keypoint lists must have passed the keypoint checks (data/keypoints.py).

    Returns:
        (one problem per replaced value, how many missing values were filled).
    """
    problems: list[Problem] = []
    filled = 0
    for ann in annotations:
        k = keypoint_counts.get(ann.get("category_id"))
        if k is None:
            continue
        values = ann.get("keypoints")
        if values is None:
            values = ann["keypoints"] = [0] * (3 * k)
        labelled = sum(1 for v in values[2::3] if v > 0)
        stored = ann.get("num_keypoints")
        if stored is None:
            filled += 1
        elif stored != labelled:
            problems.append(
                Problem(
                    "num_keypoints_mismatch",
                    f"num_keypoints is {stored!r} but {labelled} keypoint(s) are labelled (visibility > 0); "
                    "COCOeval scores a person only when num_keypoints > 0, so scratchdet uses the labelled count. "
                    "Fix the exporter (or drop the field to have it computed)",
                    image_id=ann.get("image_id"),
                    ann_id=ann.get("id"),
                    field="num_keypoints",
                )
            )
        ann["num_keypoints"] = labelled
    return problems, filled


# --- categories across splits ----------------------------------------------------------------------------------------


def category_differences(a: Mapping[int, str], b: Mapping[int, str]) -> list[str]:
    """Differences between two category maps (id -> name), one line each; empty when they are equal."""
    lines = []
    for cat_id in sorted(set(a) | set(b)):
        if cat_id not in b:
            lines.append(f"id {cat_id} ({a[cat_id]!r}) only in the first")
        elif cat_id not in a:
            lines.append(f"id {cat_id} ({b[cat_id]!r}) only in the second")
        elif a[cat_id] != b[cat_id]:
            lines.append(f"id {cat_id} is {a[cat_id]!r} in the first, {b[cat_id]!r} in the second")
    return lines


def check_same_categories(
    first: Mapping[int, str], first_name: str, second: Mapping[int, str], second_name: str
) -> None:
    """Raises DataError when two category maps differ: the detector's label k is category id k of the training
    file, and evaluation writes label k as that id, so any difference scores one class as another.

    Args:
        first, second: category id -> name.
        first_name, second_name: what each map is (a file path, "the checkpoint's training data"), for the message.
    """
    diff = category_differences(first, second)
    if not diff:
        return
    shown = "; ".join(diff[:10]) + (f"; ... {len(diff) - 10} more" if len(diff) > 10 else "")
    raise DataError(
        f"the categories of {first_name} (first) and {second_name} (second) differ: {shown}. A detector's classes "
        "are the training file's categories, and they are scored by category id, so every id must name the same "
        "category in both; give both files the same 'categories' list",
        path=second_name,
        field="categories",
    )
