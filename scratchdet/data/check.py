"""`scratchdet data check`: everything loading, training and evaluation would refuse or change in a COCO file, found
before any of them runs, listed with file, image id, annotation id and field, and counted by kind.

It runs the same code as loading: `load_coco_json` (structure), `CocoDetection` as a training and as an evaluation
split (cleaning counts; no usable training image), data/validate.py (areas, evaluation masks, annotation ids,
categories against another file) and data/images.py on every image file (`probe_image`: existence, displayed size
against the JSON, pixel mode, EXIF orientation, alpha, the pixel limit; with `decode`, `decode_image`: the full
decode, and which images have transparent pixels), data/keypoints.py (keypoint lists, visibilities and
num_keypoints of every category that declares keypoints), and the test-time resize (images so elongated that a side
would round to 0 px at data.min_size_test / max_size_test and is clamped to 1). Image files are checked on a thread
pool with a progress bar: Pillow releases the GIL while it reads and decodes.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from scratchdet.data.coco import CocoDetection, DatasetSummary, audit_annotations, load_coco_json
from scratchdet.data.images import (
    TRANSPARENT_BACKGROUND,
    ImageHeader,
    ImageTooLargeError,
    decode_image,
    describe_orientation,
    probe_image,
    too_large_message,
)
from scratchdet.data.keypoint_flip import keypoint_flip_pairs
from scratchdet.data.keypoints import keypoint_annotation_problems
from scratchdet.data.validate import (
    Problem,
    box_segmentation_problems,
    category_differences,
    duplicate_category_names,
    duplicate_image_files,
)
from scratchdet.errors import ConfigError, DataError

# How many problems of one kind the text report lists; the counts always cover all of them.
SHOWN_PER_KIND = 10
# How many image ids a note lists; its count always covers all of them.
SHOWN_IDS = 10


def _ids_note(count: int, ids: list, what: str) -> str:
    shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (", ..." if len(ids) > SHOWN_IDS else "")
    return f"{count} {what} (image ids {shown})"


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


def _image_problem(
    image: dict, path: Path, where: dict, decode: bool, max_pixels: int | None
) -> tuple[Problem | None, ImageHeader | None, bool]:
    """(the image's problem, its header, whether decoding composited transparent pixels)."""
    composited = False
    if not path.is_file():
        problem = Problem("missing_image", f"image file not found: {path}", image_id=image["id"], field="file_name")
        return problem, None, False
    try:
        header = probe_image(path, where=where, max_pixels=max_pixels)
        if decode:
            _, composited = decode_image(
                path, where=where, expected_size=(image["width"], image["height"]), max_pixels=max_pixels
            )
    except ImageTooLargeError as e:
        return Problem("image_too_large", e.message, image_id=image["id"], field=e.field), None, False
    except DataError as e:
        kind = {"file_name": "unreadable_image", "mode": "unsupported_pixel_mode"}.get(e.field or "", "image_size")
        return Problem(kind, e.message, image_id=image["id"], field=e.field), None, False
    if (header.width, header.height) != (image["width"], image["height"]):
        hint = "fix the JSON or the image"
        if header.oriented and (header.stored_width, header.stored_height) == (image["width"], image["height"]):
            hint = (
                f"the JSON has the stored size, but the file's {describe_orientation(header)} turns it and "
                "scratchdet reads images as displayed: the annotations look made on the raw pixels"
            )
        return (
            Problem(
                "image_size",
                f"image file {path} is {header.width}x{header.height} (WxH, as displayed) but "
                f"the annotation says {image['width']}x{image['height']}; {hint}",
                image_id=image["id"],
                field="width" if header.width != image["width"] else "height",
            ),
            header,
            composited,
        )
    return None, header, composited


def check_images(
    data: dict,
    image_dir: Path,
    json_path: str,
    report: CheckReport,
    *,
    decode: bool,
    workers: int | None,
    progress: bool,
    max_pixels: int | None = None,
) -> None:
    """Probes (and with `decode`, fully decodes) every image of the file; adds problems, and notes on orientation
    and transparency (with their counts and image ids)."""
    images = data["images"]
    workers = workers or min(8, os.cpu_count() or 1)

    def one(image):
        where = {"path": json_path, "image_id": image["id"]}
        return _image_problem(image, image_dir / image["file_name"], where, decode, max_pixels)

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
    alpha, composited = [], []
    known = {(p.kind, p.image_id) for p in report.problems}  # e.g. too large by its annotated size already
    for image, (problem, header, blended) in zip(images, results, strict=True):
        if problem is not None and (problem.kind, problem.image_id) not in known:
            report.problems.append(problem)
        if header is not None and header.oriented:
            oriented[describe_orientation(header)] += 1
        if header is not None and header.alpha:
            alpha.append(image["id"])
        if blended:
            composited.append(image["id"])
    report.images_checked = len(images)
    report.images_decoded = len(images) if decode else 0
    if oriented:
        kinds = ", ".join(f"{n} with {what}" for what, n in sorted(oriented.items()))
        report.notes.append(
            f"{sum(oriented.values())} image(s) carry an EXIF orientation ({kinds}); scratchdet reads "
            "them as displayed (rotated), as annotation tools show them"
        )
    white = "white" if TRANSPARENT_BACKGROUND == (255, 255, 255) else str(TRANSPARENT_BACKGROUND)
    if decode and composited:
        what = f"image(s) have transparent pixels (field 'file_name': the pixels); read composited over {white}"
        report.notes.append(_ids_note(len(composited), composited, what) + ", as a web page shows them")
    elif alpha and not decode:
        what = "image(s) have an alpha channel or a transparent palette entry"
        report.notes.append(
            _ids_note(len(alpha), alpha, what) + f"; transparent pixels, if any, are composited over {white} "
            "(--decode counts the images that have them)"
        )


def too_large_problems(data: dict, max_pixels: int | None) -> list[Problem]:
    """Images whose annotated width x height exceeds the pixel limit: loading refuses them before training."""
    problems = []
    for image in data["images"]:
        message = too_large_message(image["width"], image["height"], max_pixels, "the image's annotated size")
        if message:
            problems.append(Problem("image_too_large", message, image_id=image["id"], field="width"))
    return problems


def thin_image_notes(data: dict, min_size_test: int, max_size_test: int) -> list[str]:
    """A note for images so elongated that torchvision's test-time resize would floor a side to 0 px (evaluation
    clamps it to 1 px, as the training resize does: modeling/input_transform.py); their objects are then a
    pixel thin, which the model hardly sees."""
    thin = []
    for image in data["images"]:
        w, h = image["width"], image["height"]
        scale = min(min_size_test / min(w, h), max_size_test / max(w, h))
        if min(math.floor(w * scale), math.floor(h * scale)) < 1:
            thin.append(image["id"])
    if not thin:
        return []
    what = (
        f"image(s) are so elongated that a side (field 'width'/'height') rounds to 0 px at the test size "
        f"{min_size_test}/{max_size_test}"
    )
    return [_ids_note(len(thin), thin, what) + "; evaluation resizes that side to 1 px instead (as training does)"]


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
    max_image_pixels: int | None = None,
    min_size_test: int = 800,
    max_size_test: int = 1333,
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
        max_image_pixels: data.max_image_pixels (None: Pillow's limit).
        min_size_test, max_size_test: data.min_size_test / max_size_test, for the note on images a test-time
            resize would shrink to 0 px on one side.

    Raises:
        DataError: the file is structurally broken (load_coco_json's first error); everything else is reported.
        ConfigError: workers, max_image_pixels or the test sizes are not positive.
    """
    for name, value in (
        ("--workers", workers),
        ("--max-image-pixels", max_image_pixels),
        ("--min-size-test", min_size_test),
        ("--max-size-test", max_size_test),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}={value!r} must be a positive integer")
    path = str(json_path)
    report = CheckReport(path)
    data = load_coco_json(path)
    if masks is None:
        masks = any("segmentation" in ann for ann in data["annotations"])
        if not masks:
            report.notes.append("no annotation has a segmentation: checked as a box-only file (Faster R-CNN)")
    # The evaluation split's rules are the stricter ones (areas, rasterizable masks): what they refuse is a problem.
    found, fatal = audit_annotations(
        copy.deepcopy(data), DatasetSummary(path), train=False, segm_eval=masks, gt_area=gt_area, contradictions=False
    )
    report.problems += fatal
    # Refused by loading in every split; the dataset constructions below skip them so their counts still come.
    report.problems += duplicate_image_files(data["images"]) + duplicate_category_names(data["categories"])
    images_by_id = {img["id"]: img for img in data["images"]}
    report.problems += box_segmentation_problems(data["annotations"], images_by_id)
    report.problems += too_large_problems(data, max_image_pixels)
    kept = len([p for p in found if p not in fatal])
    if kept:
        report.notes.append(
            f"{kept} annotation area(s) disagree with their geometry; kept as data.gt_area={gt_area} says"
        )
    for role, train in (("training", True), ("evaluation", False)):
        try:
            # gt_area="file": the area problems are listed above; here only the cleaning counts are wanted.
            dataset = CocoDetection(
                path,
                image_dir,
                train=train,
                load_masks=masks and train,
                check_files=False,
                gt_area="file",
                max_image_pixels=sys.maxsize,  # listed above, with every image
                refuse_contradictions=False,  # listed above
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
    keypoint_problems, no_count = keypoint_annotation_problems(data)
    report.problems += keypoint_problems
    if no_count:
        report.notes.append(
            f"{no_count} keypoint annotation(s) have no num_keypoints (field 'num_keypoints'); loading computes it "
            "from the visibilities (COCOeval decides from it which persons it scores)"
        )
    report.notes += thin_image_notes(data, min_size_test, max_size_test)
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
        check_images(
            data,
            Path(image_dir),
            path,
            report,
            decode=decode,
            workers=workers,
            progress=progress,
            max_pixels=max_image_pixels,
        )
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
                    ("category id", p.category_id),
                    ("field", repr(p.field) if p.field else None),
                )
                if v is not None
            )
            lines.append(f"  - [{where or report.path}] {p.message}")
        if len(of_kind) > SHOWN_PER_KIND:
            lines.append(f"  ... {len(of_kind) - SHOWN_PER_KIND} more (--json lists all)")
    return "\n".join(lines)
