"""Keypoint data for Keypoint R-CNN (docs/PAPER.md, "Keypoints (Fig. 6)"): one keypoint category, [N, K, 3]
targets, OKS sigmas.

Keypoint R-CNN is trained on one category, as Detectron trains COCO person keypoints: the detector has two classes
(background + that category) and every other category of the file is ignored, for training and for evaluation
(COCOeval's catIds are restricted to it). The category is `data.keypoint_category` (a name or an id); by default
the file's only category that declares "keypoints".

Targets gain "keypoints" float32 [N, K, 3] (x, y in absolute pixels, visibility 0/1/2; unlabelled joints are all
zero, the COCO convention) and "keypoint_flip_map" (flip[i] = the keypoint that keypoint i becomes, for
RandomHorizontalFlip; from data.keypoint_flip_map and the recognised spellings of a side, data/keypoint_flip.py; names
that look lateral but cannot be paired are refused, and the pairs used are recorded in the summary). For training,
instances without any labelled keypoint are dropped (counted in `summary.no_keypoints_dropped`), and images left
without instances are skipped, as in Detectron.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from scratchdet.data.coco import CocoDetection, DatasetSummary, _Instances, _is_number
from scratchdet.data.detection import Transform
from scratchdet.data.keypoint_flip import flip_indices, keypoint_flip_pairs
from scratchdet.data.synthetic import KEYPOINT_NAMES, KEYPOINT_OKS_SIGMAS
from scratchdet.data.validate import Problem, fix_num_keypoints
from scratchdet.errors import ConfigError, DataError

COCO_PERSON_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
# pycocotools' defaults for COCO person keypoints (COCOeval Params.setKpParams).
COCO_PERSON_OKS_SIGMAS: tuple[float, ...] = tuple(
    s / 10.0
    for s in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89)
)
_KNOWN_SIGMAS = {COCO_PERSON_KEYPOINT_NAMES: COCO_PERSON_OKS_SIGMAS, tuple(KEYPOINT_NAMES): KEYPOINT_OKS_SIGMAS}


@dataclass
class KeypointDatasetSummary(DatasetSummary):
    """DatasetSummary plus what restricting to the keypoint category dropped (training split only)."""

    keypoint_category_id: int = 0
    other_categories_ignored: int = 0  # instances of other categories (the keypoint detector does not see them)
    no_keypoints_dropped: int = 0  # keypoint-category instances without any labelled keypoint
    # The names a horizontal flip swaps ([name_a, name_b] pairs); every other keypoint keeps its name.
    keypoint_flip_pairs: list[list[str]] = field(default_factory=list)
    # The category's keypoints in the file's order: output j of the model (resume and eval compare them).
    keypoint_names: list[str] = field(default_factory=list)
    # num_keypoints (what COCOeval decides from) computed from the visibilities: missing ones filled, contradicting
    # ones replaced (data/validate.py fix_num_keypoints).
    num_keypoints_filled: int = 0
    num_keypoints_replaced: int = 0


def resolve_keypoint_category(coco_cats: dict[int, dict], requested: str | int | None, path: str) -> int:
    """The category id Keypoint R-CNN trains on: `requested` (name or id) or the only category with keypoints.

    Raises:
        ConfigError: the requested category is unknown, matches several categories (a name two ids share: the
            message lists them), has no keypoints, or the default is ambiguous.
    """
    with_kps = sorted(cat_id for cat_id, cat in coco_cats.items() if cat.get("keypoints"))
    if requested is None or requested == "":
        if len(with_kps) != 1:
            names = [coco_cats[i]["name"] for i in with_kps]
            raise ConfigError(
                f"{path}: data.keypoint_category is not set and the file has {len(with_kps)} "
                f"categories with keypoints ({names}); set data.keypoint_category to one name or id"
            )
        return with_kps[0]
    text = str(requested)
    matches = [i for i, c in coco_cats.items() if c["name"] == text or (text.isdigit() and i == int(text))]
    if not matches:
        known = {i: c["name"] for i, c in coco_cats.items()}
        raise ConfigError(f"data.keypoint_category={requested!r} is not a category of {path} (known: {known})")
    if len(matches) > 1:
        # Taking the first would ignore the other ids' instances in training and evaluation without a word.
        named = {i: coco_cats[i]["name"] for i in sorted(matches)}
        raise ConfigError(
            f"data.keypoint_category={requested!r} matches {len(matches)} categories of {path}: {named}; give the "
            "class one id in the file (loading refuses duplicate names), or set data.keypoint_category to one id"
        )
    if matches[0] not in with_kps:
        raise ConfigError(
            f"data.keypoint_category={requested!r}: category {matches[0]} of {path} has no "
            "'keypoints' names; choose a category that declares keypoints"
        )
    return matches[0]


def oks_sigmas_for(names: Sequence[str], override: Sequence[float] | None, path: str) -> tuple[float, ...]:
    """Per-keypoint OKS sigmas: `override` (eval.kpt_oks_sigmas), else COCO's or the synthetic walker's by names.

    Raises:
        ConfigError: the override has the wrong length, or the names are unknown and no override is given.
    """
    if override:
        if len(override) != len(names):
            raise ConfigError(
                f"eval.kpt_oks_sigmas has {len(override)} values but {path} declares "
                f"{len(names)} keypoints {list(names)}; give one sigma per keypoint"
            )
        return tuple(float(s) for s in override)
    known = _KNOWN_SIGMAS.get(tuple(names))
    if known is None:
        raise ConfigError(
            f"no standard OKS sigmas for the keypoints {list(names)} of {path}; "
            "set eval.kpt_oks_sigmas=[...] (one per keypoint)"
        )
    return known


def keypoint_values_problem(values: Any, num_keypoints: int) -> str | None:
    """Why an annotation's 'keypoints' value cannot be used (None when it can): it must be 3 x K finite numbers
    [x1, y1, v1, ...] with each visibility 0 (not labelled), 1 (labelled, hidden) or 2 (visible), COCO's format."""
    if not isinstance(values, list) or len(values) != 3 * num_keypoints or not all(_is_number(v) for v in values):
        return (
            f"keypoints must be {3 * num_keypoints} finite numbers [x1, y1, v1, ...] "
            f"({num_keypoints} keypoints of the category), got {str(values)[:80]}"
        )
    visibilities = values[2::3]
    if any(v not in (0, 1, 2) for v in visibilities):
        return f"keypoint visibilities must be 0, 1 or 2, got {list(visibilities)}"
    return None


def _keypoint_array(ann: dict, num_keypoints: int, path: str) -> np.ndarray:
    values = ann.get("keypoints")
    where = {"path": path, "image_id": ann["image_id"], "ann_id": ann["id"], "field": "keypoints"}
    if values is None:
        return np.zeros((num_keypoints, 3), dtype=np.float32)  # no labels: dropped for training, ignored by OKS
    problem = keypoint_values_problem(values, num_keypoints)
    if problem:
        raise DataError(problem, **where)
    kps = np.asarray(values, dtype=np.float32).reshape(num_keypoints, 3)
    kps[kps[:, 2] == 0] = 0  # COCO convention: an unlabelled joint is all zero, whatever x, y say
    return kps


def keypoint_annotation_problems(data: dict) -> tuple[list[Problem], int]:
    """What loading a keypoint category of `data` (a load_coco_json dict) would refuse or change, for every category
    that declares keypoint names: malformed keypoint lists and visibilities (refused, kind "malformed_keypoints"),
    and num_keypoints values that contradict the visibilities (replaced, kind "num_keypoints_mismatch";
    data/validate.py `fix_num_keypoints`). `data` is left unchanged.

    Returns:
        (problems, how many annotations have no num_keypoints, which loading fills in).
    """
    counts = {
        cat["id"]: len(cat["keypoints"])
        for cat in data["categories"]
        if isinstance(cat.get("keypoints"), list) and cat["keypoints"]
    }
    problems, usable = [], []
    for ann in data["annotations"]:
        k = counts.get(ann["category_id"])
        if k is None:
            continue
        problem = keypoint_values_problem(ann["keypoints"], k) if "keypoints" in ann else None
        if problem:
            where = {"image_id": ann["image_id"], "ann_id": ann["id"], "field": "keypoints"}
            problems.append(Problem("malformed_keypoints", problem, **where))
        else:
            keep = {key: ann[key] for key in ("id", "image_id", "category_id", "num_keypoints") if key in ann}
            usable.append({**keep, "keypoints": list(ann.get("keypoints") or [0] * (3 * k))})
    mismatches, missing = fix_num_keypoints(usable, counts)
    return problems + mismatches, missing


class _AddKeypoints:
    """Adds "keypoints" and "keypoint_flip_map" to a target before the geometric transforms (which move them)."""

    def __init__(self, keypoints: dict[int, np.ndarray], flip_map: list[int], transform: Transform | None):
        self.keypoints = keypoints  # image id -> [N, K, 3] in the order of the image's instances
        self.flip_map = flip_map
        self.transform = transform

    def __call__(self, image: torch.Tensor, target: dict, rng: random.Random) -> tuple[torch.Tensor, dict]:
        target["keypoints"] = torch.from_numpy(self.keypoints[target["image_id"]].copy())
        target["keypoint_flip_map"] = list(self.flip_map)
        if self.transform is None:
            return image, target
        return self.transform(image, target, rng)


class KeypointCocoDetection(CocoDetection):
    """A COCO dataset restricted to one keypoint category; labels are 1 (the category), num_classes is 2.

    Targets are CocoDetection's plus "keypoints" float32 [N, K, 3] (XY absolute pixels + visibility) and
    "keypoint_flip_map". Other attributes: keypoint_cat_id, keypoint_names, num_keypoints, kpt_oks_sigmas.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        train: bool,
        keypoint_category: str | int | None = None,
        kpt_oks_sigmas: Sequence[float] | None = None,
        keypoint_flip_map: Sequence[Sequence[str]] = (),
        subset: int | None = None,
        subset_seed: int = 0,
        transform: Transform | None = None,
        check_files: bool = True,
        gt_area: str = "check",
        max_image_pixels: int | None = None,
    ):
        """Load, validate and restrict the dataset (see CocoDetection for the shared arguments).

        Args:
            keypoint_category: name or id of the category to train; None = the only category with keypoints.
            kpt_oks_sigmas: OKS sigmas override (one per keypoint); None = COCO's / the synthetic walker's.
            keypoint_flip_map: data.keypoint_flip_map, [name_a, name_b] pairs that swap under a horizontal flip
                ([name, name]: no mirror); they come before the recognised spellings (data/keypoint_flip.py).

        Raises:
            ConfigError: unknown or ambiguous category, sigmas that do not fit, or a keypoint_flip_map pair that
                names an unknown keypoint or repeats one.
            DataError: malformed keypoints (field "keypoints": length, non-finite values, a visibility other than
                0, 1, 2), keypoint names that look lateral but cannot be paired, or a subset larger than the usable
                images. A num_keypoints that is missing or contradicts the visibilities is not an error: it is
                computed (counted in summary.num_keypoints_filled / num_keypoints_replaced).
        """
        # Subset and file checks run after the restriction, on the images that still have keypoint instances.
        super().__init__(
            json_path,
            image_dir,
            train=train,
            transform=None,
            load_masks=False,
            check_files=False,
            gt_area=gt_area,
            max_image_pixels=max_image_pixels,
        )
        path = self.json_path
        cat_id = resolve_keypoint_category(self.coco.cats, keypoint_category, path)
        cat = self.coco.cats[cat_id]
        self.keypoint_cat_id = cat_id
        self.keypoint_names = tuple(cat["keypoints"])
        self.num_keypoints = len(self.keypoint_names)
        self.kpt_oks_sigmas = oks_sigmas_for(self.keypoint_names, kpt_oks_sigmas, path)
        category = f"category {cat_id} ({cat['name']}): "
        try:  # ConfigError (a bad data.keypoint_flip_map pair) passes through, naming the file and the category
            flip_pairs = keypoint_flip_pairs(self.keypoint_names, keypoint_flip_map, f"{path}, {category}")
        except ValueError as e:  # UnpairedKeypointsError, or duplicate names: the file's to fix (or the flip map)
            message = category + str(e).removeprefix(f"{path}, {category}")
            raise DataError(message, path=path, field="keypoints") from None
        flip_map = flip_indices(self.keypoint_names, flip_pairs)
        self.cat_id_to_label = {cat_id: 1}
        self.label_to_cat_id = {1: cat_id}
        self.class_names = ["__background__", cat["name"]]
        self.num_classes = 2

        summary = KeypointDatasetSummary(
            **asdict(self.summary),
            keypoint_category_id=cat_id,
            keypoint_flip_pairs=[list(p) for p in flip_pairs],
            keypoint_names=list(self.keypoint_names),
        )
        summary.categories = [[cat_id, cat["name"]]]  # the one category the model predicts
        for ann in self.coco.dataset["annotations"]:  # the keypoint lists are checked before num_keypoints is
            if ann["category_id"] == cat_id:
                _keypoint_array(ann, self.num_keypoints, path)
        # In place in the index COCOeval reads (self.coco.anns holds the same dicts).
        replaced, summary.num_keypoints_filled = fix_num_keypoints(
            self.coco.dataset["annotations"], {cat_id: self.num_keypoints}
        )
        summary.num_keypoints_replaced = len(replaced)
        if replaced:
            warnings.warn(
                f"{len(replaced)} annotation(s) of {path} have a num_keypoints that contradicts their "
                f"visibilities (first: {replaced[0].error(path)}); replaced by the labelled count, which COCOeval "
                "decides from. `scratchdet data check` lists them",
                stacklevel=2,
            )
        keypoints: dict[int, np.ndarray] = {}
        kept_instances: dict[int, _Instances] = {}
        for image_id in sorted(self.coco.imgs):
            inst = self._instances.get(image_id)
            if inst is None:  # training: no usable annotation at all (already counted)
                continue
            keep, kps = [], []
            for k, ann_id in enumerate(inst.ann_ids):
                ann = self.coco.anns[ann_id]
                if ann["category_id"] != cat_id:
                    summary.other_categories_ignored += 1
                    continue
                arr = _keypoint_array(ann, self.num_keypoints, path)
                if train and not (arr[:, 2] > 0).any():
                    summary.no_keypoints_dropped += 1
                    continue
                keep.append(k)
                kps.append(arr)
            if train and not keep:
                summary.images_without_annotations += 1
                continue
            kept_instances[image_id] = _Instances(
                boxes=inst.boxes[keep].reshape(-1, 4),
                labels=np.ones(len(keep), dtype=np.int64),
                segmentations=[],
                ann_ids=[inst.ann_ids[k] for k in keep],
            )
            keypoints[image_id] = np.stack(kps) if kps else np.zeros((0, self.num_keypoints, 3), np.float32)
        self._instances = kept_instances
        self._finalize(
            summary,
            subset,
            subset_seed,
            check_files,
            usable=f"'{cat['name']}' instance with at least one labelled keypoint",
        )
        self.transform = _AddKeypoints(keypoints, flip_map, transform)
