"""Reports of studies with several pre-trained arms, and the check of every run's init.json against its arm.

The study folders are hand-written (plan.json, metrics.jsonl, init.json, eval reports), so every number in them is
known in advance: scratch, `imagenet` (a weights file) and `inhouse` (the study's own pre-training) at two data sizes
and two schedules.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import matplotlib.colors
import pytest

from scratchdet.errors import ScratchdetError
from scratchdet.report import figures, findings, results, verdict
from scratchdet.report.page import write_report
from scratchdet.report.results import load_study

UNIT = 40  # iterations of 1x
BATCH = 2
PIXELS = 100 * 100
SECONDS_PER_ITER = 0.5
# (arm, size label, schedule) -> final bbox AP: imagenet is best at 2x on all images, inhouse everywhere else.
FINALS = {
    ("scratch", "all", 1): 20.0,
    ("scratch", "all", 2): 33.0,
    ("imagenet", "all", 1): 30.0,
    ("imagenet", "all", 2): 35.0,
    ("inhouse", "all", 1): 32.0,
    ("inhouse", "all", 2): 34.0,
    ("scratch", "50", 1): 5.0,
    ("scratch", "50", 2): 8.0,
    ("imagenet", "50", 1): 12.0,
    ("imagenet", "50", 2): 15.0,
    ("inhouse", "50", 1): 14.0,
    ("inhouse", "50", 2): 18.0,
}
INITS = {"scratch": "scratch", "imagenet": "pretrained", "inhouse": "pretrained"}
PRETRAIN_SEEN = {
    "scratch": {"images": 0, "instances": 0, "pixels": 0},
    "imagenet": {"images": 10000, "instances": 10000, "pixels": 10000 * 224 * 224},
    "inhouse": {"images": 3000, "instances": 9000, "pixels": 3000 * PIXELS},
}


def seen_at(i: int) -> dict:
    return {"images": i * BATCH, "instances": i * BATCH * 2, "pixels": i * BATCH * PIXELS}


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def run_records(final: float, max_iters: int, images: int) -> list[dict]:
    records = [{"type": "start", "iter": 0, "train_images": images, "world_size": 1}]
    for i in range(10, max_iters + 1, 10):
        records.append(
            {
                "type": "train",
                "iter": i,
                "lr": 0.02,
                "loss": 2.0 - i / max_iters,
                "seen": seen_at(i),
                "time_per_iter": SECONDS_PER_ITER,
            }
        )
        if i % 20 == 0:
            ap = round(final * i / max_iters, 3)
            records.append(
                {"type": "eval", "iter": i, "status": "ok", "images": 10, "bbox": {"AP": ap, "AP75": ap - 1.0}}
            )
    return records + [{"type": "end", "iter": max_iters, "seen": seen_at(max_iters)}]


def make_study(root: Path, finals: dict = FINALS, hparams: dict | None = None) -> Path:
    """A three-arm study folder. `hparams`: {setting: {(arm, size, schedule): final AP}} adds settings beside
    "default" (the plan then names the runs with the setting)."""
    weights = {"imagenet": str(root.parent / "imagenet.pth"), "inhouse": str(root / "pretrain" / "inhouse")}
    settings = {"default": finals, **(hparams or {})}
    runs = []
    for arm in ("scratch", "imagenet", "inhouse"):
        for size_label, size, images in (("all", None, 200), ("50", 50, 50)):
            for setting, values in settings.items():
                hp_overrides = [] if setting == "default" else [f"solver.base_lr={setting}"]
                for n in (1, 2):
                    if (arm, size_label, n) not in values:
                        continue
                    name = f"{arm}_{size_label}" + ("" if len(settings) == 1 else f"_{setting}") + f"_{n}x"
                    arm_overrides = (
                        ["init=scratch"] if arm == "scratch" else ["init=pretrained", f"weights={weights[arm]}"]
                    )
                    runs.append(
                        {
                            "name": name,
                            "arm": arm,
                            "init": INITS[arm],
                            "schedule": float(n),
                            "train_size": size,
                            "train_size_label": size_label,
                            "hparams": setting,
                            "hparams_overrides": hp_overrides,
                            "overrides": [
                                "train.batch_size=2",
                                *arm_overrides,
                                *hp_overrides,
                                f"schedule.multiplier={n}",
                            ],
                            "path": f"runs/{name}",
                            "trunk": None,
                            "fork_iter": None,
                            "max_iters": n * UNIT,
                        }
                    )
                    run_dir = root / "runs" / name
                    write_jsonl(run_dir / "metrics.jsonl", run_records(values[(arm, size_label, n)], n * UNIT, images))
                    loaded = None
                    if arm == "imagenet":
                        loaded = weights[arm]
                    elif arm == "inhouse":  # weights=RUN: init.json records the run's latest checkpoint
                        loaded = f"{weights[arm]}/checkpoints/model_0000100.pth"
                    init = {"init": INITS[arm], "weights": loaded, "pretrain_seen": PRETRAIN_SEEN[arm]}
                    (run_dir / "init.json").write_text(json.dumps(init))
    pretrain = [{"type": "start", "iter": 0, "world_size": 1}]
    pretrain += [{"type": "train", "iter": 100, "seen": PRETRAIN_SEEN["inhouse"], "time_per_iter": 3.6}]
    write_jsonl(root / "pretrain" / "inhouse" / "metrics.jsonl", [*pretrain, {"type": "end", "iter": 100}])
    plan = {"name": "three", "runs": runs, "trunks": [], "pretrain": {"inhouse": "pretrain/inhouse"}}
    (root / "plan.json").write_text(json.dumps(plan))
    return root


def read_csv(path: Path) -> dict[str, dict]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {r[next(iter(r))]: r for r in rows}


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    return write_report(make_study(tmp_path_factory.mktemp("arms") / "study"))


def _verdict(page: Path) -> list[str]:
    text = html.unescape(page.read_text())
    start = text.index("<p class='verdict'>") + len("<p class='verdict'>")
    return text[start : text.index("</p>", start)].split(". ")


def test_comparisons_pair_scratch_with_every_pretrained_arm(tmp_path):
    # c14 (../shared/bad-inputs/t3-study): two pre-trained arms used to share one key, the last one winning.
    found = verdict.comparisons(load_study(make_study(tmp_path / "s")))
    pairs = [(c.size_label, c.schedule, c.scratch.name, c.pretrained.name) for c in found]
    assert pairs == [
        ("all", 1.0, "scratch_all_1x", "imagenet_all_1x"),
        ("all", 1.0, "scratch_all_1x", "inhouse_all_1x"),
        ("all", 2.0, "scratch_all_2x", "imagenet_all_2x"),
        ("all", 2.0, "scratch_all_2x", "inhouse_all_2x"),
        ("50", 1.0, "scratch_50_1x", "imagenet_50_1x"),
        ("50", 1.0, "scratch_50_1x", "inhouse_50_1x"),
        ("50", 2.0, "scratch_50_2x", "imagenet_50_2x"),
        ("50", 2.0, "scratch_50_2x", "inhouse_50_2x"),
    ]
    assert [c.delta for c in found[2:4]] == [2.0, 1.0]


def test_verdict_compares_every_arm_and_says_which_pretrained_arm_is_best_where(page):
    noise = "noise not estimated (no per-image detections kept)"
    sentences = _verdict(page)
    assert len(sentences) == 5
    assert sentences[0] == (
        f"At 2x on all 200 training images, imagenet leads scratch by 2.0 bbox AP (35.0 imagenet vs 33.0 scratch), "
        f"{noise}; inhouse leads scratch by 1.0 bbox AP (34.0 inhouse vs 33.0 scratch), {noise}"
    )
    assert sentences[1] == (
        "Among the pre-trained arms, inhouse is best at 1x on all 200 training images and at 1x and 2x on 50 "
        "training images; imagenet is best at 2x on all 200 training images; at 2x on all 200 training images "
        f"imagenet leads inhouse by 1.0 bbox AP, {noise}"
    )
    assert sentences[2].startswith("At 1x on all 200 training images, imagenet leads scratch by 10.0 bbox AP")
    assert "; inhouse leads scratch by 12.0 bbox AP (32.0 inhouse vs 20.0 scratch)" in sentences[2]
    assert sentences[3] == (
        "From 1x to 2x the imagenet minus scratch gap shrinks (+10.0 to +2.0 AP) and the inhouse minus scratch gap "
        "shrinks (+12.0 to +1.0 AP)"
    )
    assert sentences[4].startswith("At 2x on 50 training images, imagenet leads scratch by 7.0 bbox AP")
    assert "inhouse leads scratch by 10.0 bbox AP" in sentences[4]


def test_verdict_keeps_the_caveat_and_drops_the_trend_first(tmp_path):
    weak = {key: ap / 10 + 2 for key, ap in FINALS.items()}  # every run below 10 AP
    sentences = verdict.verdict(verdict.comparisons(load_study(make_study(tmp_path / "s", weak))))
    assert len(sentences) == 5
    assert not any(s.startswith("From 1x to 2x") for s in sentences)
    assert sentences[1].startswith("Among the pre-trained arms")
    assert sentences[-1] == (
        "Every arm stays below 10 bbox AP (best 5.5): too weak for this comparison to say much about pre-training."
    )


def test_findings_compare_each_pretrained_arm_with_scratch(page):
    text = page.read_text()
    pre = "[train size all, hparams default] "
    expected = [
        f"{pre}At 1x, imagenet leads by 10.0 bbox AP (imagenet 30.0 vs scratch 20.0).",
        f"{pre}At 2x, imagenet leads by 2.0 bbox AP (imagenet 35.0 vs scratch 33.0).",
        f"{pre}Scratch does not catch up with imagenet within 0.5 bbox AP at any compared schedule up to 2x "
        "(smallest gap 2.0 at 2x).",
        f"{pre}At 2x, inhouse leads by 1.0 bbox AP (inhouse 34.0 vs scratch 33.0).",
        f"{pre}AP75: inhouse is ahead or equal at every compared schedule (smallest lead 1.0 at 2x: inhouse 33.0 vs "
        "scratch 32.0).",
        f"{pre}Best pre-trained arm per schedule: at 1x inhouse (32.0 bbox AP vs imagenet 30.0); at 2x imagenet "
        "(35.0 bbox AP vs inhouse 34.0).",
        # Samples seen: each pre-trained arm's pre-training + fine-tuning against scratch at 2x (80 iterations).
        "At 2x (train size all), pre-training + fine-tuning of imagenet saw 63.5x the images of scratch",
        "At 2x (train size all), pre-training + fine-tuning of inhouse saw 19.8x the images of scratch",
        # Data size: each arm's gap per size, the best pre-trained arm per size, and each arm's crossover.
        "With 50 training images (best finished: scratch 2x, inhouse 2x), inhouse leads by 10.0 bbox AP "
        "(inhouse 18.0 vs scratch 8.0).",
        "With 50 training images, the best pre-trained arm: inhouse (18.0 bbox AP vs imagenet 15.0).",
        "With 200 training images, &#x27;all&#x27;, the best pre-trained arm: imagenet (35.0 bbox AP vs inhouse 34.0).",
        "Pre-training (imagenet) wins by more than 0.5 bbox AP at every compared size (50, all).",
        "Pre-training (inhouse) wins by more than 0.5 bbox AP at every compared size (50, all).",
    ]
    for sentence in expected:
        assert sentence in text, sentence


def test_fig1_draws_every_arm_in_its_own_colour_named_by_the_spec(tmp_path):
    study = load_study(make_study(tmp_path / "s"))
    group = [r for r in study.runs if r.size_label == "all"]
    (ax,) = figures.arms_curves_figure(group, "t").axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scratch 1x", "scratch 2x", "imagenet 1x", "imagenet 2x", "inhouse 1x", "inhouse 2x"]
    colors = {
        line.get_label().split(" ")[0]: matplotlib.colors.to_hex(line.get_color())
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }
    assert len(set(colors.values())) == 3
    assert colors == {
        arm: matplotlib.colors.to_hex(c) for arm, c in figures.arm_colors(results.study_arms(group)).items()
    }

    curves = figures.learning_curves_figure(group, "curves")
    assert [a.get_title() for a in curves.axes] == ["scratch: bbox AP", "imagenet: bbox AP", "inhouse: bbox AP"]
    bars = figures.samples_figure(group, "samples")
    names = [t.get_text() for t in bars.legends[0].get_texts()]
    assert names[0] == "scratch" and "imagenet: total" in names and "inhouse: pre-training" in names
    size = figures.data_size_figure(findings.size_points(study.runs), "size").axes[0]
    assert [t.get_text() for t in size.get_legend().get_texts()] == ["scratch", "imagenet", "inhouse"]
    assert sorted(t.get_text() for t in size.texts) == ["+1.0", "+10.0", "+2.0", "+7.0"]


def test_tables_have_every_arm(page):
    tables = page.parent / "tables"
    final = read_csv(tables / "final_ap.csv")
    assert final["imagenet_all_2x"]["arm"] == "imagenet" and final["imagenet_all_2x"]["init"] == "pretrained"
    assert list(final)[:6] == [
        "scratch_50_1x",
        "scratch_50_2x",
        "imagenet_50_1x",
        "imagenet_50_2x",
        "inhouse_50_1x",
        "inhouse_50_2x",
    ]
    size = read_csv(tables / "data_size.csv")
    assert float(size["50"]["gap (imagenet - scratch)"]) == pytest.approx(7.0)
    assert float(size["50"]["gap (inhouse - scratch)"]) == pytest.approx(10.0)
    assert size["all"]["best pre-trained arm"] == "imagenet (35.0 bbox AP vs inhouse 34.0)"
    samples = read_csv(tables / "samples_seen.csv")
    assert float(samples["inhouse_all_2x"]["images x scratch"]) == pytest.approx((160 + 3000) / 160, abs=1e-3)
    assert float(samples["imagenet_all_2x"]["images x scratch"]) == pytest.approx((160 + 10000) / 160, abs=1e-3)
    compute = read_csv(tables / "compute_per_arm.csv")
    assert list(compute) == ["scratch", "imagenet", "inhouse"]
    scratch_hours = (40 + 80) * 2 * SECONDS_PER_ITER / 3600  # 1x and 2x at two sizes
    assert float(compute["inhouse"]["pre-training device-h"]) == pytest.approx(100 * 3.6 / 3600, abs=1e-3)
    assert float(compute["imagenet"]["fine-tuning x scratch"]) == pytest.approx(1.0)
    assert compute["imagenet"]["pre-training device-h"] == "-" and compute["imagenet"]["total device-h"] == "-"
    text = page.read_text()
    assert (
        f"Arm inhouse: fine-tuning {scratch_hours:.3g} device-hours, 1.0x scratch&#x27;s {scratch_hours:.3g}; with "
        f"the study&#x27;s own pre-training (0.1) {0.1 + scratch_hours:.3g} device-hours in all, "
        f"{(0.1 + scratch_hours) / scratch_hours:.1f}x scratch&#x27;s."
    ) in text
    assert "Arm imagenet: fine-tuning" in text and "its pre-training was done outside the study" in text


def test_hparams_are_selected_over_every_pretrained_arm_and_used_everywhere(tmp_path):
    # "0.01": inhouse's 2x on 50 images (20.0) beats every pre-trained run of "default" (18.0 at most) there, while
    # imagenet and scratch do better with "default": the setting is the best over the pre-trained arms.
    small = {("scratch", "50", 2): 9.0, ("imagenet", "50", 2): 13.0, ("inhouse", "50", 2): 20.0}
    small.update({("scratch", "all", 2): 30.0, ("imagenet", "all", 2): 30.0, ("inhouse", "all", 2): 30.0})
    root = make_study(tmp_path / "s", hparams={"0.01": small})
    study = load_study(root)
    assert findings.selected_hparams(study.runs, "50") == (
        "0.01",
        "best over the pre-trained arms: inhouse 2x, 20.0 bbox AP",
    )
    assert findings.selected_hparams(study.runs, "all")[0] == "default"  # imagenet's 35.0
    sentence = next(s for s in findings.hparam_findings(study.runs) if s.startswith("Train size 50"))
    assert sentence == (
        "Train size 50: hparams '0.01' are used for all 3 arms (best over the pre-trained arms: inhouse 2x, 20.0 "
        "bbox AP); it is also scratch's best (9.0 bbox AP); imagenet's own best is 'default' (15.0 bbox AP vs 13.0 "
        "with '0.01')."
    )
    # The verdict, the size points, Fig. 1 and the findings all use that setting.
    found = verdict.comparisons(study)
    assert {(c.size_label, c.pretrained.hparams, c.scratch.hparams) for c in found} == {
        ("all", "default", "default"),
        ("50", "0.01", "0.01"),
    }
    points = {p.size_label: p for p in findings.size_points(study.runs)}
    assert points["50"].hparams == "0.01" and points["50"].arms["imagenet"].name == "imagenet_50_0.01_2x"
    page = write_report(root).read_text()
    assert "[train size 50, hparams 0.01] At 2x, imagenet leads by 4.0 bbox AP (imagenet 13.0 vs scratch 9.0)." in page
    with (root / "report" / "tables" / "hparams.csv").open() as f:
        grid = {(r["train size"], r["hparams"]): r for r in csv.DictReader(f)}
    assert grid[("50", "0.01")]["used"] == "yes" and grid[("50", "default")]["used"] == "no"
    assert grid[("50", "0.01")]["best for"] == "scratch, inhouse"
    assert grid[("50", "default")]["best for"] == "imagenet"
    assert float(grid[("50", "0.01")]["inhouse bbox AP"]) == 20.0


# ---------------------------------------------------------------------------------------------------- init.json check


def _set_init(root: Path, run: str, record: dict) -> Path:
    path = root / "runs" / run / "init.json"
    path.write_text(json.dumps({"pretrain_seen": PRETRAIN_SEEN["imagenet"], **record}))
    return path


def test_a_scratch_run_that_loaded_weights_is_refused_naming_run_init_json_and_arm(tmp_path):
    # c13 (../shared/bad-inputs/t3-study): an hparams entry set init/weights, so the scratch arm's run loaded W.
    root = make_study(tmp_path / "s")
    path = _set_init(root, "scratch_all_1x", {"init": "pretrained", "weights": str(tmp_path / "imagenet.pth")})
    with pytest.raises(ScratchdetError) as error:
        write_report(root)
    message = str(error.value)
    assert f"run scratch_all_1x: {path} says init=pretrained, weights={tmp_path / 'imagenet.pth'}" in message
    assert "but the run is in arm 'scratch' (init=scratch, weights=none)" in message
    assert "scratch_all_2x" not in message  # only the run that differs
    assert not (root / "report" / "report.html").exists()  # nothing is reported


def test_a_pretrained_run_with_another_arms_weights_is_refused(tmp_path):
    root = make_study(tmp_path / "s")
    other = str(root / "pretrain" / "inhouse" / "checkpoints" / "model_0000100.pth")
    path = _set_init(root, "imagenet_50_2x", {"init": "pretrained", "weights": other})
    _set_init(root, "inhouse_all_1x", {"init": "scratch", "weights": None})
    with pytest.raises(ScratchdetError) as error:
        write_report(root)
    message = str(error.value)
    assert message.startswith(f"2 run(s) of {root} were not initialized as their arm")
    assert (
        f"run imagenet_50_2x: {path} says init=pretrained, weights={other}, but the run is in arm 'imagenet' "
        f"(init=pretrained, weights={tmp_path / 'imagenet.pth'})"
    ) in message
    assert f"run inhouse_all_1x: {root / 'runs' / 'inhouse_all_1x' / 'init.json'} says init=scratch" in message
    assert f"arm 'inhouse' (init=pretrained, weights={root / 'pretrain' / 'inhouse'})" in message


def test_weights_match_as_the_planned_file_or_a_checkpoint_of_the_planned_run(tmp_path):
    root = make_study(tmp_path / "s")
    # A symbolic link to the planned run folder, and another spelling of the planned file, name the same weights.
    (tmp_path / "link").symlink_to(root / "pretrain" / "inhouse")
    _set_init(
        root, "inhouse_50_1x", {"init": "pretrained", "weights": str(tmp_path / "link" / "checkpoints" / "m.pth")}
    )
    _set_init(root, "imagenet_50_1x", {"init": "pretrained", "weights": str(tmp_path / "." / "imagenet.pth")})
    results.check_arms(load_study(root))
    # A file beside the planned run folder is not one of its checkpoints, however alike the names.
    _set_init(root, "inhouse_50_1x", {"init": "pretrained", "weights": str(root / "pretrain" / "inhouse2" / "m.pth")})
    (run,) = [r for r in load_study(root).runs if r.name == "inhouse_50_1x"]
    assert "arm 'inhouse'" in results.init_mismatch(run)


def test_the_arms_weights_are_read_from_the_plan_without_the_hparams_overrides(tmp_path):
    # plan.json of c13: the hparams entry's init/weights follow the arm's own in every run's overrides.
    hp = ["init=pretrained", "weights=/w/hparams"]
    scratch = {"arm": "scratch", "init": "scratch", "overrides": ["a=1", "init=scratch", *hp, "m=1"]}
    pre = {"arm": "p", "init": "pretrained", "overrides": ["init=pretrained", "weights=/w/arm", *hp, "m=1"]}
    assert results.planned_weights({**scratch, "hparams_overrides": hp}, tmp_path, {}) is None
    assert results.planned_weights({**pre, "hparams_overrides": hp}, tmp_path, {}) == "/w/arm"
    study_pretrain = {"arm": "p", "init": "pretrained", "overrides": ["init=pretrained"]}
    assert results.planned_weights(study_pretrain, tmp_path, {"p": "pretrain/p"}) == str(tmp_path / "pretrain" / "p")
    assert results.planned_weights({"arm": "p", "init": "pretrained"}, tmp_path, {}) is None  # the plan does not say


def test_a_fork_is_checked_against_its_trunks_init_json(tmp_path):
    root = make_study(tmp_path / "s")
    plan = json.loads((root / "plan.json").read_text())
    entry = next(r for r in plan["runs"] if r["name"] == "scratch_50_2x")
    entry.update(trunk="trunks/scratch_50", fork_iter=20)
    (root / "runs" / "scratch_50_2x" / "init.json").unlink()
    trunk = root / "trunks" / "scratch_50"
    write_jsonl(trunk / "metrics.jsonl", run_records(8.0, 40, 50))
    (trunk / "init.json").write_text(json.dumps({"init": "pretrained", "weights": str(tmp_path / "imagenet.pth")}))
    plan["trunks"] = [{"name": "scratch_50", "path": "trunks/scratch_50"}]
    (root / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ScratchdetError, match=f"run scratch_50_2x: {trunk / 'init.json'} says init=pretrained"):
        write_report(root)


def test_one_scratch_arm_is_the_reference(tmp_path):
    root = make_study(tmp_path / "s")
    plan = json.loads((root / "plan.json").read_text())
    for entry in plan["runs"]:
        if entry["arm"] == "imagenet":
            entry.update(arm="random", init="scratch")
            (root / entry["path"] / "init.json").write_text(json.dumps({"init": "scratch", "weights": None}))
    (root / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(ScratchdetError, match=r"has 2 scratch arms \(scratch, random\)"):
        write_report(root)


def test_a_run_without_init_json_is_said_to_be_unchecked(tmp_path):
    root = make_study(tmp_path / "s")
    (root / "runs" / "inhouse_all_2x" / "init.json").unlink()
    text = html.unescape(write_report(root).read_text())
    assert (
        "Run inhouse_all_2x has no init.json (nor has its trunk): that it was initialized as arm 'inhouse' "
        "(pretrained) is not checked."
    ) in text
