"""configs/paper/ must carry the paper's hyper-parameters exactly (docs/PAPER.md, "The system"); configs/mini/ must
follow the same schedule rule at a smaller unit."""

import re
from pathlib import Path

import pytest
from helpers import MINI_CONFIG, ROOT, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.schedule import schedule_from_config
from scratchdet.errors import ConfigError

PAPER_CONFIGS = sorted((ROOT / "configs" / "paper").glob("mask_rcnn_R*_FPN_GN_*x.yaml"))


def test_every_main_setting_has_a_config():
    names = {p.stem for p in PAPER_CONFIGS}
    for depth in (50, 101):
        for init in ("scratch", "pretrained"):
            for n in range(2, 7):
                assert f"mask_rcnn_R{depth}_FPN_GN_{init}_{n}x" in names


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_config_has_the_paper_hyper_parameters(path: Path):
    cfg = load_config(path, ["output=unused"])
    depth, init, n = re.match(r"mask_rcnn_R(\d+)_FPN_GN_(\w+)_(\d)x", path.stem).groups()
    assert cfg.model.depth == int(depth) and cfg.init == init and cfg.schedule.multiplier == int(n)
    assert (cfg.model.norm, cfg.model.gn_groups, cfg.model.freeze_at) == ("GN", 32, 0)
    assert (cfg.model.box_head_convs, cfg.model.box_head_fc, cfg.model.mask_head_convs) == (4, 1024, 4)
    assert (cfg.train.batch_size, cfg.solver.base_lr, cfg.solver.momentum) == (16, 0.02, 0.9)
    assert (cfg.solver.weight_decay, cfg.solver.weight_decay_norm) == (1e-4, 0.0)
    assert (cfg.solver.warmup_iters, cfg.solver.warmup_factor) == (500, pytest.approx(1 / 3))
    assert (cfg.data.min_size_train, cfg.data.max_size_train, cfg.data.min_size_test) == ([800], 1333, 800)
    schedule = schedule_from_config(cfg)
    assert schedule.max_iters == int(n) * 90_000
    assert schedule.milestones == (int(n) * 90_000 - 60_000, int(n) * 90_000 - 20_000)
    if init == "pretrained":
        assert cfg.weights


def test_mini_schedule_follows_the_same_rule():
    cfg = load_config(MINI_CONFIG, ["output=unused"])
    s = schedule_from_config(cfg)
    ratio = cfg.solver.reference_batch / cfg.train.batch_size
    assert cfg.schedule.unit_iters * 1000 == 90_000 and cfg.schedule.drop_tails == [60, 20]
    assert s.max_iters == round(cfg.schedule.multiplier * 90 * ratio)
    assert s.milestones == (s.max_iters - round(60 * ratio), s.max_iters - round(20 * ratio))


@pytest.mark.e2e
def test_full_size_r50_fpn_gn_trains_two_iterations_and_evaluates(shapes_dir, tmp_path):
    # The real paper model (R50-FPN, GN, 4conv1fc, 256-channel FPN) at reduced image size and batch.
    paths = {
        f"data.{split}.{key}": shapes_dir / (f"instances_{split}.json" if key == "json" else split)
        for split in ("train", "val")
        for key in ("json", "images")
    }
    overrides = tiny_overrides(shapes_dir, tmp_path / "r50", **paths, **{"train.max_iters": 2, "eval.max_images": 2})
    cfg = load_config(ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml", overrides)
    assert cfg.model.depth == 50 and cfg.model.fpn_channels == 256
    trainer.train(cfg)
    assert [r["iter"] for r in read_metrics(tmp_path / "r50", "train")] == [1, 2]
    assert read_metrics(tmp_path / "r50", "eval")[0]["images"] == 2


def test_overrides_and_errors_name_the_key():
    cfg = load_config(MINI_CONFIG, ["output=x", "model.norm=none", "schedule.multiplier=3", "data.root=/d"])
    assert cfg.model.norm == "none" and cfg.schedule.multiplier == 3
    assert cfg.data.train.json == "/d/instances_train.json" and cfg.data.val.images == "/d/val"
    with pytest.raises(ConfigError, match="model.norm='LN' is not valid; choose one of GN, SyncBN"):
        load_config(MINI_CONFIG, ["output=x", "model.norm=LN"])
    with pytest.raises(ConfigError, match="model.nrom"):
        load_config(MINI_CONFIG, ["output=x", "model.nrom=GN"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(MINI_CONFIG, ["output=x", "model.norm"])
    with pytest.raises(ConfigError, match="init=pretrained needs weights"):
        load_config(MINI_CONFIG, ["output=x", "init=pretrained"])


# --- A command-line setting wins over the file, also where it implies other keys ------------------------------------

PAPER_R50 = ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_scratch_6x.yaml"  # sets the four data.train/val paths


def test_override_keys_are_the_leaves_the_command_line_sets():
    from scratchdet.config import override_keys

    keys = override_keys(["data.root=/d", "data.val={json: v.json, images: v}", "data.min_size_train=[1,2]"])
    assert keys == {"data.root", "data.val.json", "data.val.images", "data.min_size_train"}
    assert override_keys(None) == set()


def test_command_line_data_root_replaces_the_files_dataset_paths():
    # README: `scratchdet train CONFIG data.root=DIR` reads DIR/instances_{train,val}.json and DIR/{train,val}/.
    with pytest.warns(
        UserWarning,
        match=r"data.root=/d is given on the command line and wins: data.train.json="
        r"datasets/coco/annotations/instances_train2017.json \(in the file\) is "
        r"replaced by /d/instances_train.json; .*\(file .*_6x.yaml\)$",
    ) as caught:
        cfg = load_config(PAPER_R50, ["output=x", "data.root=/d"])
    assert (cfg.data.train.json, cfg.data.train.images) == ("/d/instances_train.json", "/d/train")
    assert (cfg.data.val.json, cfg.data.val.images) == ("/d/instances_val.json", "/d/val")
    assert len(caught) == 1  # one line for all four paths
    for old in ("train2017.json", "datasets/coco/train2017", "val2017.json", "datasets/coco/val2017"):
        assert old in str(caught[0].message)
    # A path given on the command line beside data.root still wins over data.root; only the others are replaced.
    with pytest.warns(UserWarning, match="data.root=/d") as caught:
        cfg = load_config(PAPER_R50, ["output=x", "data.root=/d", "data.val.json=/elsewhere/v.json"])
    assert (cfg.data.val.json, cfg.data.val.images, cfg.data.train.json) == (
        "/elsewhere/v.json",
        "/d/val",
        "/d/instances_train.json",
    )
    assert "data.val.json" not in str(caught[0].message)


def test_data_root_and_paths_from_the_same_file_keep_the_explicit_path(tmp_path, recwarn):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  root: /r\n  train:\n    json: /t/train.json\n")
    cfg = load_config(config, ["output=x"])
    assert (cfg.data.train.json, cfg.data.train.images, cfg.data.val.json) == (
        "/t/train.json",
        "/r/train",
        "/r/instances_val.json",
    )
    assert not [w for w in recwarn if "wins" in str(w.message)]


def test_eval_override_of_data_root_replaces_the_saved_runs_paths(tmp_path):
    # `scratchdet eval RUN data.root=DIR` loads RUN/config.yaml, which holds the paths resolved at training time.
    from scratchdet.config import config_to_yaml

    saved = tmp_path / "config.yaml"
    saved.write_text(config_to_yaml(load_config(MINI_CONFIG, ["output=run", "data.root=/old"])))
    with pytest.warns(
        UserWarning,
        match=r"data.val.json=/old/instances_val.json \(in the file\) is replaced by "
        rf"/new/instances_val.json.*\(file {saved}\)",
    ):
        cfg = load_config(saved, ["data.root=/new"])
    assert (cfg.data.val.json, cfg.data.val.images) == ("/new/instances_val.json", "/new/val")


def test_command_line_wins_for_voc_root_weights_and_cascade_switch():
    voc = ROOT / "configs/mini/faster_rcnn_R18_FPN_GN_voc_scratch.yaml"  # voc_root: data/shapes
    with pytest.warns(UserWarning, match=r"data.voc_root=data/shapes \(in the file\) is replaced by /voc"):
        assert load_config(voc, ["output=x", "data.root=/voc"]).data.voc_root == "/voc"
    pretrained = ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_pretrained_2x.yaml"  # weights: weights/R-50-GN.pkl
    with pytest.warns(UserWarning, match=r"init=scratch .* weights=weights/R-50-GN.pkl \(in the file\) is replaced"):
        cfg = load_config(pretrained, ["output=x", "init=scratch"])
    assert (cfg.init, cfg.weights) == ("scratch", None)
    with pytest.raises(ConfigError, match="drop one of them"):  # both on the command line: still refused
        load_config(pretrained, ["output=x", "init=scratch", "weights=w.pth"])
    cascade = ROOT / "configs/paper/cascade_mask_rcnn_R50_FPN_GN_scratch_9x_trainaug.yaml"  # switch at 270000
    with pytest.warns(UserWarning, match=r"model.cascade_switch_iters=270000 \(in the file\) is replaced by None"):
        cfg = load_config(cascade, ["output=x", "model.cascade=false"])
    assert cfg.model.cascade is False and cfg.model.cascade_switch_iters is None


# --- Detections kept beyond what COCO AP scores are said once, at config load ----------------------------------------


def test_coco_max_dets_are_pycocotools_params():
    from pycocotools.cocoeval import Params

    from scratchdet.config import COCO_KEYPOINT_MAX_DETS, COCO_MAX_DETS

    assert Params(iouType="bbox").maxDets[-1] == Params(iouType="segm").maxDets[-1] == COCO_MAX_DETS == 100
    assert Params(iouType="keypoints").maxDets == [COCO_KEYPOINT_MAX_DETS] == [20]


def test_more_detections_than_coco_scores_warn_once_naming_key_value_and_limit(recwarn):
    with pytest.warns(
        UserWarning,
        match=r"model.box_detections_per_img=250 keeps more detections .* \("
        r"params.maxDets=\[1, 10, 100\]\) scores only the best 100 by score, so up to "
        r"150 per image are never scored",
    ) as caught:
        load_config(MINI_CONFIG, ["output=x", "model.box_detections_per_img=250"])
    assert len([w for w in caught if "box_detections_per_img" in str(w.message)]) == 1
    recwarn.clear()
    load_config(MINI_CONFIG, ["output=x", "model.box_detections_per_img=100"])
    load_config(
        ROOT / "configs/mini/faster_rcnn_R18_FPN_GN_voc_scratch.yaml",  # VOC mAP ranks every detection
        ["output=x", "model.box_detections_per_img=300"],
    )
    load_config(ROOT / "configs/mini/keypoint_rcnn_R18_FPN_GN_scratch.yaml", ["output=x"])  # 100: box AP scores all
    assert not [w for w in recwarn if "box_detections_per_img" in str(w.message)]
    with pytest.warns(UserWarning, match="keypoint AP the best 20"):
        load_config(
            ROOT / "configs/mini/keypoint_rcnn_R18_FPN_GN_scratch.yaml",
            ["output=x", "model.box_detections_per_img=101"],
        )
    with pytest.raises(ConfigError, match="model.box_detections_per_img=0 must be positive"):
        load_config(MINI_CONFIG, ["output=x", "model.box_detections_per_img=0"])


# --- data.keypoint_flip_map is validated where it is set ----------------------------------------------------------


def test_keypoint_flip_map_config_is_validated():
    kp = ROOT / "configs/mini/keypoint_rcnn_R18_FPN_GN_scratch.yaml"
    cfg = load_config(kp, ["output=x", "data.keypoint_flip_map=[[LEye,REye],[tail,tail]]"])
    assert cfg.data.keypoint_flip_map == [["LEye", "REye"], ["tail", "tail"]]
    with pytest.raises(ConfigError, match=r"must be two keypoint names"):
        load_config(kp, ["output=x", "data.keypoint_flip_map=[[LEye,REye,Nose]]"])
    with pytest.raises(ConfigError, match=r"names 'LEye' more than once"):
        load_config(kp, ["output=x", "data.keypoint_flip_map=[[LEye,REye],[LEye,LEar]]"])
    with pytest.raises(ConfigError, match=r"model.arch='mask_rcnn' trains no keypoints"):
        load_config(MINI_CONFIG, ["output=x", "data.keypoint_flip_map=[[a,b]]"])
