"""Keypoint R-CNN (docs/PAPER.md, "Keypoints (Fig. 6)"): GN keypoint head, keypoint data and flips, OKS keypoint AP,
a short run."""

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
from scratchdet.errors import ConfigError, DataError
from scratchdet.evaluation.coco import KEYPOINT_STAT_NAMES, coco_metrics
from scratchdet.modeling.detector import build_detector
from scratchdet.modeling.keypoint_head import KeypointRCNNConvNormHead
from scratchdet.modeling.norm import build_norm
from scratchdet.modeling.predictors import KeypointPredictor

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
    assert type(heads.keypoint_predictor) is KeypointPredictor  # channels-last on CPU (modeling/predictors.py)
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
        KeypointCocoDetection(
            shapes_dir / "instances_train.json", shapes_dir / "train", train=True, keypoint_category="circle"
        )


def test_flip_swaps_left_and_right_keypoints(shapes_dir):
    plain = KeypointCocoDetection(shapes_dir / "instances_train.json", shapes_dir / "train", train=True)
    flipped = KeypointCocoDetection(
        shapes_dir / "instances_train.json", shapes_dir / "train", train=True, transform=RandomHorizontalFlip(1.0)
    )
    flip = keypoint_flip_map(KEYPOINT_NAMES)
    left = KEYPOINT_NAMES.index(next(n for n in KEYPOINT_NAMES if n.startswith("left_")))
    right = flip[left]
    assert KEYPOINT_NAMES[right] == "right_" + KEYPOINT_NAMES[left][len("left_") :]
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
    anns = [
        {
            "id": i,
            "image_id": i,
            "category_id": 5,
            "bbox": [10.0, 10.0, 40.0, 40.0],
            "area": 1600.0,
            "iscrowd": 0,
            "keypoints": kps,
            "num_keypoints": 2,
        }
        for i in (1, 2)
    ]
    anns.append(
        {"id": 3, "image_id": 1, "category_id": 6, "bbox": [60.0, 60.0, 30.0, 30.0], "area": 900.0, "iscrowd": 0}
    )  # another category: must not count (catIds restricted to the keypoint one)
    coco = _build_coco({"images": images, "annotations": anns, "categories": cats})
    shifted = [v + shift_second if k % 3 == 0 else v for k, v in enumerate(kps)]
    results = [
        {"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9, "keypoints": kps},
        {"image_id": 2, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.8, "keypoints": shifted},
    ]
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
    overrides = tiny_overrides(
        shapes_dir,
        tmp_path / "run",
        **{
            "train.max_iters": 2,
            "data.min_size_train": "[80]",
            "eval.max_images": 2,
            "model.keypoint_head_convs": 2,
            "model.keypoint_head_channels": 32,
            "model.box_score_thresh": 0.0,  # 2 iterations from scratch: keep every detection so there is AP to compute
        },
    )
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


# --- Keypoint sides: the flip map from the names' spelling, data.keypoint_flip_map, or a refusal ---------------------


@pytest.mark.parametrize(
    ("names", "pairs"),
    [
        (["nose", "l_eye", "r_eye"], [("l_eye", "r_eye")]),
        (["nose", "left-eye", "right-eye"], [("left-eye", "right-eye")]),
        (["rightEye", "leftEye"], [("leftEye", "rightEye")]),
        (["EyeRight", "EyeLeft", "Neck"], [("EyeLeft", "EyeRight")]),
        (["eye_left", "eye_right", "hip_r", "hip_l"], [("eye_left", "eye_right"), ("hip_l", "hip_r")]),
        (
            ["L_shoulder", "R_shoulder", "LEFT_KNEE", "RIGHT_KNEE"],
            [("L_shoulder", "R_shoulder"), ("LEFT_KNEE", "RIGHT_KNEE")],
        ),
        # OpenPose BODY_25 order, abridged: right side first.
        (
            ["Nose", "Neck", "RShoulder", "RElbow", "LShoulder", "LElbow", "MidHip", "RBigToe", "LBigToe"],
            [("LShoulder", "RShoulder"), ("LElbow", "RElbow"), ("LBigToe", "RBigToe")],
        ),
        (["hand_left_thumb2", "hand_right_thumb2", "LED", "tail"], [("hand_left_thumb2", "hand_right_thumb2")]),
        # The side letter in the middle: Blender's .L/.R with a .001 suffix, and thumb_L_tip.
        (
            ["hand.L.001", "hand.R.001", "thumb_R_tip", "thumb_L_tip"],
            [("hand.L.001", "hand.R.001"), ("thumb_L_tip", "thumb_R_tip")],
        ),
        (["L", "R", "C"], [("L", "R")]),
        # Vertebrae are not sides: L1..L5 (lumbar) beside C7, T1, S1.
        (["C7", "T1", "L1", "L2", "L5", "S1"], []),
    ],
)
def test_common_spellings_of_a_side_are_paired(names, pairs):
    from scratchdet.data.keypoint_flip import flip_indices, keypoint_flip_pairs

    assert keypoint_flip_pairs(names) == pairs
    flip = flip_indices(names, pairs)
    assert [flip[f] for f in flip] == list(range(len(names)))  # an involution
    swapped = {names[i]: names[j] for i, j in enumerate(flip) if i != j}
    assert swapped == {**dict(pairs), **{b: a for a, b in pairs}}


@pytest.mark.parametrize(
    ("names", "unpaired"),
    [
        (["head", "left_paw"], ["left_paw"]),  # no right_paw
        (["leftfoot", "rightfoot", "nose"], ["leftfoot", "rightfoot"]),  # side inside a word: not guessed
        (["lhip", "rhip", "nose"], ["lhip", "rhip"]),  # l/r twins without a separator
        (["left_eye", "LEye", "right_eye"], ["left_eye", "LEye", "right_eye"]),  # two left eyes: ambiguous
        (["L_eye", "eye_R"], ["L_eye", "eye_R"]),  # side tokens at different places
        # Legged robots: front/rear left/right. "RL" starts with R (rear), so no letter can be trusted.
        (["FL_foot", "FR_foot", "RL_foot", "RR_foot", "base"], ["FL_foot", "FR_foot", "RL_foot", "RR_foot"]),
    ],
)
def test_names_that_look_lateral_but_cannot_be_paired_are_refused(names, unpaired):
    from scratchdet.data.keypoint_flip import UnpairedKeypointsError, keypoint_flip_pairs

    with pytest.raises(UnpairedKeypointsError, match="data.keypoint_flip_map") as caught:
        keypoint_flip_pairs(names)
    assert caught.value.names == unpaired


def test_explicit_flip_map_pairs_first_and_marks_names_without_a_mirror():
    from scratchdet.data.keypoint_flip import keypoint_flip_pairs

    names = ["leftfoot", "rightfoot", "bright_spot", "left_eye", "right_eye", "right_eye_x", "left_eye_x"]
    explicit = [["leftfoot", "rightfoot"], ["bright_spot", "bright_spot"], ["left_eye", "left_eye_x"]]
    with pytest.raises(ValueError, match=r"\['right_eye', 'right_eye_x'\]"):  # their recognised partners are taken
        keypoint_flip_pairs(names, explicit)
    explicit.append(["right_eye", "right_eye_x"])
    assert keypoint_flip_pairs(names, explicit) == [
        ("leftfoot", "rightfoot"),
        ("left_eye", "left_eye_x"),
        ("right_eye", "right_eye_x"),
    ]
    with pytest.raises(ConfigError, match=r"names \['nose'\], which the category does not declare"):
        keypoint_flip_pairs(names, [["nose", "leftfoot"]])


def _write_keypoint_coco(root, names: list[str]) -> tuple:
    """One 40x20 image with one instance: keypoint k at x = 2 + 4k, y = 10, all visible."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    Image.new("RGB", (40, 20), (90, 90, 90)).save(root / "img" / "a.png")
    kps = [v for k in range(len(names)) for v in (2.0 + 4 * k, 10.0, 2)]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 20}],
        "categories": [{"id": 3, "name": "animal", "keypoints": names}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 3,
                "bbox": [1.0, 2.0, 36.0, 16.0],
                "area": 576.0,
                "iscrowd": 0,
                "keypoints": kps,
                "num_keypoints": len(names),
            }
        ],
    }
    path = root / "kp.json"
    path.write_text(json.dumps(data))
    return path, root / "img"


def test_dataset_flips_openpose_names_and_records_the_pairs(tmp_path):
    names = ["Nose", "REye", "LEye", "tail"]
    json_path, images = _write_keypoint_coco(tmp_path, names)
    ds = KeypointCocoDetection(
        json_path, images, train=True, transform=RandomHorizontalFlip(1.0), kpt_oks_sigmas=[0.1] * 4
    )
    assert ds.summary.keypoint_flip_pairs == [["LEye", "REye"]]
    assert ds.summary.to_dict()["keypoint_flip_pairs"] == [["LEye", "REye"]]
    _, target = ds[0]
    # Before the flip: Nose x=2, REye x=6, LEye x=10, tail x=14. After: x' = 40 - x, and the eyes trade names.
    assert target["keypoints"][0, :, 0].tolist() == [38.0, 30.0, 34.0, 26.0]
    assert target["keypoint_flip_map"] == [0, 2, 1, 3]


def test_dataset_refuses_unpairable_names_naming_file_category_and_names(tmp_path):
    json_path, images = _write_keypoint_coco(tmp_path, ["nose", "leftpaw", "rightpaw"])
    with pytest.raises(
        DataError,
        match=r"category 3 \(animal\): keypoints \['leftpaw', 'rightpaw'\] look like one "
        r"side .*set data.keypoint_flip_map.*file .*kp.json",
    ):
        KeypointCocoDetection(json_path, images, train=True, kpt_oks_sigmas=[0.1] * 3)
    ds = KeypointCocoDetection(
        json_path,
        images,
        train=True,
        transform=RandomHorizontalFlip(1.0),
        kpt_oks_sigmas=[0.1] * 3,
        keypoint_flip_map=[["leftpaw", "rightpaw"]],
    )
    assert ds.summary.keypoint_flip_pairs == [["leftpaw", "rightpaw"]]
    assert ds[0][1]["keypoints"][0, :, 0].tolist() == [38.0, 30.0, 34.0]
    with pytest.raises(ConfigError, match=r"kp.json, category 3 \(animal\): data.keypoint_flip_map names \['paw'\]"):
        KeypointCocoDetection(
            json_path, images, train=True, kpt_oks_sigmas=[0.1] * 3, keypoint_flip_map=[["paw", "rightpaw"]]
        )


def test_config_keypoint_flip_map_reaches_the_dataset(tmp_path):
    json_path, images = _write_keypoint_coco(tmp_path, ["nose", "leftpaw", "rightpaw"])
    paths = [
        f"data.{split}.{kind}={json_path if kind == 'json' else images}"
        for split in ("train", "val")
        for kind in ("json", "images")
    ]
    cfg = load_config(
        KP_MINI,
        [
            "output=x",
            "data.keypoint_category=animal",
            "eval.kpt_oks_sigmas=[0.1,0.1,0.1]",
            "data.keypoint_flip_map=[[leftpaw,rightpaw]]",
            *paths,
        ],
    )
    assert build_train_dataset(cfg).summary.keypoint_flip_pairs == [["leftpaw", "rightpaw"]]
    assert build_val_dataset(cfg).summary.keypoint_flip_pairs == [["leftpaw", "rightpaw"]]


def test_keypoint_ap_scores_only_the_best_20_detections_per_image():
    # COCOeval's keypoint maxDets is 20: a perfect detection ranked 21st by score is never scored.
    coco, results = _kp_gt(0.0)
    perfect = [r for r in results if r["image_id"] == 1]
    far = {"image_id": 1, "category_id": 5, "bbox": [60, 60, 30, 30], "keypoints": [75.0, 75.0, 2, 80.0, 75.0, 2]}
    decoys = [{**far, "score": 0.99 - 0.001 * k} for k in range(19)]
    at_20 = coco_metrics(
        coco, [*decoys, {**perfect[0], "score": 0.5}], "keypoints", [1], cat_ids=[5], kpt_oks_sigmas=[0.1, 0.1]
    )
    at_21 = coco_metrics(
        coco,
        [*decoys, {**far, "score": 0.98}, {**perfect[0], "score": 0.5}],
        "keypoints",
        [1],
        cat_ids=[5],
        kpt_oks_sigmas=[0.1, 0.1],
    )
    assert at_20["AP"] == pytest.approx(100 / 20, abs=1e-3)  # recall 1 reached at rank 20: precision 1/20
    assert at_21["AP"] == 0.0
