"""Keypoint R-CNN (issue 7, part 4): GN keypoint head, keypoint data and flips, OKS keypoint AP, a short run."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import ROOT, tiny_overrides
from torch import nn

from scratchdet.config import load_config
from scratchdet.data.build import build_train_dataset, build_val_dataset
from scratchdet.data.coco import _build_coco
from scratchdet.data.keypoints import COCO_PERSON_OKS_SIGMAS, KeypointCocoDetection
from scratchdet.data.synthetic import KEYPOINT_NAMES, KEYPOINT_OKS_SIGMAS, keypoint_flip_map
from scratchdet.data.transforms import RandomHorizontalFlip
from scratchdet.engine import trainer
from scratchdet.errors import ConfigError
from scratchdet.evaluation.coco import KEYPOINT_STAT_NAMES, coco_metrics
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.keypoint_head import KeypointRCNNConvNormHead
from scratchdet.modeling.norm import build_norm

KP_MINI = ROOT / "configs" / "mini" / "keypoint_rcnn_R18_FPN_GN_scratch.yaml"


def test_gn_keypoint_head_has_gn_after_every_conv_and_no_conv_bias():
    head = KeypointRCNNConvNormHead(16, [32] * 8, norm_layer=build_norm("GN", 32))
    layers = list(head)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    for i in convs:
        assert layers[i].bias is None
        assert isinstance(layers[i + 1], nn.GroupNorm) and layers[i + 1].num_channels == 32
        assert isinstance(layers[i + 2], nn.ReLU)
    assert head(torch.zeros(2, 16, 14, 14)).shape == (2, 32, 14, 14)
    plain = KeypointRCNNConvNormHead(16, [32] * 2, norm_layer=None)  # norm=none: torchvision's head
    assert all(m.bias is not None for m in plain if isinstance(m, nn.Conv2d))


def test_detector_builds_keypoint_rcnn_with_the_norm_head(shapes_dir, tmp_path):
    cfg = load_config(KP_MINI, tiny_overrides(shapes_dir, tmp_path / "run"))
    model = build_detector(cfg, 2, num_keypoints=len(KEYPOINT_NAMES))
    heads = model.roi_heads
    assert heads.has_keypoint()
    assert sum(isinstance(m, nn.GroupNorm) for m in heads.keypoint_head) == cfg.model.keypoint_head_convs
    assert heads.keypoint_predictor.kps_score_lowres.out_channels == len(KEYPOINT_NAMES)
    with pytest.raises(ValueError, match="num_keypoints"):
        build_detector(cfg, 2)


def test_keypoint_dataset_keeps_one_category_with_labelled_keypoints(shapes_dir):
    ds = KeypointCocoDetection(shapes_dir / "instances_train.json", shapes_dir / "train", train=True)
    assert ds.keypoint_cat_id == 13 and ds.num_classes == 2 and ds.label_to_cat_id == {1: 13}
    assert ds.kpt_oks_sigmas == KEYPOINT_OKS_SIGMAS and ds.num_keypoints == len(KEYPOINT_NAMES)
    s = ds.summary
    assert s.other_categories_ignored > 0 and s.annotations_used > 0
    walkers = [a for a in ds.coco.anns.values() if a["category_id"] == 13 and not a["iscrowd"]]
    labelled = [a for a in walkers if a["num_keypoints"] > 0]
    assert s.annotations_used + s.no_keypoints_dropped + s.degenerate_boxes_dropped >= len(labelled)
    image, target = ds[0]
    kps = target["keypoints"]
    assert kps.dtype == torch.float32 and kps.shape == (len(target["boxes"]), len(KEYPOINT_NAMES), 3)
    assert (target["labels"] == 1).all() and (kps[..., 2] > 0).any(dim=1).all()
    assert target["keypoint_flip_map"] == keypoint_flip_map(KEYPOINT_NAMES)
    with pytest.raises(ConfigError, match="keypoint_category"):
        KeypointCocoDetection(shapes_dir / "instances_train.json", shapes_dir / "train", train=True,
                              keypoint_category="circle")


def test_flip_swaps_left_and_right_keypoints(shapes_dir):
    plain = KeypointCocoDetection(shapes_dir / "instances_train.json", shapes_dir / "train", train=True)
    flipped = KeypointCocoDetection(shapes_dir / "instances_train.json", shapes_dir / "train", train=True,
                                    transform=RandomHorizontalFlip(1.0))
    flip = keypoint_flip_map(KEYPOINT_NAMES)
    left = KEYPOINT_NAMES.index(next(n for n in KEYPOINT_NAMES if n.startswith("left_")))
    right = flip[left]
    assert KEYPOINT_NAMES[right] == "right_" + KEYPOINT_NAMES[left][len("left_"):]
    image, a = plain[0]
    _, b = flipped[0]
    width = image.shape[-1]
    ka, kb = a["keypoints"], b["keypoints"]
    # New keypoint i is the mirror of old keypoint flip[i]: a left wrist becomes a right wrist and vice versa.
    for i, j in enumerate(flip):
        labelled = ka[:, j, 2] > 0
        assert torch.equal(kb[:, i, 2], ka[:, j, 2])
        assert torch.allclose(kb[labelled, i, 0], width - ka[labelled, j, 0])
        assert torch.allclose(kb[labelled, i, 1], ka[labelled, j, 1])
        assert (kb[~labelled, i] == 0).all()


def _kp_gt(shift_second: float) -> tuple:
    """Two images, one 2-keypoint instance each (area 1600, "medium"); predictions = gt, the 2nd shifted in x."""
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)]
    cats = [{"id": 5, "name": "p", "keypoints": ["left_a", "right_a"]}, {"id": 6, "name": "other"}]
    kps = [20.0, 30.0, 2, 40.0, 30.0, 2]
    anns = [{"id": i, "image_id": i, "category_id": 5, "bbox": [10.0, 10.0, 40.0, 40.0], "area": 1600.0,
             "iscrowd": 0, "keypoints": kps, "num_keypoints": 2} for i in (1, 2)]
    anns.append({"id": 3, "image_id": 1, "category_id": 6, "bbox": [60.0, 60.0, 30.0, 30.0], "area": 900.0,
                 "iscrowd": 0})  # another category: must not count (catIds restricted to the keypoint one)
    coco = _build_coco({"images": images, "annotations": anns, "categories": cats})
    shifted = [v + shift_second if k % 3 == 0 else v for k, v in enumerate(kps)]
    results = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9, "keypoints": kps},
               {"image_id": 2, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.8, "keypoints": shifted}]
    return coco, results


def test_keypoint_ap_hand_checked():
    sigmas = [0.1, 0.1]
    coco, results = _kp_gt(0.0)
    exact = coco_metrics(coco, results, "keypoints", [1, 2], cat_ids=[5], kpt_oks_sigmas=sigmas)
    assert list(exact) == list(KEYPOINT_STAT_NAMES)
    assert exact["AP"] == exact["AP50"] == exact["AP75"] == exact["APm"] == 100.0 and exact["APl"] is None
    coco, results = _kp_gt(6.0)
    shifted = coco_metrics(coco, results, "keypoints", [1, 2], cat_ids=[5], kpt_oks_sigmas=sigmas)
    # OKS = exp(-d^2 / (2 * area * (2 sigma)^2)) = exp(-36 / 128) = 0.7548 for the shifted instance: matched at
    # thresholds 0.50..0.75 (6 of 10, AP 1); at 0.80..0.95 only the higher-scored exact one is, so precision is 1 up
    # to recall 0.5 and 0 beyond: 51 of the 101 recall points. AP = (6 + 4 * 51 / 101) / 10.
    assert math.exp(-36 / 128) == pytest.approx(0.7548, abs=1e-4)
    assert shifted["AP"] == pytest.approx(100 * (6 + 4 * 51 / 101) / 10, abs=1e-3)
    assert shifted["AP50"] == shifted["AP75"] == 100.0
    assert shifted["AR"] == pytest.approx(100 * (6 + 4 * 0.5) / 10, abs=1e-3)


def test_coco_person_sigmas_are_pycocotools_defaults():
    from pycocotools.cocoeval import Params

    assert np.allclose(Params(iouType="keypoints").kpt_oks_sigmas, COCO_PERSON_OKS_SIGMAS)


def test_keypoint_rcnn_trains_and_reports_keypoint_ap(shapes_dir, tmp_path):
    overrides = tiny_overrides(shapes_dir, tmp_path / "run", **{
        "train.max_iters": 2, "data.min_size_train": "[80]", "eval.max_images": 2,
        "model.keypoint_head_convs": 2, "model.keypoint_head_channels": 32,
        "model.box_score_thresh": 0.0,  # 2 iterations from scratch: keep every detection so there is AP to compute
    })
    cfg = load_config(KP_MINI, overrides)
    assert build_train_dataset(cfg).num_keypoints == build_val_dataset(cfg).num_keypoints == len(KEYPOINT_NAMES)
    result = trainer.train(cfg)
    reports = sorted((tmp_path / "run" / "eval").glob("iter_*.json"))
    report = json.loads(reports[-1].read_text())
    assert report["status"] == "ok" and report["detections"] > 0
    assert list(report["keypoints"]) == list(KEYPOINT_STAT_NAMES) and "bbox" in report and "segm" not in report
    assert result is not None
    summary = json.loads((tmp_path / "run" / "dataset_train.json").read_text())
    assert summary["keypoint_category_id"] == 13 and summary["other_categories_ignored"] > 0
