"""`scratchdet data check`: everything loading, training and evaluation would refuse or change in a COCO file, found
before any of them runs, listed with file, image id, annotation id and field, and counted by kind.

It runs the same code as loading: `load_coco_json` (structure), `CocoDetection` as a training and as an evaluation
split (cleaning counts; no usable training image), data/validate.py (areas, evaluation masks, annotation ids,
categories against another file) and data/images.py on every image file (`probe_image`: existence, displayed size
against the JSON, pixel mode, EXIF orientation; with `decode`, `read_image`: the full decode). Image files are
checked on a thread pool with a progress bar: Pillow releases the GIL while it reads and decodes.
"""

from __future__ import annotations

import copy
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from scratchdet.data.coco import CocoDetection, DatasetSummary, audit_annotations, load_coco_json
from scratchdet.data.images import ImageHeader, describe_orientation, probe_image, read_image
from scratchdet.data.keypoint_flip import keypoint_flip_pairs
from scratchdet.data.validate import Problem, category_differences
from scratchdet.errors import ConfigError, DataError

# How many problems of one kind the text report lists; the counts always cover all of them.
SHOWN_PER_KIND = 10


@dataclass
class CheckReport:
    """What `check_dataset` found. `problems` are refused (or silently changed) by loading; `notes` change nothing."""

    path: str
    summaries: dict = field(default_factory=dict)  # "training" / "evaluation" -> DatasetSummary dict
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images_checked: int = 0
    images_decoded: int = 0

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "summaries": self.summaries,
            "problem_counts": self.counts(),
            "problems": [vars(p) for p in self.problems],
            "notes": self.notes,
            "images_checked": self.images_checked,
            "images_decoded": self.images_decoded,
        }


def _image_problem(image: dict, path: Path, where: dict, decode: bool) -> tuple[Problem | None, ImageHeader | None]:
    if not path.is_file():
        return Problem("missing_image", f"image file not found: {path}", image_id=image["id"], field="file_name"), None
    try:
        header = probe_image(path, where=where)
        if decode:
            read_image(path, where=where, expected_size=(image["width"], image["height"]))
    except DataError as e:
        kind = {"file_name": "unreadable_image", "mode": "unsupported_pixel_mode"}.get(e.field or "", "image_size")
        return Problem(kind, e.message, image_id=image["id"], field=e.field), None
    if (header.width, header.height) != (image["width"], image["height"]):
        hint = "fix the JSON or the image"
        if header.oriented and (header.stored_width, header.stored_height) == (image["width"], image["height"]):
            hint = (
                f"the JSON has the stored size, but the file's {describe_orientation(header)} turns it and "
                "scratchdet reads images as displayed: the annotations look made on the raw pixels"
            )
        return Problem(
            "image_size",
            f"image file {path} is {header.width}x{header.height} (WxH, as displayed) but "
            f"the annotation says {image['width']}x{image['height']}; {hint}",
            image_id=image["id"],
            field="width" if header.width != image["width"] else "height",
        ), header
    return None, header


def check_images(
    data: dict,
    image_dir: Path,
    json_path: str,
    report: CheckReport,
    *,
    decode: bool,
    workers: int | None,
    progress: bool,
) -> None:
    """Probes (and with `decode`, fully decodes) every image of the file; adds problems and orientation notes."""
    images = data["images"]
    workers = workers or min(8, os.cpu_count() or 1)

    def one(image):
        where = {"path": json_path, "image_id": image["id"]}
        return _image_problem(image, image_dir / image["file_name"], where, decode)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(
                pool.map(one, images),
                total=len(images),
                desc="decode" if decode else "image headers",
                unit="img",
                disable=None if progress else True,
                file=sys.stderr,
                mininterval=0.5,
            )
        )  # None: drawn on a terminal only, not into logs
    oriented = Counter()
    for problem, header in results:
        if problem is not None:
            report.problems.append(problem)
        if header is not None and header.oriented:
            oriented[describe_orientation(header)] += 1
    report.images_checked = len(images)
    report.images_decoded = len(images) if decode else 0
    if oriented:
        kinds = ", ".join(f"{n} with {what}" for what, n in sorted(oriented.items()))
        report.notes.append(
            f"{sum(oriented.values())} image(s) carry an EXIF orientation ({kinds}); scratchdet reads "
            "them as displayed (rotated), as annotation tools show them"
        )


def keypoint_name_problems(data: dict, path: str, flip_map: list | None = None) -> list[Problem]:
    """Keypoint categories whose left/right names cannot be paired for the horizontal flip (data/keypoint_flip.py),
    which Keypoint R-CNN training would refuse: a flip that swaps nothing teaches the wrong side."""
    problems = []
    for cat in data["categories"]:
        names = cat.get("keypoints")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            continue
        try:
            keypoint_flip_pairs(names, flip_map or (), f"category {cat['id']} ({cat.get('name')!r}): ")
        except (ValueError, ConfigError) as e:
            problems.append(Problem("keypoint_flip_names", str(e), field="keypoints"))
    return problems


def check_dataset(
    json_path: str | Path,
    image_dir: str | Path,
    *,
    masks: bool | None = None,
    gt_area: str = "check",
    against: str | Path | None = None,
    check_files: bool = True,
    decode: bool = False,
    workers: int | None = None,
    progress: bool = True,
    keypoint_flip_map: list | None = None,
) -> CheckReport:
    """Checks a COCO file as a training split and as an evaluation split, and its images.

    Args:
        json_path: the COCO annotation file.
        image_dir: the folder its file_name entries are relative to.
        masks: check segmentations as mask training and mask AP need them (Mask R-CNN); None = when any
            annotation of the file has a segmentation (a file without any is a box-only file).
        gt_area: data.gt_area, as training would use it.
        against: another COCO file (e.g. the other split) whose categories must be the same.
        check_files: check the image files at all.
        decode: fully decode every image (slow; finds truncated files a header read misses).
        workers: threads for the image checks (default: min(8, CPUs)).
        progress: show a progress bar on stderr (on a terminal).
        keypoint_flip_map: data.keypoint_flip_map, [[name_a, name_b], ...] pairs for keypoint names the rule does
            not recognise.

    Raises:
        DataError: the file is structurally broken (load_coco_json's first error); everything else is reported.
    """
    path = str(json_path)
    report = CheckReport(path)
    data = load_coco_json(path)
    if masks is None:
        masks = any("segmentation" in ann for ann in data["annotations"])
        if not masks:
            report.notes.append("no annotation has a segmentation: checked as a box-only file (Faster R-CNN)")
    # The evaluation split's rules are the stricter ones (areas, rasterizable masks): what they refuse is a problem.
    found, fatal = audit_annotations(
        copy.deepcopy(data), DatasetSummary(path), train=False, segm_eval=masks, gt_area=gt_area
    )
    report.problems += fatal
    kept = len([p for p in found if p not in fatal])
    if kept:
        report.notes.append(
            f"{kept} annotation area(s) disagree with their geometry; kept as data.gt_area={gt_area} says"
        )
    for role, train in (("training", True), ("evaluation", False)):
        try:
            # gt_area="file": the area problems are listed above; here only the cleaning counts are wanted.
            dataset = CocoDetection(
                path, image_dir, train=train, load_masks=masks and train, check_files=False, gt_area="file"
            )
        except DataError as e:
            kind = "no_usable_training_images" if "no usable training images" in str(e) else f"{role}_split"
            report.problems.append(Problem(kind, e.message, image_id=e.image_id, ann_id=e.ann_id, field=e.field))
            continue
        report.summaries[role] = dataset.summary.to_dict()
        for note in dataset.summary.notes:
            if note not in report.notes:
                report.notes.append(note)
    report.problems += keypoint_name_problems(data, path, keypoint_flip_map)
    if against is not None:
        other = load_coco_json(str(against))
        mine = {c["id"]: c["name"] for c in data["categories"]}
        theirs = {c["id"]: c["name"] for c in other["categories"]}
        for line in category_differences(mine, theirs):
            report.problems.append(
                Problem(
                    "category_mismatch",
                    f"categories differ from {against}: {line} (first = "
                    f"{path}); a detector trained on one is scored wrongly on the other",
                    field="categories",
                )
            )
        their_cats = {c["id"]: c for c in other["categories"]}
        for cat in data["categories"]:
            a, b = cat.get("keypoints"), their_cats.get(cat["id"], {}).get("keypoints")
            if a is not None and b is not None and list(a) != list(b):
                # Keypoint k of the model is keypoint k of the training file; OKS compares it with keypoint k here.
                report.problems.append(
                    Problem(
                        "keypoint_mismatch",
                        f"category {cat['id']}'s keypoint names differ "
                        f"from {against} (names or order): {list(a)} vs {list(b)}",
                        field="keypoints",
                    )
                )
    if check_files:
        check_images(data, Path(image_dir), path, report, decode=decode, workers=workers, progress=progress)
    return report


def format_check_report(report: CheckReport) -> str:
    """The text `scratchdet data check` prints: cleaning summaries, notes, then problems grouped by kind."""
    import json

    lines = []
    for role, summary in report.summaries.items():
        lines.append(f"as {'a training' if role == 'training' else 'an evaluation'} split:")
        lines.append(json.dumps(summary, indent=2))
    lines.append(
        f"image files checked: {report.images_checked}"
        + (f" (fully decoded: {report.images_decoded})" if report.images_decoded else " (headers)")
    )
    for note in report.notes:
        lines.append(f"note: {note}")
    counts = report.counts()
    if not counts:
        lines.append("no problems found")
        return "\n".join(lines)
    lines.append("problems: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
    for kind in counts:
        of_kind = [p for p in report.problems if p.kind == kind]
        lines.append(f"{kind} ({len(of_kind)}):")
        for p in of_kind[:SHOWN_PER_KIND]:
            where = ", ".join(
                f"{k} {v}"
                for k, v in (
                    ("image id", p.image_id),
                    ("annotation id", p.ann_id),
                    ("field", repr(p.field) if p.field else None),
                )
                if v is not None
            )
            lines.append(f"  - [{where or report.path}] {p.message}")
        if len(of_kind) > SHOWN_PER_KIND:
            lines.append(f"  ... {len(of_kind) - SHOWN_PER_KIND} more (--json lists all)")
    return "\n".join(lines)
