"""Test-time augmentation (docs/PAPER.md, "Testing"): the merge on hand-made boxes, the flip convention, the model
passes, and `scratchdet eval RUN tta=true` end to end on a tiny trained run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.run_eval import evaluate_run
from scratchdet.errors import ConfigError
from scratchdet.evaluation.tta import (
    build_tta_predictor,
    merge_detections,
    predict_tta,
    resized_for_test,
    unflip_boxes,
)
from scratchdet.modeling.detector import build_detector


def dets(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def test_duplicates_across_scales_are_merged_keeping_the_best_score():
    small = dets([[10, 10, 50, 50]], [0.7], [1])
    large = dets([[11, 10, 50, 51]], [0.9], [1])  # the same object seen at another scale
    merged = merge_detections([small, large], nms_thresh=0.5, detections_per_img=100)
    assert merged["boxes"].tolist() == [[11, 10, 50, 51]]
    assert merged["scores"].tolist() == pytest.approx([0.9])


def test_nms_is_per_class_and_leaves_separate_objects():
    a = dets([[10, 10, 50, 50], [100, 100, 140, 140]], [0.8, 0.6], [1, 1])
    b = dets([[10, 10, 50, 50], [12, 12, 52, 52]], [0.5, 0.4], [2, 1])  # class 2 on the same box: kept
    merged = merge_detections([a, b], nms_thresh=0.5, detections_per_img=100)
    assert merged["labels"].tolist() == [1, 1, 2]
    assert merged["scores"].tolist() == pytest.approx([0.8, 0.6, 0.5])


def test_merge_sorts_by_score_and_keeps_top_k():
    boxes = [[i * 20, 0, i * 20 + 10, 10] for i in range(6)]  # disjoint: nothing suppressed
    scores = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2]
    merged = merge_detections([dets(boxes[:3], scores[:3], [1] * 3), dets(boxes[3:], scores[3:], [1] * 3)], 0.5, 4)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7, 0.5, 0.3])
    assert merged["boxes"][0].tolist() == boxes[1]


def test_merge_of_no_detections_is_empty():
    merged = merge_detections([dets([], [], []), dets([], [], [])], 0.5, 100)
    assert merged["boxes"].shape == (0, 4) and len(merged["scores"]) == 0


def test_unflip_undoes_the_image_flip_exactly():
    image = torch.zeros(1, 8, 20)
    image[:, 2:6, 3:7] = 1.0  # object covers pixels x 3..6, i.e. box x1=3, x2=7 (pixel edges)
    flipped = image.flip(-1)
    cols = flipped[0].amax(0).nonzero().flatten()
    box_in_flipped = torch.tensor([[cols.min().item(), 2.0, cols.max().item() + 1.0, 6.0]])
    assert unflip_boxes(box_in_flipped, 20).tolist() == [[3.0, 2.0, 7.0, 6.0]]
    boxes = torch.tensor([[0.5, 1.0, 7.25, 3.0], [3.0, 0.0, 20.0, 8.0]])
    assert torch.equal(unflip_boxes(unflip_boxes(boxes, 20), 20), boxes)


@pytest.fixture(scope="module")
def model_and_image(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tta_model")
    cfg = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, out, **{"model.box_score_thresh": 0.0}))
    torch.manual_seed(0)
    model = build_detector(cfg, num_classes=4).eval()
    torch.manual_seed(1)
    return model, torch.rand(3, 70, 90)


def test_single_pass_tta_equals_the_plain_model(model_and_image):
    """One size, no flip: the merge keeps everything and the masks recomputed on the same boxes are the same."""
    model, image = model_and_image
    with torch.no_grad():
        plain = model([image])[0]
    assert len(plain["boxes"]) > 0
    tta = predict_tta(model, image, sizes=[64], max_size=96, flip=False)
    torch.testing.assert_close(tta["boxes"], plain["boxes"])
    torch.testing.assert_close(tta["scores"], plain["scores"])
    assert torch.equal(tta["labels"], plain["labels"])
    torch.testing.assert_close(tta["masks"], plain["masks"], atol=1e-5, rtol=0)


def test_multi_scale_flip_tta_outputs_original_coordinates_and_restores_the_model(model_and_image):
    model, image = model_and_image
    sizes_before = model.transform.min_size, model.transform.max_size
    predict = build_tta_predictor(model, [48, 64, 80], 120, flip=True)
    out = predict(image)
    n = len(out["boxes"])
    assert 0 < n <= model.roi_heads.detections_per_img
    assert out["masks"].shape == (n, 1, 70, 90)
    assert (out["boxes"][:, [0, 2]] <= 90).all() and (out["boxes"][:, [1, 3]] <= 70).all()
    assert torch.all(out["scores"][:-1] >= out["scores"][1:])
    assert (model.transform.min_size, model.transform.max_size) == sizes_before
    assert model.roi_heads.has_mask()


def test_test_size_is_restored_after_an_error(model_and_image):
    model, _ = model_and_image
    before = model.transform.min_size, model.transform.max_size
    with pytest.raises(RuntimeError), resized_for_test(model, 32, 40):
        assert model.transform.min_size == (32,)
        raise RuntimeError("boom")
    assert (model.transform.min_size, model.transform.max_size) == before


def test_keypoint_models_are_refused_rather_than_losing_keypoints():
    model = SimpleNamespace(roi_heads=SimpleNamespace(has_keypoint=lambda: True))
    with pytest.raises(ConfigError, match="keypoint"):
        build_tta_predictor(model, [64], 96, flip=True)


def test_bad_tta_sizes_are_a_config_error(shapes_dir, tmp_path):
    with pytest.raises(ConfigError, match="eval.tta_sizes"):
        load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path, **{"eval.tta_sizes": "[0, 64]"}))


def test_eval_run_with_and_without_tta(shapes_dir, tmp_path):
    overrides = tiny_overrides(shapes_dir, tmp_path / "run", **{"train.max_iters": 3, "model.box_score_thresh": 0.0})
    trainer.train(load_config(MINI_CONFIG, overrides))
    plain = evaluate_run(tmp_path / "run", ["eval.max_images=2"])
    tta = evaluate_run(tmp_path / "run", ["eval.max_images=2", "tta=true", "eval.tta_sizes=[48,64]"])
    assert plain["tta"] is False and "tta_sizes" not in plain
    saved = json.loads(Path(tta["path"]).read_text())
    assert plain["path"].endswith("iter_0000003_max_images-2.json")  # not the training record (max_images 4)
    assert tta["path"].endswith("iter_0000003_tta_max_images-2.json")
    assert saved["tta"] is True and saved["tta_sizes"] == [48, 64] and saved["tta_flip"] is True
    for report in (plain, saved):
        assert report["status"] == "ok"
        assert report["bbox"]["AP"] is not None and report["segm"]["AP"] is not None
