"""faster-coco-eval must give pycocotools' numbers: same 12 (or 10) stats on imperfect detections, crowds included."""

import contextlib
import copy
import io
import sys
from types import SimpleNamespace

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from scratchdet.data.synthetic import KEYPOINT_OKS_SIGMAS, WALKER_CATEGORY_ID, write_synthetic_coco
from scratchdet.errors import ConfigError
from scratchdet.evaluation.backends import cocoeval_stats
from scratchdet.evaluation.coco import coco_metrics, evaluate_results

# Agreement required, in COCOeval's fraction units (our reports are percent: 1e-2).
TOLERANCE = 1e-4
EMPTY_IMAGE_ID = 2  # this image gets no detections at all


@pytest.fixture(scope="module")
def gt(tmp_path_factory) -> COCO:
    """30 synthetic val images, large enough for small and medium objects and (>= 20 images) a crowd region."""
    out = tmp_path_factory.mktemp("backends")
    write_synthetic_coco(out, train_images=0, val_images=30, seed=3, min_side=128, max_side=224)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "instances_val.json"))
    assert any(ann["iscrowd"] for ann in coco.dataset["annotations"])
    assert coco.getAnnIds(imgIds=[EMPTY_IMAGE_ID])  # its objects must count as misses
    return coco


@pytest.fixture(scope="module")
def detections(gt) -> list[dict]:
    return jittered_detections(gt, np.random.default_rng(0))


def jittered_detections(coco: COCO, rng: np.random.Generator) -> list[dict]:
    """Imperfect, scored detections: every non-crowd object shifted and rescaled (box, mask and keypoints),
    detections covering the crowd regions, and random false positives; image EMPTY_IMAGE_ID gets none."""
    results = []
    cat_ids = sorted(coco.getCatIds())
    for ann in coco.dataset["annotations"]:
        if ann["image_id"] == EMPTY_IMAGE_ID:
            continue
        x, y, w, h = ann["bbox"]
        # Crowd regions are detected as they are: a match on a crowd must be ignored, not counted, by both.
        dx, dy = (0.0, 0.0) if ann["iscrowd"] else rng.normal(0.0, 0.1, 2) * [w, h]
        mask = np.roll(coco.annToMask(ann), (round(dy), round(dx)), axis=(0, 1))
        det = {
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "bbox": [x + dx, y + dy, w * rng.uniform(0.85, 1.15), h * rng.uniform(0.85, 1.15)],
            "score": float(rng.uniform(0.3, 1.0)),
            "segmentation": _rle(mask),
        }
        if "keypoints" in ann:
            points = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            points[:, :2] += rng.normal(0.0, 2.0, (len(points), 2))
            points[:, 2] = 1
            det["keypoints"] = points.reshape(-1).tolist()
        results.append(det)
    image_ids = [i for i in sorted(coco.getImgIds()) if i != EMPTY_IMAGE_ID]
    for _ in range(60):  # false positives: random boxes (filled masks, scattered keypoints), mostly low scores
        image = coco.imgs[int(rng.choice(image_ids))]
        x0, y0 = rng.uniform(0, image["width"] - 10), rng.uniform(0, image["height"] - 10)
        w, h = rng.uniform(5, image["width"] - x0), rng.uniform(5, image["height"] - y0)
        mask = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        mask[int(y0) : int(y0 + h), int(x0) : int(x0 + w)] = 1
        n_kp = len(KEYPOINT_OKS_SIGMAS)
        keypoints = np.column_stack([rng.uniform(x0, x0 + w, n_kp), rng.uniform(y0, y0 + h, n_kp), np.ones(n_kp)])
        results.append({
            "image_id": image["id"],
            "category_id": int(rng.choice(cat_ids)),
            "bbox": [x0, y0, w, h],
            "score": float(rng.uniform(0.0, 0.6)),
            "segmentation": _rle(mask),
            "keypoints": keypoints.reshape(-1).tolist(),
        })  # fmt: skip
    return results


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _both(gt, detections, iou_type, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    image_ids = sorted(gt.getImgIds())
    reference = cocoeval_stats("pycocotools", gt, copy.deepcopy(detections), iou_type, image_ids, **kwargs)
    faster = cocoeval_stats("faster_coco_eval", gt, copy.deepcopy(detections), iou_type, image_ids, **kwargs)
    return reference, faster


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_coco_eval_matches_pycocotools(gt, detections, iou_type):
    reference, faster = _both(gt, detections, iou_type)
    assert reference.shape == faster.shape == (12,)
    # The detections are imperfect, so the agreement is not the trivial 100 == 100 (nor 0 == 0).
    assert 0.1 < reference[0] < 0.9
    assert (reference >= 0).sum() >= 8  # small and medium objects present: most area-range stats are defined
    np.testing.assert_allclose(faster, reference, rtol=0, atol=TOLERANCE)


def test_faster_coco_eval_matches_pycocotools_on_keypoints(gt, detections):
    walkers = [d for d in detections if d["category_id"] == WALKER_CATEGORY_ID]
    reference, faster = _both(
        gt, walkers, "keypoints", cat_ids=[WALKER_CATEGORY_ID], kpt_oks_sigmas=KEYPOINT_OKS_SIGMAS
    )
    assert reference.shape == faster.shape == (10,)
    assert 0.05 < reference[0] < 0.95
    np.testing.assert_allclose(faster, reference, rtol=0, atol=TOLERANCE)


def test_coco_metrics_and_evaluate_results_pass_the_backend_through(gt, detections):
    image_ids = sorted(gt.getImgIds())
    reference = coco_metrics(gt, copy.deepcopy(detections), "segm", image_ids)
    faster = coco_metrics(gt, copy.deepcopy(detections), "segm", image_ids, backend="faster_coco_eval")
    assert reference.keys() == faster.keys()
    for name, value in reference.items():  # percent, rounded to 3 decimals: agreement to 1e-2 percent
        assert (value is None) == (faster[name] is None), name
        assert value is None or abs(value - faster[name]) <= 100 * TOLERANCE, name
    # A keypoint dataset's category and OKS sigmas reach the faster backend too.
    dataset = SimpleNamespace(
        coco=gt, image_ids=image_ids, keypoint_cat_id=WALKER_CATEGORY_ID, kpt_oks_sigmas=KEYPOINT_OKS_SIGMAS
    )
    walkers = [d for d in detections if d["category_id"] == WALKER_CATEGORY_ID]
    reports = [
        evaluate_results(dataset, copy.deepcopy(walkers), ["bbox", "keypoints"], len(image_ids), backend=backend)
        for backend in ("pycocotools", "faster_coco_eval")
    ]
    assert reports[0]["status"] == reports[1]["status"] == "ok"
    for iou_type in ("bbox", "keypoints"):
        for name, value in reports[0][iou_type].items():
            other = reports[1][iou_type][name]
            assert (value is None) == (other is None) and (value is None or abs(value - other) <= 1e-2), name


def test_faster_backend_leaves_results_and_ground_truth_untouched(gt, detections):
    results = copy.deepcopy(detections)
    annotations = copy.deepcopy(gt.dataset["annotations"])
    cocoeval_stats("faster_coco_eval", gt, results, "segm", sorted(gt.getImgIds()))
    assert results == detections
    assert gt.dataset["annotations"] == annotations


def test_unknown_backend_is_a_config_error_naming_the_key(gt, detections):
    with pytest.raises(ConfigError, match=r"eval\.coco_backend='detectron'.*pycocotools.*faster_coco_eval"):
        coco_metrics(gt, copy.deepcopy(detections), "bbox", sorted(gt.getImgIds()), backend="detectron")


def test_missing_faster_coco_eval_is_a_config_error_with_the_fix(gt, detections, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # what an environment without the package sees
    with pytest.raises(ConfigError, match=r"eval\.coco_backend=faster_coco_eval.*pip install"):
        cocoeval_stats("faster_coco_eval", gt, copy.deepcopy(detections), "bbox", sorted(gt.getImgIds()))
