"""Published COCO metric numbers, reproduced by scratchdet's own evaluation code with both backends.

The oracles live in ../shared/oracles/ (README.txt there gives the sources and the expected numbers):
- cocoapi_fake100: the cocoapi demo's 100 val2014 images with its fake bbox and segm results, whose 12 COCOeval
  stats cocoapi publishes (results/val2014_fake_eval_res.txt; full precision from faster-coco-eval's tests);
- faster_coco_eval_basic: 3 images, 9 polygons, segm only; its stats have -1 (no ground truth in the small range)
  and 0 (large objects exist, none matched) entries, which must stay distinct.

They go through `cocoeval_stats` (evaluation/backends.py: the raw 12 stats of a backend, after
`metric_ground_truth`) and `evaluate_results` (evaluation/coco.py: the report in percent that training and
`scratchdet eval` write) on the ground truth loaded as scratchdet loads an evaluation split (CocoDetection).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
from helpers import shared_path
from pycocotools.coco import COCO

from scratchdet.data.coco import CocoDetection
from scratchdet.evaluation.backends import BACKENDS, cocoeval_stats, metric_ground_truth
from scratchdet.evaluation.coco import STAT_NAMES, evaluate_results, format_report

# COCOeval stats (fractions) published for cocoapi's fake results on the first 100 val2014 images (README.txt).
FAKE100 = {
    "bbox": (
        0.5045806987249628,
        0.6969727247299577,
        0.5729816669904824,
        0.5856257209410443,
        0.5193996948036719,
        0.5013978986347466,
        0.3868127796457805,
        0.5936795762842003,
        0.595352982877607,
        0.6398109626113442,
        0.5664205978994309,
        0.5642905982905982,
    ),
    "segm": (
        0.3195452758576433,
        0.5622883972521636,
        0.2989265341208678,
        0.3873740315997837,
        0.3101827240336948,
        0.3269339071005138,
        0.2682297225711534,
        0.4154486811490637,
        0.4168394992198818,
        0.4694498622754236,
        0.3767592266619726,
        0.3814715099715099,
    ),
}
# faster-coco-eval's tests/test_basic.py::test_coco_eval (segm): -1 = no ground truth in the range, 0 = none matched.
BASIC = (
    0.6947194719471946,
    0.6947194719471946,
    0.6947194719471946,
    -1.0,
    0.7367986798679867,
    0.0,
    0.6666666666666666,
    0.75,
    0.75,
    -1.0,
    0.7916666666666666,
    0.0,
)
# Raw stats: measured within 3e-16 of the published values for both backends (pycocotools 2.0.11,
# faster-coco-eval 1.7); 1e-9 leaves room for another platform's floating-point sums.
RAW_TOLERANCE = 1e-9
# The report rounds percent to 3 decimals: at most 5e-6 in fraction units; the brief's bound was 1e-4.
PERCENT_TOLERANCE = 1e-3  # percent points, i.e. 1e-5 in fraction units


def _silent_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _results(iou_type: str) -> list[dict]:
    """A fresh copy of the fake results each time: the pycocotools backend adds fields to them in place."""
    path = shared_path("oracles", "cocoapi_fake100", f"instances_val2014_fake{iou_type}100_results.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def fake100_gt() -> COCO:
    return _silent_coco(shared_path("oracles", "cocoapi_fake100", "instances_val2014_100.json"))


@pytest.fixture(scope="module")
def fake100_split() -> CocoDetection:
    """The oracle's ground truth as scratchdet loads an evaluation split scored with box and mask AP (the val2014
    image files are not part of the oracle)."""
    folder = shared_path("oracles", "cocoapi_fake100")
    return CocoDetection(
        folder / "instances_val2014_100.json", folder, train=False, load_masks=False, segm_eval=True, check_files=False
    )


def _assert_percent_report(row: dict, expected: tuple[float, ...]) -> None:
    assert list(row) == list(STAT_NAMES)
    for name, value in zip(STAT_NAMES, expected, strict=True):
        if value < 0:
            assert row[name] is None, name
        else:
            assert row[name] == pytest.approx(100 * value, abs=PERCENT_TOLERANCE), name


# --- cocoapi fake results: 100 val2014 images, bbox and segm ----------------------------------------------------------


def test_the_official_ground_truth_loads_clean_and_its_crowd_ids_are_renumbered_for_the_metric(
    fake100_gt, fake100_split
):
    summary = fake100_split.summary
    assert (summary.images_total, summary.annotations_total, summary.crowd_excluded) == (100, 839, 9)
    assert summary.area_mismatches == 0 and summary.eval_polygon_parts_dropped == 0
    # COCO's crowd annotations have 12-digit ids (e.g. 900100000257), beyond what every metric implementation
    # stores exactly: metric_ground_truth scores a copy with ids 1..N, in the file's order; the index keeps its ids.
    big = [a["id"] for a in fake100_gt.dataset["annotations"] if a["id"] > 2**31 - 1]
    assert len(big) == 9 and all(fake100_gt.anns[i]["iscrowd"] for i in big)
    for iou_type in ("bbox", "segm"):
        scored = metric_ground_truth(fake100_gt, iou_type)
        assert scored is not fake100_gt
        assert sorted(scored.anns) == list(range(1, 840))
    assert max(fake100_gt.anns) == max(big)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cocoapi_fake_results_give_the_published_stats(fake100_gt, backend, iou_type):
    stats = cocoeval_stats(backend, fake100_gt, _results(iou_type), iou_type, sorted(fake100_gt.getImgIds()))
    np.testing.assert_allclose(stats, FAKE100[iou_type], rtol=0, atol=RAW_TOLERANCE)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cocoapi_fake_results_give_the_published_numbers_in_the_report(fake100_split, backend, iou_type):
    report = evaluate_results(fake100_split, _results(iou_type), [iou_type], len(fake100_split), backend=backend)
    assert (report["status"], report["images"], report["detections"]) == ("ok", 100, 734)
    _assert_percent_report(report[iou_type], FAKE100[iou_type])


# --- faster-coco-eval's basic segm case: -1 and 0 entries -------------------------------------------------------------


@pytest.fixture(scope="module")
def basic_split() -> CocoDetection:
    folder = shared_path("oracles", "faster_coco_eval_basic")
    return CocoDetection(folder / "gt_dataset.json", folder, train=False, load_masks=False, segm_eval=True)


def _basic_results(split: CocoDetection) -> list[dict]:
    """As faster-coco-eval's test prepares them: each detection's polygons merged into one RLE, its bbox dropped."""
    detections = json.loads(shared_path("oracles", "faster_coco_eval_basic", "dt_dataset.json").read_text())
    results = []
    for det in detections:
        image = split.coco.imgs[det["image_id"]]
        rle = mask_util.merge(mask_util.frPyObjects(det["segmentation"], image["height"], image["width"]))
        results.append(
            {
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "score": det["score"],
                "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            }
        )
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_basic_segm_case_keeps_no_ground_truth_apart_from_zero(basic_split, backend):
    assert basic_split.summary.area_mismatches == 0 and len(basic_split) == 3
    stats = cocoeval_stats(backend, basic_split.coco, _basic_results(basic_split), "segm", basic_split.image_ids)
    np.testing.assert_allclose(stats, BASIC, rtol=0, atol=RAW_TOLERANCE)

    report = evaluate_results(basic_split, _basic_results(basic_split), ["segm"], len(basic_split), backend=backend)
    assert (report["status"], report["images"], report["detections"]) == ("ok", 3, 9)
    row = report["segm"]
    _assert_percent_report(row, BASIC)
    # -1 (no small object at all) is None, written as null; 0 (large objects, none found) stays a number.
    assert row["APs"] is None and row["ARs"] is None
    assert row["APl"] == 0.0 and row["ARl"] == 0.0
    written = json.loads(json.dumps(report))["segm"]
    assert (written["APs"], written["APl"]) == (None, 0.0)
    assert format_report(report).splitlines()[1].split() == ["segm", "69.5", "69.5", "69.5", "-", "73.7", "0.0"]
