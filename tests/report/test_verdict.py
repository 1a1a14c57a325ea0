"""The report's verdict and example images from a real two-arm study: the final evaluations keep their
detections, and the report bootstraps the arms' difference over the validation images from them."""

from __future__ import annotations

import html

import pytest
import yaml
from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.report import verdict
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study
from scratchdet.study import runner

# A whole study trained and reported: `make test-fast` leaves it out.
pytestmark = pytest.mark.e2e


def test_verdict_bootstraps_kept_detections_and_the_report_shows_examples(shapes_dir, tmp_path):
    # Detections from a model trained for a few iterations: keep every box, whatever its score.
    common = {"model.box_score_thresh": 0.0, "eval.max_images": 4, "solver.warmup_iters": 1}
    source = tmp_path / "source"  # the "pre-trained" arm's weights: a short detection run's backbone
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, source, **common, **{"train.max_iters": 2})))
    overrides = [o for o in tiny_overrides(shapes_dir, tmp_path / "unused", **common) if not o.startswith("output=")]
    overrides += ["solver.reference_batch=2", "schedule.unit_iters=4", "schedule.drop_tails=[2,1]", "eval.period=0"]
    spec = {
        "name": "two-arms",
        "base_config": str(MINI_CONFIG),
        "output": str(tmp_path / "study"),
        "overrides": overrides,
        "schedules": [1],
        "arms": [{"name": "scratch"}, {"name": "pretrained", "init": "pretrained", "weights": str(source)}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = runner.run_study(tmp_path / "spec.yaml", report=False)

    (compared,) = verdict.comparisons(load_study(study_dir))
    assert compared.ci95 is None and not compared.noise_estimated  # bootstrapped only for a sentence that says it
    verdict.estimate_noise(compared)
    assert compared.schedule == 1 and compared.images == 4 and compared.ci95 is not None
    low, high = compared.ci95
    assert low <= compared.delta <= high or compared.delta == 0.0
    sentences = verdict.verdict([compared])
    assert "95% interval" in sentences[0] and "over 4 validation images" in sentences[0]
    assert sentences[-1].startswith("Both arms stay below 10 bbox AP")

    rows = verdict.example_rows(compared)
    assert len(rows) == 3 and list(rows[0]["panels"]) == ["ground truth", "scratch 1x", "pre-trained 1x"]
    assert rows[0]["image"].ndim == 3 and rows[0]["panels"]["ground truth"]  # the synthetic scenes have objects
    assert all(d["score"] >= 0.5 for row in rows for d in row["panels"]["scratch 1x"])

    page = html.unescape(write_report(study_dir).read_text())
    assert "95% interval" in page and "examples" in page and "fig1_arms" in page
