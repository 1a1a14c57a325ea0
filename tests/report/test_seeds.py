"""Seed replicates in the report, the catch-up prediction and the sequential study's decision, on hand-made study
folders (plan.json with `seeds`, `verdict.margin`; metrics.jsonl and init.json per run; for the image level, the kept
detections of each run on the synthetic shapes validation set and the config.yaml that names it)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import MINI_CONFIG, ROOT, moved_detections, tiny_overrides

from scratchdet.config import config_to_yaml, load_config
from scratchdet.evaluation.coco import coco_metrics, write_results
from scratchdet.report import catchup, figures, findings, results, verdict
from scratchdet.report.decision import settled
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study
from scratchdet.run_folder import RunFolder

UNIT = 40  # iterations of 1x


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def run_records(final: float, max_iters: int, finished: bool = True, images: int = 50) -> list[dict]:
    records = [{"type": "start", "iter": 0, "train_images": 200, "world_size": 1}]
    last = max_iters if finished else max_iters - 20
    for i in range(10, last + 1, 10):
        seen = {"images": 2 * i, "instances": 4 * i, "pixels": 2 * i * 100}
        records.append({"type": "train", "iter": i, "lr": 0.02, "loss": 2 - i / max_iters, "seen": seen,
                        "time_per_iter": 0.5})  # fmt: skip
        if i % 20 == 0:
            ap = round(final * i / max_iters, 4)
            records.append({"type": "eval", "iter": i, "status": "ok", "images": images, "bbox": {"AP": ap}})
    return records + ([{"type": "end", "iter": max_iters}] if finished else [])


def make_study(root: Path, finals: dict, *, schedules=(1, 2), seeds=(0, 1, 2), margin=0.5, unfinished=(),
               detections=None) -> Path:  # fmt: skip
    """finals: {(arm, schedule, seed): final bbox AP}, runs of the other schedules planned but not started;
    `seeds=None`: no seed axis. `detections`:
    {(arm, schedule, seed): (validation set, COCO results)} keeps those runs' detections (their AP is COCOeval's)."""
    runs = []
    for arm in ("scratch", "pretrained"):
        for seed in seeds if seeds is not None else [None]:
            for n in schedules:
                key = (arm, n, seed)
                planned_only = key not in finals and (detections is None or key not in detections)
                name = f"{arm}_all" + ("" if seed is None else f"_s{seed}") + f"_{n}x"
                entry = {"name": name, "arm": arm, "init": arm, "schedule": float(n), "train_size": None,
                         "train_size_label": "all", "hparams": "default", "hparams_overrides": [],
                         "path": f"runs/{name}", "trunk": None, "fork_iter": None, "max_iters": n * UNIT}  # fmt: skip
                if seed is not None:
                    entry["seed"] = seed
                runs.append(entry)
                if planned_only:  # in the plan, not started
                    continue
                run_dir = root / "runs" / name
                final = finals.get(key)
                images = 50
                if detections is not None and key in detections:
                    val, found = detections[key]
                    images = len(val.image_ids)
                    final = coco_metrics(val.coco, found, "bbox", val.image_ids)["AP"]
                    write_results(RunFolder(run_dir).detections(n * UNIT), found)
                    cfg = load_config(MINI_CONFIG, tiny_overrides(val.root_dir, run_dir))
                    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
                write_jsonl(run_dir / "metrics.jsonl", run_records(final, n * UNIT, key not in unfinished, images))
                (run_dir / "init.json").write_text(json.dumps({"init": arm, "weights": None}))
    plan = {"name": "seeded", "runs": runs, "trunks": [], "verdict": {"margin": margin}, "stopping": {"enabled": True},
            "seeds": list(seeds) if seeds is not None else None}  # fmt: skip
    (root / "plan.json").write_text(json.dumps(plan))
    return root


# scratch closes in on pre-trained from 1x to 2x; the seeds spread by 0.2 AP.
SPREAD = {0: -0.2, 1: 0.0, 2: 0.2}
FINALS = {
    **{("scratch", 1, s): 20.0 + d for s, d in SPREAD.items()},
    **{("scratch", 2, s): 30.0 + d for s, d in SPREAD.items()},
    **{("pretrained", 1, s): 33.0 + d for s, d in SPREAD.items()},
    **{("pretrained", 2, s): 34.0 + d for s, d in SPREAD.items()},
}


def test_a_seeded_report_shows_every_seed_and_compares_means(tmp_path):
    root = make_study(tmp_path / "s", FINALS, margin=0.7)
    study = load_study(root)
    assert sorted({r.seed for r in study.runs}) == [0, 1, 2] and study.margin == 0.7 and study.seeds == [0, 1, 2]
    page = html.unescape(write_report(root).read_text())
    with (root / "report" / "tables" / "final_ap.csv").open() as f:
        rows = [(r["run"], r["seed"], r["bbox AP"]) for r in csv.DictReader(f)]
    assert rows[:4] == [("scratch_all_s0_1x", "0", "19.8"), ("scratch_all_s1_1x", "1", "20"),
                        ("scratch_all_s2_1x", "2", "20.2"), ("scratch_all_1x", "mean", "20")]  # fmt: skip
    assert len(rows) == 12 + 4
    start = page.index("<p class='verdict'>")
    text = page[start : page.index("</p>", start)]
    assert "pre-trained leads scratch by 4.0 bbox AP (34.0 pre-trained vs 30.0 scratch, means over seeds)" in text
    # No detections kept: the interval covers the seeds alone, and says so.
    assert "beyond training noise (95% interval +" in text
    assert "over 3 seeds per arm; test-set noise not estimated: no per-image detections kept)" in text
    assert "against the ±0.7 AP margin: pre-trained leads by more than 0.7" in text
    assert "Every value compared below is a mean over seeds 0, 1, 2" in page
    assert "At 2x, pre-trained leads by 4.0 bbox AP (pre-trained 34.0 vs scratch 30.0)." in page
    assert "PREDICTION (not a measurement; AP(N) = a - b/N fitted to 1x, 2x" in page
    assert page.index("<p class='verdict'>") < page.index("PREDICTION") < page.index("<h2>Findings</h2>")

    (ax,) = figures.arms_curves_figure(study.runs, "t").axes
    thin = [line for line in ax.get_lines() if line.get_label() == "_seed"]
    thick = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(thin) == 12 and [line.get_label() for line in thick] == [
        "scratch 1x", "scratch 2x", "pre-trained 1x", "pre-trained 2x"]  # fmt: skip
    assert all(line.get_linewidth() > thin[0].get_linewidth() for line in thick)
    mean_2x = dict(zip(*thick[1].get_data(), strict=True))
    assert mean_2x[2 * UNIT] == pytest.approx(30.0)


def test_a_mean_is_usable_only_when_every_seed_is(tmp_path):
    root = make_study(tmp_path / "s", FINALS, unfinished={("scratch", 2, 1)})
    study = load_study(root)
    (mean,) = [m for m in results.seed_means(study.runs) if m.name == "scratch_all_2x"]
    assert isinstance(mean, results.MeanRun) and not mean.finished
    assert "scratch_all_s1_2x did not finish" in results.unusable_reason(mean)
    assert [(c.schedule, c.scratch.name) for c in verdict.comparisons(study)] == [(1.0, "scratch_all_1x")]
    found = findings.compute_findings(study.runs)
    assert any(s.startswith("At 2x, no comparison: scratch_all_s1_2x did not finish") for s in found)


def test_the_catch_up_model_recovers_its_parameters_and_solves_for_the_margin():
    schedules = np.array([1.0, 2.0, 4.0])
    a, b = catchup.fit(schedules, 40.0 - 12.0 / schedules)
    assert a[0] == pytest.approx(40.0) and b[0] == pytest.approx(12.0)
    # gap(N) = A - B/N = 1 + 4/N (scratch slower): within 0.5 never; A = 0.2: from N = 4 / 0.3.
    assert catchup.catch_up_schedule(np.array([1.0]), np.array([-4.0]), 0.5)[0] == np.inf
    assert catchup.catch_up_schedule(np.array([0.2]), np.array([-4.0]), 0.5)[0] == pytest.approx(4 / 0.3)
    assert catchup.catch_up_schedule(np.array([0.2]), np.array([1.0]), 0.5)[0] == 0.0


def test_the_prediction_is_labelled_and_bounded_by_the_extrapolation_horizon(tmp_path):
    study = load_study(make_study(tmp_path / "s", FINALS, schedules=(1, 2, 6)))
    (found,) = catchup.predict(study.runs, 0.5, target=6.0)
    # scratch 20 -> 30 (a = 40, b = 20), pre-trained 33 -> 34 (a = 35, b = 2): the gap -5 + 18/N reaches 0.5 ...
    assert found.at == pytest.approx(18 / 5.5) and found.horizon == 4.0
    assert found.gap_at_target == pytest.approx(-5 + 18 / 6)
    text = catchup.sentence(found)
    assert text.startswith("PREDICTION (not a measurement;")
    assert f"scratch comes within ±0.5 bbox AP of pre-trained at about {18 / 5.5:.1f}x" in text
    assert "gap at 6x (the longest planned schedule; further than 4x, twice the longest measured one) is -2.0" in text
    # Each arm's seeds are resampled on their own: the same seed offsets in both arms do not cancel.
    assert found.at_ci95[0] < found.at < found.at_ci95[1] and found.sources == "seeds resampled"


# ---------------------------------------------------------------------------------------------------- decision


def test_settled_when_scratch_is_within_the_margin_of_every_arm(tmp_path):
    def close(spread: float) -> dict:
        return {(a, n, s): 30.0 + spread * SPREAD[s] + (0.1 if a == "pretrained" else 0.0) for (a, n, s) in FINALS}

    # Seeds 0.2 AP apart: with three of them the interval of a 0.1 gap reaches past the margin (-0.37 to +0.57).
    study = load_study(make_study(tmp_path / "wide", close(1.0), schedules=(1, 2, 6)))
    assert not settled(study, 1.0).settled and "interval -0.37 to +0.57" in settled(study, 1.0).reason
    study = load_study(make_study(tmp_path / "s", close(0.25), schedules=(1, 2, 6)))
    decision = settled(study, 1.0)
    assert decision.settled and decision.kind == "caught_up"
    expected = "scratch is within 0.5 AP of (or ahead of) every pre-trained arm at 1x: pre-trained at 1x on all"
    assert expected in decision.reason


def test_not_settled_until_every_seed_of_the_schedule_has_finished(tmp_path):
    close = {key: 30.0 for key in FINALS}
    study = load_study(make_study(tmp_path / "s", close, unfinished={("pretrained", 1, 2)}))
    decision = settled(study, 1.0)
    assert not decision.settled and decision.kind is None
    assert "pretrained_all_s2_1x did not finish" in decision.reason
    assert not settled(study, 3.0).settled and "3x is not a planned schedule" in settled(study, 3.0).reason


def test_settled_when_even_the_optimistic_prediction_misses_the_margin(tmp_path):
    # scratch 20 -> 25, pre-trained 35 -> 36: a - b/N predicts a gap of 7 + 8/6 at 6x.
    far = {(a, n, s): {("scratch", 1): 20.0, ("scratch", 2): 25.0, ("pretrained", 1): 35.0,
                       ("pretrained", 2): 36.0}[(a, n)] + SPREAD[s] / 4 for (a, n, s) in FINALS}  # fmt: skip
    study = load_study(make_study(tmp_path / "s", far, schedules=(1, 2, 6)))
    first = settled(study, 1.0)
    assert not first.settled and "no catch-up prediction (fewer than two finished schedules)" in first.reason
    decision = settled(study, 2.0)
    assert decision.settled and decision.kind == "cannot_catch_up"
    assert "scratch cannot come within 0.5 AP of every pre-trained arm by 6x (PREDICTION, a - b/N)" in decision.reason
    assert "predicted gap at 6x +8.33" in decision.reason


def test_not_settled_while_the_interval_and_the_prediction_leave_it_open(tmp_path):
    # At 2x scratch trails by 4 and the prediction has it within the margin by 6x.
    study = load_study(make_study(tmp_path / "s", FINALS, schedules=(1, 2, 6)))
    decision = settled(study, 2.0)
    assert not decision.settled and decision.kind is None
    assert "pre-trained at 2x on all (hparams default): interval +" in decision.reason
    assert "predicted gap at 6x could be as low as" in decision.reason


def test_the_decision_and_the_verdict_resample_the_kept_detections(tmp_path, val_set):
    # Every seed of both arms kept the same detections: no gap, no spread, and an interval over the 8 images.
    same = {
        (a, 1, s): (val_set, moved_detections(val_set, 0.1, seed=0)) for a in ("scratch", "pretrained") for s in (0, 1)
    }
    study = load_study(make_study(tmp_path / "s", {}, schedules=(1,), seeds=(0, 1), detections=same))
    decision = settled(study, 1.0)
    assert decision.settled and decision.kind == "caught_up" and "upper end +0.00 <= 0.5" in decision.reason
    (c,) = verdict.comparisons(study)
    verdict.estimate_noise(c)
    assert c.interval.images == 8 and c.interval.seeds == (2, 2) and c.ci95 == (0.0, 0.0)
    (sentence,) = verdict.verdict([c])
    assert "over 2 seeds per arm and 8 validation images; test-set noise alone: +0.0 to +0.0)" in sentence
    assert "against the ±0.5 AP margin: scratch is within ±0.5 of pre-trained" in sentence


def test_one_seed_says_training_noise_was_not_measured_and_quotes_a_measured_spread(tmp_path, val_set):
    kept = {("scratch", 1, None): (val_set, moved_detections(val_set, 0.3, seed=1)),
            ("pretrained", 1, None): (val_set, moved_detections(val_set, 0.05, seed=2))}  # fmt: skip
    root = make_study(tmp_path / "s", {}, schedules=(1,), seeds=None, detections=kept)
    assert results.seed_spread(load_study(root)) is None
    (root / results.SEED_SPREAD_FILE).write_text(json.dumps({"sd": 0.3, "source": "docs/RESULTS.md (mini, 3 seeds)"}))
    study = load_study(root)
    assert study.seeds is None and results.seed_spread(study) == results.SeedSpread(
        0.3, "docs/RESULTS.md (mini, 3 seeds)"
    )
    (sentence,) = verdict.verdict(verdict.comparisons(study), spread=results.seed_spread(study))
    assert "over 8 validation images; training noise not measured: one seed per arm; at the seed spread measured " \
           "in docs/RESULTS.md (mini, 3 seeds) (SD 0.30 AP)" in sentence  # fmt: skip


def test_the_demo_quotes_the_seed_spread_its_study_measured(tmp_path):
    """`make demo` (one seed) copies configs/study/mini_seed_spread.json into its study folder: the record of the
    same study run with seeds 0, 1, 2 (scripts/seed_spread.py, docs/RESULTS.md). It must stay readable as what
    `seed_spread` quotes, and its SD the pooled SD of the cells it lists."""
    record = ROOT / "configs" / "study" / "mini_seed_spread.json"
    assert record.name in (ROOT / "scripts" / "demo.sh").read_text()
    data = json.loads(record.read_text())
    (tmp_path / results.SEED_SPREAD_FILE).write_text(record.read_text())
    study = results.Study(root=tmp_path, name="mini", created=None, runs=[], iterations={}, pretrain={})
    spread = results.seed_spread(study)
    assert spread is not None and spread.sd == data["sd"] > 0 and "docs/RESULTS.md" in spread.source
    cells = data["cells"]
    assert len(cells) == 6 and all(c["seeds"] == [0, 1, 2] for c in cells)
    dof = sum(len(c["bbox_ap"]) - 1 for c in cells)
    squares = sum((v - sum(c["bbox_ap"]) / 3) ** 2 for c in cells for v in c["bbox_ap"])
    assert abs((squares / dof) ** 0.5 - data["sd"]) < 1e-3
