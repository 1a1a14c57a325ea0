"""Real COCO 2017 images and official annotations (../shared/data/coco_tiny: 80 train + 80 val images, one per
category): `scratchdet data check` finds nothing to refuse, the paper's R50-FPN-GN model trains on them and
`scratchdet eval` scores it, and the mini model lowers its loss on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import MINI_CONFIG, ROOT, shared_path

from scratchdet.cli import main
from scratchdet.engine.metrics import read_metrics
from scratchdet.evaluation.coco import STAT_NAMES
from scratchdet.run_folder import RunFolder

# Real COCO images and annotations, trained and evaluated: `make test-fast` leaves them out.
pytestmark = pytest.mark.e2e

PAPER_R50 = ROOT / "configs" / "paper" / "mask_rcnn_R50_FPN_GN_scratch_2x.yaml"
# SOURCE.txt: images and annotations per split; crowd regions (RLE) among them.
SPLITS = {"train2017": (80, 705, 6), "val2017": (80, 815, 11)}


@pytest.fixture(scope="module")
def coco_tiny() -> Path:
    return shared_path("data", "coco_tiny")


def _json(root: Path, split: str) -> str:
    return str(root / "annotations" / f"instances_{split}.json")


def _data_overrides(root: Path) -> list[str]:
    return [
        f"data.train.json={_json(root, 'train2017')}",
        f"data.train.images={root / 'train2017'}",
        f"data.val.json={_json(root, 'val2017')}",
        f"data.val.images={root / 'val2017'}",
        "data.num_workers=0",
    ]


# --- scratchdet data check --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "other", "decode"), [("train2017", "val2017", False), ("val2017", "train2017", True)]
)
def test_data_check_finds_no_problem_in_the_official_files(coco_tiny, capsys, split, other, decode):
    args = ["data", "check", _json(coco_tiny, split), "--images", str(coco_tiny / split)]
    args += ["--against", _json(coco_tiny, other), "--json"] + (["--decode"] if decode else [])
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problem_counts"] == {} and report["problems"] == []
    n_images, n_anns, n_crowd = SPLITS[split]
    assert (report["images_checked"], report["images_decoded"]) == (n_images, n_images if decode else 0)
    assert set(report["summaries"]) == {"training", "evaluation"}
    for summary in report["summaries"].values():
        assert (summary["images_total"], summary["images_used"]) == (n_images, n_images)
        assert (summary["annotations_total"], summary["crowd_excluded"]) == (n_anns, n_crowd)
        assert summary["annotations_used"] == n_anns - n_crowd
        for dropped in ("boxes_outside_dropped", "degenerate_boxes_dropped", "invalid_polygons_dropped"):
            assert summary[dropped] == 0, dropped
        assert summary["area_mismatches"] == 0 and summary["eval_polygon_parts_dropped"] == 0
        assert len(summary["categories"]) == 80


# --- the paper's R50-FPN-GN model: train, then `scratchdet eval` ------------------------------------------------------


def _assert_coco_report(report: dict, n_images: int) -> None:
    """The report evaluation writes: counts, and bbox + segm metrics in percent (None where undefined)."""
    assert report["images"] == n_images
    assert report["status"] == "ok" and 0 < report["detections"] <= 10 * n_images, report  # <= detections_per_img
    for iou_type in ("bbox", "segm"):
        row = report[iou_type]
        assert list(row) == list(STAT_NAMES)
        assert all(v is None or 0.0 <= v <= 100.0 for v in row.values()), row
        assert row["AP"] is not None  # defined wherever the evaluated images have objects


def real_coco_overrides(coco_tiny, run) -> list[str]:
    return [
        f"output={run}",
        *_data_overrides(coco_tiny),
        "data.min_size_train=[160]",
        "data.max_size_train=192",
        "data.min_size_test=160",
        "data.max_size_test=192",
        "model.rpn_pre_nms_top_n_train=600",
        "model.rpn_post_nms_top_n_train=200",
        "model.box_batch_size_per_image=32",
        "model.rpn_pre_nms_top_n_test=300",
        "model.rpn_post_nms_top_n_test=50",
        "model.box_score_thresh=0.0",
        "model.box_detections_per_img=10",
        "train.batch_size=2",
        "train.max_iters=2",
        "train.log_period=1",
        "eval.max_images=2",
    ]


def test_paper_r50_fpn_gn_trains_on_real_coco_and_scratchdet_eval_scores_it(coco_tiny, tmp_path):
    # The real paper model (R50, GN everywhere, 4conv1fc box head, 256-channel FPN) at toy image size and fewer
    # RoIs: the box and mask heads over the paper's 512 RoIs x 1000 proposals dominate a CPU iteration. A score
    # threshold of 0 and 10 detections per image make an untrained model predict, so that both COCO metrics run on
    # real detections (pasted masks, RLEs) against the official annotations.
    run = tmp_path / "r50"
    overrides = real_coco_overrides(coco_tiny, run)
    assert main(["train", str(PAPER_R50), *overrides]) == 0
    folder = RunFolder(run)
    train = read_metrics(run, "train")
    assert [r["iter"] for r in train] == [1, 2] and all(r["seen"]["images"] == 2 * r["iter"] for r in train)
    assert folder.checkpoint(2).is_file()
    _assert_coco_report(json.loads(folder.eval_report(2).read_text()), 2)  # the end-of-training evaluation

    assert main(["eval", str(run), "eval.max_images=5"]) == 0
    # Other settings than training's: written beside the training record, which keeps its 2 images.
    report = json.loads((folder.eval_dir / "iter_0000002_max_images-5.json").read_text())
    _assert_coco_report(report, 5)
    assert json.loads(folder.eval_report(2).read_text())["images"] == 2
    assert report["iter"] == 2 and report["overrides"] == ["eval.max_images=5"]
    assert Path(report["checkpoint"]) == folder.checkpoint(2)


# --- the mini model lowers its loss -----------------------------------------------------------------------------------


def test_mini_config_lowers_its_loss_on_real_coco(coco_tiny, tmp_path):
    run = tmp_path / "mini"
    overrides = [
        f"output={run}",
        *_data_overrides(coco_tiny),
        "seed=0",
        "data.min_size_train=[128]",
        "data.max_size_train=160",
        "data.min_size_test=128",
        "data.max_size_test=160",
        "train.batch_size=2",
        "train.max_iters=30",
        "train.log_period=5",
        "eval.max_images=1",
    ]
    assert main(["train", str(MINI_CONFIG), *overrides]) == 0
    records = read_metrics(run, "train")
    assert [r["iter"] for r in records] == [5, 10, 15, 20, 25, 30]
    losses = [round(r["loss"], 3) for r in records]
    objectness = [round(r["loss_objectness"], 4) for r in records]
    # Measured, mean loss per 5-iteration window (2 threads; seed 0 is reproducible run to run):
    #   seed 0: 6.175 5.402 3.495 2.936 3.482 2.862   objectness 0.694 ... 0.680
    #   seed 1: 6.066 5.461 4.046 2.687 3.250 2.734   objectness 0.693 ... 0.678
    #   seed 2: 5.996 5.530 3.852 2.927 3.873 3.074   objectness 0.693 ... 0.678
    # The last two windows average 0.49-0.58 of the first: 0.7 leaves ~1 loss unit of margin. The classifier term
    # (ln 81 = 4.39 at random init) drops most; the RPN's objectness (ln 2 at init) falls steadily by ~0.015.
    first, last = losses[0], (losses[-2] + losses[-1]) / 2
    assert last < 0.7 * first, losses
    assert objectness[-1] < objectness[0] - 0.005, objectness


def test_the_fast_step_trains_the_paper_model_on_real_coco(coco_tiny, tmp_path):
    """model.step=fast (modeling/fast_step.py) on real annotations: images with many objects of many sizes, crowd
    regions left out, polygon masks; the fixed-size step trains them with finite losses and the run evaluates."""
    run = tmp_path / "r50-fast"
    assert main(["train", str(PAPER_R50), *real_coco_overrides(coco_tiny, run), "model.step=fast"]) == 0
    train = read_metrics(run, "train")
    assert [r["iter"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in train), train
    assert {"loss_mask", "loss_classifier", "loss_objectness"} <= set(train[-1])
    _assert_coco_report(json.loads(RunFolder(run).eval_report(2).read_text()), 2)
