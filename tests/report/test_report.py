"""The study report: built from hand-written study folders, so every number in it is known in advance."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import pytest

from scratchdet.errors import ScratchdetError
from scratchdet.report import figures, findings
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study

UNIT = 60  # iterations of 1x in these toy studies
BATCH = 4
PIXELS_PER_IMAGE = 200 * 300
PRETRAIN_SEEN = {"images": 5664, "instances": 5664, "pixels": 5664 * 32 * 32, "estimate": "toy recipe"}

# (init, size label, schedule) -> final bbox AP, AP75, mask AP (None: no segm); the curves end exactly there.
FINALS = {
    ("pretrained", "all", 1): (30.0, 28.0, 25.0),
    ("pretrained", "all", 2): (35.0, 33.0, 30.0),
    ("pretrained", "all", 3): (34.9, 34.0, 31.0),
    ("scratch", "all", 1): (20.0, 18.0, 16.0),
    ("scratch", "all", 2): (34.7, 33.8, 30.4),
    ("scratch", "all", 3): (30.0, 29.0, 26.0),  # unfinished: its last eval is at iter 140 of 180
    ("pretrained", "50", 1): (12.0, 10.0, None),
    ("pretrained", "50", 2): (15.0, 13.0, None),
    ("scratch", "50", 1): (None, None, None),  # last evaluation: no predictions
    ("scratch", "50", 2): (8.6, 7.0, None),
}
SHAPE = {"pretrained": 0.3, "scratch": 1.0}  # AP(i) = final * (i / max)^p: pre-trained rises early


def ap_at(init: str, final: float, i: int, max_iters: int) -> float:
    return round(final * (i / max_iters) ** SHAPE[init], 3)


def lr_at(i: int, max_iters: int) -> float:
    """LR logged at record iter i (used by update i-1): drops at max-40 and max-20, warm-up over 20 iterations."""
    it = i - 1
    lr = 0.02 * (0.1 ** sum(it >= m for m in (max_iters - 40, max_iters - 20)))
    return lr * (0.5 if it < 20 else 1.0)


def seen_at(i: int) -> dict:
    return {"images": i * BATCH, "instances": i * BATCH * 3, "pixels": i * BATCH * PIXELS_PER_IMAGE}


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def eval_record(init: str, finals: tuple, i: int, max_iters: int) -> dict:
    bbox_ap, ap75, mask_ap = finals
    record = {"type": "eval", "iter": i, "status": "ok", "images": 50, "detections": 300}
    record["bbox"] = {
        "AP": ap_at(init, bbox_ap, i, max_iters),
        "AP50": None,
        "AP75": ap_at(init, ap75, i, max_iters),
        "APs": None,
    }
    if mask_ap is not None:
        record["segm"] = {
            "AP": ap_at(init, mask_ap, i, max_iters),
            "AP50": float("nan"),
            "AP75": ap_at(init, mask_ap - 2, i, max_iters),
        }
    return record


def run_records(init: str, size: str, n: int, train_images: int) -> list[dict]:
    max_iters = n * UNIT
    finals = FINALS[(init, size, n)]
    unfinished = (init, size, n) == ("scratch", "all", 3)
    last = 140 if unfinished else max_iters
    records = [
        {
            "type": "start",
            "iter": 0,
            "init": init,
            "train_images": train_images,
            "pretrain_seen": PRETRAIN_SEEN if init == "pretrained" else {"images": 0, "instances": 0, "pixels": 0},
        }
    ]
    for i in range(10, last + 1, 10):
        records.append(
            {
                "type": "train",
                "iter": i,
                "lr": lr_at(i, max_iters),
                "loss": 2.0 * math.exp(-i / 100) + 0.1,
                "seen": seen_at(i),
            }
        )
        if i % 20 == 0:
            if finals[0] is None and i == last:
                records.append({"type": "eval", "iter": i, "status": "no predictions", "images": 50, "detections": 0})
            else:
                records.append(eval_record(init, finals if finals[0] is not None else (5.0, 4.0, None), i, max_iters))
    if not unfinished:
        records.append({"type": "end", "iter": max_iters, "seen": seen_at(max_iters)})
    return records


def make_study(root: Path, sizes=(("all", None, 200), ("50", 50, 50)), schedules=(1, 2, 3)) -> Path:
    runs = []
    for size_label, size, images in sizes:
        for init in ("scratch", "pretrained"):
            for n in schedules:
                if (init, size_label, n) not in FINALS:
                    continue
                name = f"{init}_{size_label}_{n}x"
                runs.append(
                    {
                        "name": name,
                        "arm": init,
                        "init": init,
                        "schedule": float(n),
                        "train_size": size,
                        "train_size_label": size_label,
                        "hparams": "default",
                        "hparams_overrides": [],
                        "path": f"runs/{name}",
                        "trunk": None,
                        "fork_iter": None,
                        "max_iters": n * UNIT,
                    }
                )
                run_dir = root / "runs" / name
                records = run_records(init, size_label, n, images)
                tail = ""
                if name == "scratch_all_2x":
                    # A resume from iter 80 re-logs 90..120: the first logged eval at 100 and 120 are stale.
                    stale = [
                        {**r, "bbox": {**r["bbox"], "AP": 99.9}} if r["type"] == "eval" and r["iter"] >= 100 else r
                        for r in records
                        if r["iter"] <= 120 and r["type"] != "end"
                    ]
                    records = (
                        stale + [{"type": "start", "iter": 80, "init": init}] + [r for r in records if r["iter"] > 80]
                    )
                    # Lines without an iteration are not plotted; the last line is torn (a killed writer).
                    tail = '[1, 2]\n{"type": "note"}\n{"type": "eval", "iter'
                write_jsonl(run_dir / "metrics.jsonl", records, tail)
                pre = PRETRAIN_SEEN if init == "pretrained" else {"images": 0, "instances": 0, "pixels": 0}
                (run_dir / "init.json").write_text(json.dumps({"init": init, "weights": None, "pretrain_seen": pre}))
    plan = {
        "name": "toy",
        "created": "2024-01-01T00:00:00",
        "runs": runs,
        "trunks": [],
        "iterations": {"separate": 1800, "shared": 780, "fraction": 0.433},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps(plan))
    return root


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(make_study(tmp_path_factory.mktemp("study") / "toy"))


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_report_files_and_embedding(report):
    out = report.parent
    assert report.name == "report.html" and report.is_file()
    page = report.read_text()
    stems = {p.stem for p in (out / "figures").glob("*.svg")}
    assert stems == {p.stem for p in (out / "figures").glob("*.png")}
    assert {"curves_all_default", "curves_50_default", "samples_all_default", "data_size", "loss_50_default"} <= stems
    for stem in stems:  # every figure is in the page itself, byte for byte
        assert base64.b64encode((out / "figures" / f"{stem}.svg").read_bytes()).decode() in page
    assert "<script" not in page and "<link" not in page and "http" not in page
    for name in ("final_ap", "samples_seen", "data_size"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file()
    assert not (out / "tables" / "hparams.csv").exists()  # one setting: no grid
    assert "Study report: toy" in page
    assert "shared trunk: 780 of 1800 iterations, 43%" in page
    assert "reported as measured" in page and "CAUGHT_UP_AP = 0.5" in page


def test_final_ap_table(report):
    rows = {r["run"]: r for r in read_csv(report.parent / "tables" / "final_ap.csv")}
    assert len(rows) == len(FINALS)
    assert rows["pretrained_all_2x"]["bbox AP"] == "35" and rows["pretrained_all_2x"]["bbox AP75"] == "33"
    assert rows["pretrained_all_2x"]["mask AP"] == "30" and rows["pretrained_all_2x"]["mask AP50"] == "-"  # NaN
    assert rows["scratch_all_2x"]["bbox AP"] == "34.7"  # the re-logged record, not the stale 99.9
    assert rows["scratch_all_2x"]["last eval iter"] == "120"
    assert rows["scratch_all_3x"]["status"] == "unfinished"
    assert rows["scratch_all_3x"]["last eval iter"] == "140"
    assert "did not finish (last record at iter 140 of 180)" in rows["scratch_all_3x"]["note"]
    assert rows["scratch_50_1x"]["bbox AP"] == "-" and "no predictions" in rows["scratch_50_1x"]["note"]
    assert rows["pretrained_50_2x"]["mask AP"] == "-"
    md = (report.parent / "tables" / "final_ap.md").read_text()
    assert "| scratch_all_2x | scratch | 2x | all | default | finished | 120 | 34.7 |" in md
    page = report.read_text()
    assert "<td>34.7</td>" in page and "99.9" not in page


def test_findings_computed_from_numbers(report):
    page = report.read_text()
    pre = "[train size all, hparams default] "
    expected = [
        f"{pre}At 1x, pre-trained leads by 10.0 bbox AP (pre-trained 30.0 vs scratch 20.0).",
        f"{pre}At 2x, scratch is within 0.3 bbox AP of pre-trained (scratch 34.7 vs pre-trained 35.0).",
        f"{pre}At 3x, no comparison: scratch_all_3x did not finish (last record at iter 140).",
        f"{pre}Scratch catches up at 2x (first schedule within 0.5 bbox AP: scratch 34.7 vs pre-trained 35.0).",
        f"{pre}AP75: scratch exceeds pre-trained at 2x by 0.8 (33.8 vs 33.0).",
        f"{pre}Mask AP at 2x, scratch is within 0.4 mask AP of pre-trained (scratch 30.4 vs pre-trained 30.0).",
        "With 50 training images (best finished: scratch 2x, pre-trained 2x), pre-trained leads by 6.4 bbox AP "
        "(pre-trained 15.0 vs scratch 8.6).",
        "With 200 training images, 'all' (best finished: scratch 2x, pre-trained 2x), scratch is within 0.3 bbox AP "
        "of pre-trained (scratch 34.7 vs pre-trained 35.0).",
        "Pre-training wins by more than 0.5 bbox AP with 50; from all on the gap is at most 0.5 (or scratch leads).",
        "Run scratch_all_3x did not finish (last record at iter 140 of 180): its numbers are shown but left out of "
        "comparisons.",
        "Run scratch_50_1x: last evaluation (iter 60) had no predictions, so it has no final AP.",
    ]
    # Early convergence at the first common evaluation of the 2x runs.
    early_pre, early_scr = ap_at("pretrained", 35.0, 20, 120), ap_at("scratch", 34.7, 20, 120)
    gap = round(round(early_pre, 1) - round(early_scr, 1), 1)
    expected.append(
        f"{pre}Early, at iter 20 (2x runs' first common evaluation), pre-trained leads by {gap:.1f} "
        f"bbox AP (pre-trained {early_pre:.1f} vs scratch {early_scr:.1f})."
    )
    # Samples at 2x: pre-training + fine-tuning vs scratch.
    ft = seen_at(120)
    images = (ft["images"] + PRETRAIN_SEEN["images"]) / ft["images"]
    pixels = (ft["pixels"] + PRETRAIN_SEEN["pixels"]) / ft["pixels"]
    assert f"{images:.1f}" == "12.8"
    expected.append(
        f"At 2x (train size all), pre-training + fine-tuning saw 12.8x the images of scratch, "
        f"{(ft['instances'] + PRETRAIN_SEEN['instances']) / ft['instances']:.1f}x the instances and "
        f"{pixels:.1f}x the pixels ({ft['images'] + 5664:,} vs {ft['images']:,} images; "
        f"{ft['pixels'] + PRETRAIN_SEEN['pixels']:,} vs {ft['pixels']:,} pixels). "
        "Pre-training counts are an estimate: toy recipe."
    )
    for sentence in expected:
        assert html.escape(sentence) in page, sentence


def test_loss_finding_for_smallest_set(tmp_path):
    study = load_study(make_study(tmp_path / "s"))
    sentences = findings.loss_findings(study.runs, "50")
    run = next(r for r in study.runs if r.name == "pretrained_50_2x")
    loss = dict(run.loss_curve())
    ap = dict(run.curve())
    assert (
        f"Train size 50, pre-trained 2x (pretrained_50_2x): from iter 60 to 120 training loss fell "
        f"({loss[60]:.3f} -> {loss[120]:.3f}) while bbox AP went {ap[60]:.1f} -> 15.0."
    ) in sentences
    assert not any("scratch_50_1x" in s for s in sentences)  # no predictions at its end: no AP to set against loss


def test_samples_table(report):
    rows = {r["run"]: r for r in read_csv(report.parent / "tables" / "samples_seen.csv")}
    pre, scr = rows["pretrained_all_2x"], rows["scratch_all_2x"]
    assert int(pre["fine-tune images"]) == int(scr["fine-tune images"]) == 480
    assert int(pre["pre-train images"]) == 5664 and pre["pre-train estimate"] == "toy recipe"
    assert int(pre["total images"]) == 480 + 5664 and scr["pre-train images"] == "0"
    assert float(pre["images x scratch"]) == pytest.approx((480 + 5664) / 480, abs=1e-3)
    assert scr["images x scratch"] == "-"
    assert int(rows["scratch_all_3x"]["fine-tune images"]) == 140 * BATCH  # last train record of an unfinished run


def test_data_size_table(report):
    rows = {r["train size"]: r for r in read_csv(report.parent / "tables" / "data_size.csv")}
    assert list(rows) == ["50", "all"]  # ordered by training images
    assert rows["50"]["train images"] == "50" and rows["all"]["train images"] == "200"  # from the start records
    assert float(rows["50"]["gap (pre-trained - scratch)"]) == pytest.approx(6.4)
    assert rows["all"]["pre-trained schedule"] == "2x"  # the best finished pre-trained run (35.0 > 34.9)


def test_dedup_and_torn_line(tmp_path):
    study = load_study(make_study(tmp_path / "s"))
    run = next(r for r in study.runs if r.name == "scratch_all_2x")
    keys = [(r["type"], r["iter"]) for r in run.records]
    assert len(keys) == len(set(keys))
    assert [i for i, _ in run.curve()] == [20, 40, 60, 80, 100, 120]
    assert run.final() == 34.7 and dict(run.curve())[100] == ap_at("scratch", 34.7, 100, 120)
    assert run.lr_drops == [80, 100]  # from the logged LR, warm-up's rise ignored
    assert run.finished


def test_figures_have_labels_and_legends(tmp_path):
    study = load_study(make_study(tmp_path / "s"))
    group = [r for r in study.runs if r.size_label == "all"]
    fig = figures.learning_curves_figure(group, "curves")
    axes = fig.axes
    assert len(axes) == 4  # bbox and mask rows x scratch and pre-trained columns
    assert [ax.get_title() for ax in axes] == [
        "scratch: bbox AP",
        "pre-trained: bbox AP",
        "scratch: mask AP",
        "pre-trained: mask AP",
    ]
    assert all(ax.get_xlabel() == "iterations" for ax in axes)
    assert axes[0].get_ylabel() == "bbox AP (%)" and axes[2].get_ylabel() == "mask AP (%)"
    assert axes[0].get_ylim() == axes[1].get_ylim()  # same y-axis for both inits
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["1x", "2x", "3x (unfinished)"]
    assert [t.get_text() for t in axes[1].get_legend().get_texts()] == ["1x", "2x", "3x"]
    dotted = [line for line in axes[1].get_lines() if line.get_linestyle() == ":"]
    assert sorted({line.get_xdata()[0] for line in dotted}) == [20, 40, 80, 100, 140, 160]  # LR drops: 1x, 2x, 3x

    bars = figures.samples_figure(group, "samples")
    assert [ax.get_yscale() for ax in bars.axes] == ["log"] * 3
    assert [ax.get_ylabel() for ax in bars.axes] == [f"{k} seen (log scale)" for k in ("images", "instances", "pixels")]
    assert [t.get_text() for t in bars.legends[0].get_texts()][0] == "scratch"

    size_fig = figures.data_size_figure(findings.size_points(study.runs), "size")
    ax = size_fig.axes[0]
    assert ax.get_xlabel() == "training images (log scale)" and ax.get_ylabel() == "final bbox AP (%)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["scratch", "pre-trained"]

    loss_fig = figures.loss_and_ap_figure([r for r in study.runs if r.size_label == "50"], "loss")
    assert [a.get_ylabel() for a in loss_fig.axes] == ["training loss (sum of losses)", "bbox AP (%)"]
    assert all(a.get_xlabel() == "iterations" and a.get_legend() is not None for a in loss_fig.axes)


def test_missing_pieces_are_reported(tmp_path):
    root = make_study(tmp_path / "s", sizes=(("all", None, 200),), schedules=(1,))
    plan = json.loads((root / "plan.json").read_text())
    plan["runs"] = [r for r in plan["runs"] if r["init"] == "scratch"]
    plan["runs"].append({**plan["runs"][0], "name": "scratch_all_9x", "schedule": 9.0, "path": "runs/nowhere"})
    plan.pop("iterations")
    (root / "plan.json").write_text(json.dumps(plan))
    page = write_report(root).read_text()
    assert "No pre-trained runs: no scratch vs pre-trained comparison." in page
    assert "Run scratch_all_9x has no records (not started or missing)" in page
    rows = {r["run"]: r for r in read_csv(root / "report" / "tables" / "final_ap.csv")}
    assert rows["scratch_all_9x"]["status"] == "missing" and rows["scratch_all_9x"]["bbox AP"] == "-"
    assert "Samples seen: no schedule where both arms finished, so no sample comparison." in page


def test_hparam_grid_selects_on_pretrained(tmp_path):
    root = make_study(tmp_path / "s", sizes=(("50", 50, 50),), schedules=(2,))
    plan = json.loads((root / "plan.json").read_text())
    extra = []
    for entry in plan["runs"]:
        entry["hparams"], entry["hparams_overrides"] = "lr02", ["solver.base_lr=0.02"]
        other = {
            **entry,
            "name": entry["name"] + "_lr01",
            "hparams": "lr01",
            "hparams_overrides": ["solver.base_lr=0.01"],
            "path": entry["path"] + "_lr01",
        }
        final = {"scratch": (10.1, 8.0, None), "pretrained": (14.0, 12.0, None)}[entry["init"]]
        records = [
            eval_record(entry["init"], final, 120, 120) if r["type"] == "eval" and r["iter"] == 120 else r
            for r in run_records(entry["init"], "50", 2, 50)
        ]
        write_jsonl(root / other["path"] / "metrics.jsonl", records)
        extra.append(other)
    plan["runs"] += extra
    (root / "plan.json").write_text(json.dumps(plan))
    page = write_report(root).read_text()
    rows = {r["hparams"]: r for r in read_csv(root / "report" / "tables" / "hparams.csv")}
    assert rows["lr02"]["used"] == "yes" and rows["lr01"]["used"] == "no"
    assert rows["lr02"]["best for"] == "pre-trained" and rows["lr01"]["best for"] == "scratch"
    assert rows["lr01"]["overrides"] == "solver.base_lr=0.01"
    assert (
        "Train size 50: hparams &#x27;lr02&#x27; are used for both arms (best on the pre-trained arm); "
        "scratch&#x27;s own best is &#x27;lr01&#x27; (10.1 bbox AP vs 8.6 with &#x27;lr02&#x27;)."
    ) in page


def test_trunk_head_and_pretrain_fallback(tmp_path):
    root = tmp_path / "s"
    trunk = root / "trunks" / "g"
    write_jsonl(
        trunk / "metrics.jsonl",
        [
            {"type": "start", "iter": 0, "init": "pretrained"},
            {"type": "train", "iter": 20, "lr": 0.02, "loss": 1.0, "seen": seen_at(20)},
            {"type": "eval", "iter": 20, "status": "ok", "bbox": {"AP": 5.0}},
            {"type": "eval", "iter": 40, "status": "ok", "bbox": {"AP": 7.0}},  # after the fork: not this run's
            {"type": "end", "iter": 40, "seen": seen_at(40)},
        ],
    )
    write_jsonl(
        root / "runs" / "r" / "metrics.jsonl",
        [
            {"type": "start", "iter": 20, "init": "pretrained"},
            {"type": "eval", "iter": 30, "status": "ok", "bbox": {"AP": 9.0}},
            {"type": "end", "iter": 30, "seen": seen_at(30)},
        ],
    )
    write_jsonl(
        root / "pretrain" / "pretrained" / "metrics.jsonl",
        [{"type": "train", "iter": 100, "seen": {"images": 800, "instances": 800, "pixels": 800 * 1024}}],
    )
    plan = {
        "name": "t",
        "pretrain": {"pretrained": "pretrain/pretrained"},
        "runs": [
            {
                "name": "r",
                "arm": "pretrained",
                "init": "pretrained",
                "schedule": 1.0,
                "train_size": None,
                "train_size_label": "all",
                "hparams": "default",
                "path": "runs/r",
                "trunk": "trunks/g",
                "fork_iter": 20,
                "max_iters": 30,
            }
        ],
        "trunks": [{"name": "g", "path": "trunks/g", "iters": 40}],
    }
    (root / "plan.json").write_text(json.dumps(plan))
    run = load_study(root).runs[0]
    assert run.curve() == [(20, 5.0), (30, 9.0)]
    assert run.pretrain_seen["images"] == 800  # no init.json: the study's own pre-training counts
    page = write_report(root).read_text()
    assert "Pre-training for arm pretrained (pretrain/pretrained, unfinished): 100 iterations, 800 images" in page


def test_no_plan_raises(tmp_path):
    with pytest.raises(ScratchdetError, match="plan.json"):
        write_report(tmp_path)
    (tmp_path / "plan.json").write_text("[1, 2")
    with pytest.raises(ScratchdetError, match="not a JSON object"):
        write_report(tmp_path)


def test_untrained_arms_are_not_called_comparable():
    from scratchdet.report.findings import gap_sentence

    sentence = gap_sentence("At 1x", "bbox AP", 0.3, 0.1)
    assert "both arms are below 1.0 bbox AP" in sentence and "within" not in sentence
    assert gap_sentence("At 6x", "bbox AP", 41.1, 41.3).startswith("At 6x, scratch is within 0.2 bbox AP")


def test_device_seconds_counts_each_window_once_with_its_processes():
    from scratchdet.report.results import device_seconds

    records = [
        {"type": "start", "iter": 0, "world_size": 1},
        {"type": "train", "iter": 1, "time_per_iter": 1.0},
        {"type": "start", "iter": 2, "world_size": 2},  # resumed at 2 on two processes
        {"type": "train", "iter": 2, "time_per_iter": 2.0},  # closes the window 1..2, before the resume
        {"type": "train", "iter": 4, "time_per_iter": 1.5},
    ]
    assert device_seconds(records) == 1.0 + 2.0 + 2 * 1.5 * 2
    assert device_seconds(records, after=2) == 2 * 1.5 * 2  # a fork at 2 owns only what follows
    assert device_seconds(records, after=3) == 1 * 1.5 * 2
    assert device_seconds([{"type": "start", "iter": 0}]) is None


def test_verdict_opens_the_report_before_the_grouped_findings(report):
    page = html.unescape(report.read_text())
    verdict = page[page.index("<p class='verdict'>") : page.index("</p>", page.index("<p class='verdict'>"))]
    sentences = [s for s in verdict.split("'>", 1)[1].split(". ") if s]
    assert len(sentences) <= 5
    # The longest schedule both arms finished (3x scratch is unfinished), then the shortest, the trend, and the
    # other data size; no caveat sentence (the best run has 35 AP). Hand-written runs keep no detections.
    assert (
        sentences[0].startswith("At 2x on ")
        and "pre-trained leads scratch by 0.3 bbox AP (35.0 pre-trained" in (sentences[0])
    )
    assert "noise not estimated" in sentences[0]
    assert sentences[1].startswith("At 1x on ") and "leads scratch by 10.0" in sentences[1]
    assert "gap shrinks (+10.0 to +0.3 AP)" in sentences[2]
    assert sentences[3].startswith("At 2x on 50 training images") and "by 6.4 bbox AP" in sentences[3]
    assert page.index("<h2>Verdict</h2>") < page.index("fig1_arms") < page.index("<h2>Findings</h2>")
    assert "<h3>Schedules (Figs. 1, 3, 4)</h3>" in page and "<h3>Samples seen (Fig. 2)</h3>" in page


def test_fig1_draws_both_arms_on_one_axes(tmp_path):
    study = load_study(make_study(tmp_path / "toy"))
    group = [r for r in study.runs if r.size_label == "all"]
    fig = figures.arms_curves_figure(group, "t")
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith("_")]
    colors = {line.get_label().split(" ")[0]: line.get_color() for line in lines}
    assert set(colors) == {"scratch", "pre-trained"} and len(set(colors.values())) == 2
    styles = {line.get_label(): line.get_linestyle() for line in lines}
    assert styles["scratch 1x"] == styles["pre-trained 1x"] != styles["scratch 2x"]


def test_a_two_arm_study_names_its_pretrained_arm_by_its_spec_name(tmp_path):
    root = make_study(tmp_path / "s", sizes=(("all", None, 200),), schedules=(1, 2))
    plan = json.loads((root / "plan.json").read_text())
    for entry in plan["runs"]:
        entry["arm"] = "imagenet" if entry["init"] == "pretrained" else entry["arm"]
    (root / "plan.json").write_text(json.dumps(plan))
    text = html.unescape(write_report(root).read_text())
    assert (
        "At 2x on all 200 training images, imagenet leads scratch by 0.3 bbox AP (35.0 imagenet vs 34.7 scratch)"
        in (text)
    )
    assert "From 1x to 2x the imagenet minus scratch gap shrinks (+10.0 to +0.3 AP)." in text
    assert "At 1x, imagenet leads by 10.0 bbox AP (imagenet 30.0 vs scratch 20.0)." in text
    assert (
        "Scratch catches up with imagenet at 2x (first schedule within 0.5 bbox AP: scratch 34.7 vs imagenet 35.0)"
        in (text)
    )
    assert "At 2x (train size all), pre-training + fine-tuning of imagenet saw 12.8x the images of scratch" in text
    assert "Among the pre-trained arms" not in text  # one pre-trained arm: nothing to rank
