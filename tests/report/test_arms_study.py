"""A whole three-arm study trained and reported: scratch and two pre-trained arms whose weights come from two
different `scratchdet pretrain` runs (one named by its run folder, one by its final weight file)."""

from __future__ import annotations

import html
import json

import pytest
import yaml
from helpers import MINI_CONFIG, ROOT, tiny_study_overrides

from scratchdet.errors import ScratchdetError
from scratchdet.pretrain import classify
from scratchdet.pretrain.config import load_pretrain_config
from scratchdet.report import figures, verdict
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study, study_arms
from scratchdet.study import runner

# Two pre-training runs and a study trained: `make test-fast` leaves it out.
pytestmark = pytest.mark.e2e

MINI_PRETRAIN = ROOT / "configs" / "pretrain" / "mini_R18_GN_synth.yaml"


def pretrain(out, seed: int) -> None:
    """Two iterations of the mini pre-training (the mini detector's backbone) on a few generated textures."""
    overrides = {
        "output": out,
        "seed": seed,
        "data.synthetic_seed": seed,
        "data.synthetic_train_images": 16,
        "data.synthetic_val_images": 8,
        "data.synthetic_size": 48,
        "data.crop_size": 32,
        "data.synthetic_classes": 3,
        "data.num_workers": 0,
        "solver.batch_size": 4,
        "train.epochs": "null",
        "train.iters": 2,
        "train.checkpoint_period": 2,
        "eval.batch_size": 8,
    }
    classify.pretrain(load_pretrain_config(MINI_PRETRAIN, [f"{k}={v}" for k, v in overrides.items()]))


def test_three_arm_study_reports_every_arm(shapes_dir, tmp_path):
    pretrain(tmp_path / "pre_a", seed=0)
    pretrain(tmp_path / "pre_b", seed=1)
    # Every detection kept, whatever its score, on 4 validation images: the bootstrap has something to resample;
    # an evaluation every 2 iterations draws each arm's curve in Fig. 1.
    overrides = [*tiny_study_overrides(shapes_dir, **{"model.box_score_thresh": 0.0}), "eval.max_images=4"]
    overrides.append("eval.period=2")
    spec = {
        "name": "three-arms",
        "base_config": str(MINI_CONFIG),
        "output": str(tmp_path / "study"),
        "overrides": overrides,
        "schedules": [1],
        "arms": [
            {"name": "scratch"},
            {"name": "synth_a", "init": "pretrained", "weights": str(tmp_path / "pre_a")},
            {"name": "synth_b", "init": "pretrained", "weights": str(tmp_path / "pre_b" / "classifier_final.pth")},
        ],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = runner.run_study(tmp_path / "spec.yaml")  # trains the three runs and writes the report

    study = load_study(study_dir)
    assert [a.name for a in study_arms(study.runs)] == ["scratch", "synth_a", "synth_b"]
    loaded = {r.arm: r.init_record["weights"] for r in study.runs}
    assert loaded["scratch"] is None and loaded["synth_b"] == str(tmp_path / "pre_b" / "classifier_final.pth")
    assert loaded["synth_a"].startswith(str(tmp_path / "pre_a") + "/")
    found = verdict.comparisons(study)
    assert [(c.scratch.arm, c.pretrained.arm) for c in found] == [("scratch", "synth_a"), ("scratch", "synth_b")]

    page = html.unescape((study_dir / "report" / "report.html").read_text())
    start = page.index("<p class='verdict'>")
    text = page[start : page.index("</p>", start)]
    assert "synth_a leads scratch" in text or "scratch leads synth_a" in text or "synth_a and scratch tie" in text
    assert "synth_b leads scratch" in text or "scratch leads synth_b" in text or "synth_b and scratch tie" in text
    assert "Among the pre-trained arms, " in text and "over 4 validation images" in text
    (ax,) = figures.arms_curves_figure(study.runs, "t").axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scratch 1x", "synth_a 1x", "synth_b 1x"]
    assert len({line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}) == 3

    # The run of synth_b was trained from synth_a's weights: the report refuses, naming it.
    init = study_dir / "runs" / "synth_b_all_1x" / "init.json"
    record = json.loads(init.read_text())
    init.write_text(json.dumps({**record, "weights": loaded["synth_a"]}))
    with pytest.raises(ScratchdetError, match=f"run synth_b_all_1x: {init} says init=pretrained"):
        write_report(study_dir)
