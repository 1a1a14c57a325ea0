"""Sharded evaluation: 3 gloo processes over 7 images give the single-process report exactly."""

from __future__ import annotations

import json

import pytest
import torch
from dist_workers import run_in_processes, sharded_eval_worker
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.data.build import build_val_dataset
from scratchdet.distributed import DistContext
from scratchdet.evaluation.coco import evaluate
from scratchdet.evaluation.sharding import shard
from scratchdet.modeling.detector import build_detector

# Several processes (gloo, torchrun): `make test-fast` leaves them out.
pytestmark = pytest.mark.e2e

TIMINGS = ("inference_s", "eval_s", "eval_processes")


def test_shards_cover_every_image_exactly_once():
    for n, world in [(7, 3), (2, 4), (10, 2), (0, 3)]:
        indices = [i for r in range(world) for i in shard(n, DistContext(r, world, r))]
        assert sorted(indices) == list(range(n))


def test_three_processes_give_the_single_process_report(shapes_dir, tmp_path):
    overrides = tiny_overrides(shapes_dir, tmp_path / "run", **{"eval.max_images": 7})
    cfg = load_config(MINI_CONFIG, overrides)
    val = build_val_dataset(cfg)
    torch.manual_seed(0)
    model = build_detector(cfg, val.num_classes)  # random weights: detections everywhere, AP small but defined
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    single = evaluate(model, val, torch.device("cpu"), max_images=7)
    assert single["status"] == "ok" and single["images"] == 7 and single["detections"] > 0

    run_in_processes(
        sharded_eval_worker,
        3,
        str(tmp_path),
        str(MINI_CONFIG),
        overrides + ["eval.max_images=7"],
        str(tmp_path / "weights.pth"),
    )
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    expected = {k: v for k, v in single.items() if k not in TIMINGS}
    for report in reports:  # every rank returns rank 0's report
        assert report["eval_processes"] == 3
        assert {k: v for k, v in report.items() if k not in TIMINGS} == expected
