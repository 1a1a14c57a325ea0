"""A real seeded study over the mini config (two arms, seeds 0, 1, 2, schedules 1x and 2x): the report shows each
seed and the means, and the verdict's interval covers the seeds and the 8 validation images, wider than the
image-only one by about what the seed spread says."""

from __future__ import annotations

import csv
import dataclasses
import html
import importlib.util
import json

import pytest
import yaml
from helpers import MINI_CONFIG, ROOT, tiny_overrides, tiny_study_overrides

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.report import verdict
from scratchdet.report.decision import settled
from scratchdet.report.results import SEED_SPREAD_FILE, SeedSpread, load_study, pooled_seed_sd, seed_spread
from scratchdet.study import runner

_script = importlib.util.spec_from_file_location("seed_spread_script", ROOT / "scripts" / "seed_spread.py")
seed_spread_script = importlib.util.module_from_spec(_script)
_script.loader.exec_module(seed_spread_script)

# Twelve runs trained and reported: `make test-fast` leaves it out.
pytestmark = pytest.mark.e2e


def test_a_seeded_mini_study_reports_its_seeds_and_an_interval_over_seeds_and_images(shapes_dir, tmp_path):
    common = {"model.box_score_thresh": 0.0, "eval.max_images": 8}  # every box kept, on all 8 validation images
    source = tmp_path / "source"  # the pre-trained arm's weights: a short detection run's backbone
    trainer.train(load_config(MINI_CONFIG, tiny_overrides(shapes_dir, source, **common, **{"train.max_iters": 2})))
    spec = {
        "name": "seeded",
        "base_config": str(MINI_CONFIG),
        "output": str(tmp_path / "study"),
        "overrides": [*tiny_study_overrides(shapes_dir, **{"model.box_score_thresh": 0.0}), "eval.max_images=8"],
        "schedules": [1, 2],
        "seeds": [0, 1, 2],
        "arms": [{"name": "scratch"}, {"name": "pretrained", "init": "pretrained", "weights": str(source)}],
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    study_dir = runner.run_study(tmp_path / "spec.yaml")  # trains the twelve runs and writes the report

    study = load_study(study_dir)
    assert len(study.runs) == 12 and sorted({r.seed for r in study.runs}) == [0, 1, 2] and study.margin == 0.5
    with (study_dir / "report" / "tables" / "final_ap.csv").open() as f:
        seeds = [row["seed"] for row in csv.DictReader(f)]
    assert seeds.count("mean") == 4 and sorted(s for s in seeds if s != "mean") == ["0"] * 4 + ["1"] * 4 + ["2"] * 4

    c = verdict.estimate_noise(verdict.comparisons(study)[-1])
    iv = c.interval
    assert c.schedule == 2 and iv.seeds == (3, 3) and iv.images == 8 and iv.training_measured
    seed_part = sum(sd**2 / n for sd, n in zip(iv.seed_sd, iv.seeds, strict=True))
    print(f"2x: gap {iv.delta:+.2f}, SE {iv.se:.3f}, image SE {iv.image_se:.3f}, seed SDs {iv.seed_sd}")
    # The two levels' variances add (evaluation/bootstrap.py `two_level_gap`), up to the replicates' own noise.
    assert 0.75 * (iv.image_se**2 + seed_part) <= iv.se**2 <= 1.35 * (iv.image_se**2 + seed_part)
    assert iv.ci95[1] - iv.ci95[0] >= iv.image_ci95[1] - iv.image_ci95[0]

    page = html.unescape((study_dir / "report" / "report.html").read_text())
    start = page.index("<p class='verdict'>")
    text = page[start : page.index("</p>", start)]
    assert "means over seeds" in text and "over 3 seeds per arm and 8 validation images" in text
    assert "against the ±0.5 AP margin: " in text
    assert "PREDICTION (not a measurement; AP(N) = a - b/N fitted to 1x, 2x" in page
    # The decision at 2x reads the same folder and the same interval: rule (a) holds exactly when its upper end does.
    decision = settled(study, 2.0)
    assert (decision.kind == "caught_up") == (iv.ci95[1] <= study.margin)

    # The spread it measured, as the record a one-seed study reads (scripts/seed_spread.py): the pooled SD over its
    # four cells, read back by `seed_spread` from a study folder that has no seeds of its own.
    record = tmp_path / "one_seed" / SEED_SPREAD_FILE
    record.parent.mkdir()
    assert seed_spread_script.main([str(study_dir), "--out", str(record), "--source", "the seeded test study"]) == 0
    written = json.loads(record.read_text())
    pooled, cells = pooled_seed_sd(study.runs)
    assert cells == 4 and len(written["cells"]) == 4 and abs(written["sd"] - pooled) < 1e-4
    assert all(len(c["bbox_ap"]) == 3 for c in written["cells"])
    quoted = seed_spread(dataclasses.replace(study, root=record.parent, runs=[]))
    assert quoted == SeedSpread(written["sd"], "the seeded test study")
