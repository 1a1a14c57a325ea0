import json

import pytest
import torch
import yaml
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import config_to_yaml, load_config
from scratchdet.data.build import build_train_dataset
from scratchdet.data.samplers import TrainingSampler
from scratchdet.data.transforms import resized_shape
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.errors import CheckpointError
from scratchdet.modeling.detector import build_detector
from scratchdet.weights.initialization import IMAGENET_RECIPE_SEEN, initialize


def test_scratch_loads_nothing_and_says_so(tiny_config):
    model = build_detector(tiny_config, num_classes=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = initialize(model, tiny_config)
    assert record["init"] == "scratch" and record["weights"] is None and record["loaded_keys"] == 0
    assert record["pretrain_seen"] == {"images": 0, "instances": 0, "pixels": 0}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fine_tuning_from_a_run_loads_the_backbone_and_carries_its_counts(shapes_dir, tmp_path):
    source = load_config(MINI_CONFIG, tiny_overrides(shapes_dir, tmp_path / "source", **{"train.max_iters": 2}))
    trainer.train(source)
    weights = latest_checkpoint(tmp_path / "source" / "checkpoints")
    source_state = load_checkpoint(weights)

    overrides = tiny_overrides(
        shapes_dir, tmp_path / "ft", init="pretrained", weights=weights, **{"train.max_iters": 1}
    )
    trainer.train(load_config(MINI_CONFIG, overrides))
    record = json.loads((tmp_path / "ft" / "init.json").read_text())
    assert record["init"] == "pretrained" and record["report"]["coverage"] == 1.0
    assert record["pretrain_seen"] == source_state["seen"]
    final = load_checkpoint(latest_checkpoint(tmp_path / "ft" / "checkpoints"))
    assert final["pretrain_seen"] == source_state["seen"]
    # Only the backbone came from the source run; everything else started from the fresh MSRA init.
    matched = record["report"]["matched"]
    assert matched and all(k.startswith(("conv1", "bn1", "layer")) for k in matched)


def test_published_weights_count_as_the_imagenet_recipe(tiny_config, tmp_path):
    body = build_detector(tiny_config, num_classes=6).backbone.body
    path = tmp_path / "resnet18_narrow_gn.pth"
    torch.save({k: v.clone() for k, v in body.state_dict().items()}, path)
    cfg = load_config(MINI_CONFIG, [f"output={tmp_path}/x", "init=pretrained", f"weights={path}"])
    model = build_detector(cfg, num_classes=6)
    record = initialize(model, cfg)
    assert record["pretrain_seen"] == IMAGENET_RECIPE_SEEN and "estimate" in record["pretrain_seen"]
    for key, value in torch.load(path, weights_only=True).items():
        assert torch.equal(model.backbone.body.state_dict()[key], value)


def test_wrong_file_is_refused_before_training(tiny_config, tmp_path):
    path = tmp_path / "renamed.pth"
    body = build_detector(tiny_config, num_classes=6).backbone.body
    torch.save({k.replace("layer", "stage"): v for k, v in body.state_dict().items()}, path)
    cfg = load_config(MINI_CONFIG, [f"output={tmp_path}/x", "init=pretrained", f"weights={path}"])
    with pytest.raises(CheckpointError, match="first missing keys: layer1"):
        initialize(build_detector(cfg, num_classes=6), cfg)


def test_samples_seen_equal_the_hand_computed_sum(tiny_config):
    trainer.train(tiny_config)  # 2 iterations x 2 images, short side 64, long side at most 96
    state = load_checkpoint(latest_checkpoint(f"{tiny_config.output}/checkpoints"))
    dataset = build_train_dataset(tiny_config)
    stream = iter(TrainingSampler(len(dataset), tiny_config.seed))
    expected = {"images": 0, "instances": 0, "pixels": 0}
    for _ in range(2 * 2):
        index, _ = next(stream)
        image_id = dataset.image_ids[index]
        info = dataset.coco.imgs[image_id]
        h, w = resized_shape(info["height"], info["width"], 64, 96)
        expected["images"] += 1
        expected["pixels"] += h * w
        expected["instances"] += sum(1 for a in dataset.coco.imgToAnns[image_id] if not a.get("iscrowd", 0))
    assert state["seen"] == expected


def test_resume_keeps_the_saved_convention_and_accepts_folders_saved_before_the_keys(tmp_path):
    from scratchdet.config import config_to_dict
    from scratchdet.engine.run_dir import config_diff
    from scratchdet.weights.convention import CONVENTION_KEYS
    from scratchdet.weights.initialization import resolve_input_convention

    out = tmp_path / "run"
    out.mkdir()
    bgr = [
        "model.input_format=BGR",
        "model.pixel_scale=255.0",
        "model.pixel_mean=[1.0,2.0,3.0]",
        "model.pixel_std=[1.0,1.0,1.0]",
    ]
    saved = load_config(MINI_CONFIG, [f"output={out}", *bgr])
    (out / "config.yaml").write_text(config_to_yaml(saved))
    resumed = load_config(MINI_CONFIG, [f"output={out}", "resume=true"])
    record = resolve_input_convention(resumed)  # what ran, without reading any weight file again
    assert resumed.model.input_format == "BGR" and record["source"]["pixel_mean"] == "the resumed run's config.yaml"
    # A folder written before these keys existed ran torchvision's convention; resuming it is no config change.
    legacy = config_to_dict(load_config(MINI_CONFIG, [f"output={out}"]))
    for key in CONVENTION_KEYS:
        del legacy["model"][key]
    (out / "config.yaml").write_text(yaml.safe_dump(legacy))
    again = load_config(MINI_CONFIG, [f"output={out}", "resume=true"])
    resolve_input_convention(again)
    assert again.model.pixel_mean == [0.485, 0.456, 0.406] and again.model.stride_in_1x1 is False
    assert config_diff(legacy, config_to_dict(again)) == []
    assert config_diff(legacy, config_to_dict(resumed)) != []  # but another convention is a change
