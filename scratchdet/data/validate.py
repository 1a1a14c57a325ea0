"""Checks of a COCO file whose every field parses but whose fields do not fit together or do not fit the metric.

`load_coco_json` (data/coco.py) refuses files that are structurally wrong. The checks here find annotations that
parse and still give a wrong number: a stored `area` that contradicts the box or mask (COCOeval bins objects by
`area` and divides OKS by it), segmentations pycocotools cannot rasterize in the evaluation split, and two splits
whose category ids name different things. Each returns every problem it finds, so `scratchdet data check` can list
them all with counts while dataset loading raises on the first (with the count).
"""

from __future__ import annotations

import itertools
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

    def error(self, path: str, count: int = 1) -> DataError:
        """This problem as the DataError loading raises (with how many more of its kind there are)."""
        more = f" ({count - 1} more like it in this file; `scratchdet data check` lists them all)" if count > 1 else ""
        return DataError(self.message + more, path=path, image_id=self.image_id, ann_id=self.ann_id, field=self.field)


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
