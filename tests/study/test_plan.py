import re

import pytest
import yaml
from helpers import ROOT

from scratchdet.errors import ConfigError
from scratchdet.study.plan import plan_study, run_config
from scratchdet.study.spec import load_study_spec


def write_spec(tmp_path, **fields):
    spec = {
        "name": "t",
        "base_config": str(ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml"),
        "output": str(tmp_path / "study"),
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_paper_schedules_share_a_trunk_for_43_percent_of_the_iterations(tmp_path):
    plan = plan_study(load_study_spec(write_spec(tmp_path)))
    assert [r.name for r in plan.runs] == [f"scratch_all_{n}x" for n in range(2, 7)]
    assert [r.max_iters for r in plan.runs] == [n * 90_000 for n in range(2, 7)]
    assert [r.fork_iter for r in plan.runs] == [n * 90_000 - 60_000 for n in range(2, 7)]
    (trunk,) = plan.trunks
    assert trunk.iters == 480_000 and trunk.forks == [120_000, 210_000, 300_000, 390_000, 480_000]
    it = plan.iterations()
    assert (it["separate"], it["shared"]) == (1_800_000, 780_000)
    assert it["fraction"] == pytest.approx(0.4333, abs=1e-4)


def test_grid_expands_arms_sizes_and_hparams(tmp_path):
    spec = write_spec(
        tmp_path,
        arms=[{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": "w.pkl"}],
        schedules=[2, 3],
        train_sizes=[None, 1000],
        hparams=[
            {"name": "lr02", "overrides": ["solver.base_lr=0.02"]},
            {"name": "lr04", "overrides": ["solver.base_lr=0.04"]},
        ],
    )
    plan = plan_study(load_study_spec(spec), check_sources=False)  # w.pkl is not there: convention unresolved
    assert len(plan.runs) == 2 * 2 * 2 * 2 and len(plan.trunks) == 8
    run = next(r for r in plan.runs if r.name == "pre_1000_lr04_3x")
    assert "init=pretrained" in run.overrides and "weights=w.pkl" in run.overrides
    assert "data.train_subset=1000" in run.overrides and "solver.base_lr=0.04" in run.overrides
    assert run.trunk == "trunks/pre_1000_lr04"


def test_pretrain_arm_uses_the_study_pretraining_run(tmp_path):
    spec = write_spec(
        tmp_path, arms=[{"name": "pre", "init": "pretrained", "pretrain_config": "p.yaml"}], schedules=[2]
    )
    plan = plan_study(load_study_spec(spec), check_sources=False)  # p.yaml is not there: convention unresolved
    assert plan.pretrain == {"pre": "pretrain/pre"}
    assert f"weights={tmp_path / 'study' / 'pretrain' / 'pre'}" in plan.runs[0].overrides
    assert plan.trunks == [] and plan.runs[0].fork_iter is None  # a single schedule needs no trunk


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names must be unique"),
        ({"arms": [{"name": "p", "init": "pretrained"}]}, "needs weights=PATH or pretrain_config"),
        ({"schedules": [2, 2]}, "duplicates"),
        ({"train_sizes": [0]}, "positive image counts"),
        ({"train_sizes": [2, None, 2]}, r"train_sizes has duplicates: \[2, None, 2\]"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_specs_name_the_problem(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_study_spec(write_spec(tmp_path, **fields))


PRE_ARMS = [{"name": "scratch"}, {"name": "pre", "init": "pretrained", "weights": "w.pkl"}]


@pytest.mark.parametrize(
    ("where", "override", "key"),
    [
        ("hparams[lr].overrides", "init=pretrained", "init"),
        ("hparams[lr].overrides", "weights=/elsewhere/w.pth", "weights"),
        ("overrides", "init=scratch", "init"),
        ("overrides", "model.input_format=BGR", "model.input_format"),
        ("hparams[lr].overrides", "model={pixel_mean: [1, 2, 3]}", "model.pixel_mean"),
        ("hparams[lr].overrides", "model.stride_in_1x1=true", "model.stride_in_1x1"),
        ("overrides", "schedule.multiplier=3", "schedule.multiplier"),
        ("hparams[lr].overrides", "data.train_subset=10", "data.train_subset"),
        ("overrides", "output=/tmp/x", "output"),
    ],
)
def test_run_overrides_that_change_an_arm_or_an_axis_are_refused_naming_entry_and_key(tmp_path, where, override, key):
    """An hparams entry applied after the arm would win in silence: the run called scratch would load weights."""
    hparams = [{"name": "lr", "overrides": ["solver.base_lr=0.02"]}]
    fields = {"arms": PRE_ARMS, "hparams": hparams}
    if where == "overrides":
        fields["overrides"] = [override]
    else:
        hparams[0]["overrides"].append(override)
    message = rf"{re.escape(where)} has {re.escape(repr(override))}, which sets {re.escape(key)}; that key"
    with pytest.raises(ConfigError, match=message):
        load_study_spec(write_spec(tmp_path, **fields))


def test_other_run_overrides_stay_allowed(tmp_path):
    hparams = [{"name": "lr", "overrides": ["solver.base_lr=0.02", "pretrained.min_coverage=0.95", "seed=3"]}]
    spec = load_study_spec(write_spec(tmp_path, arms=PRE_ARMS, hparams=hparams, overrides=["train.batch_size=8"]))
    assert spec.hparams[0].overrides[1] == "pretrained.min_coverage=0.95"


@pytest.mark.parametrize("name", ["mini.yaml", "small_data_hparams.yaml"])
def test_shipped_study_specs_plan(name):
    spec = load_study_spec(ROOT / "configs" / "study" / name)
    plan = plan_study(spec, check_sources=False)  # weights/R-50-GN.pkl is not downloaded in tests
    arms, sizes, hps = len(spec.arms), len(spec.train_sizes), len(spec.hparams)
    assert len(plan.runs) == arms * sizes * hps * len(spec.schedules)
    assert len(plan.trunks) == arms * sizes * hps
    assert plan.iterations()["fraction"] < 1.0


def test_cascade_schedules_share_the_trunk_only_until_their_late_switch(tmp_path):
    """Paper: cascade heads for the last 270k iterations, so 6x switches at 270k and 9x at 540k, before their first
    LR drops (480k, 750k); 3x (270k long) has cascade heads from iteration 0 and shares nothing."""
    base = ROOT / "configs" / "paper" / "cascade_mask_rcnn_R50_FPN_GN_scratch_9x_trainaug.yaml"
    spec = write_spec(tmp_path, base_config=str(base), schedules=[3, 6, 9])
    plan = plan_study(load_study_spec(spec))
    assert [(r.max_iters, r.fork_iter, r.trunk) for r in plan.runs] == [
        (270_000, None, None),
        (540_000, 270_000, "trunks/scratch_all"),
        (810_000, 540_000, "trunks/scratch_all"),
    ]
    (trunk,) = plan.trunks
    assert trunk.iters == 540_000 and trunk.forks == [270_000, 540_000]
    assert "schedule.multiplier=9" in trunk.overrides


def test_study_data_root_reaches_every_run_over_the_base_configs_paths(tmp_path):
    # The base config (configs/paper/...) sets the four data.train/val paths; data_root must still be what runs read.
    spec = load_study_spec(write_spec(tmp_path, data_root="/shapes", schedules=[2, 3]))
    with pytest.warns(UserWarning, match="data.root=/shapes"):
        plan = plan_study(spec)
    for run in plan.runs:
        with pytest.warns(
            UserWarning,
            match=r"data.root=/shapes is given on the command line and wins: "
            r"data.train.json=datasets/coco/annotations/instances_train2017.json",
        ):
            cfg = run_config(spec.base_config, run.overrides, tmp_path / run.name)
        assert (cfg.data.train.json, cfg.data.val.images) == ("/shapes/instances_train.json", "/shapes/val")


def test_study_data_root_on_the_command_line_drops_the_files_data_path_overrides(tmp_path):
    spec_path = write_spec(
        tmp_path,
        data_root="/in_file",
        schedules=[2],
        overrides=["data.val.json=/v.json", "train.batch_size=8"],
        hparams=[{"name": "a", "overrides": ["data.train.images=/imgs", "solver.base_lr=0.01"]}],
    )
    # Both in the file: the explicit path wins over data_root for its own key (the documented rule).
    kept = load_study_spec(spec_path)
    assert kept.overrides == ["data.val.json=/v.json", "train.batch_size=8"]
    with pytest.warns(
        UserWarning,
        match=r"data_root=/cli is given on the command line and wins: dropped the run "
        r"overrides \['overrides: data.val.json=/v.json', 'hparams\[a\].overrides: "
        r"data.train.images=/imgs'\]",
    ):
        spec = load_study_spec(spec_path, ["data_root=/cli"])
    assert spec.overrides == ["train.batch_size=8"] and spec.hparams[0].overrides == ["solver.base_lr=0.01"]
    with pytest.warns(UserWarning, match="data.root=/cli"):
        (run,) = plan_study(spec).runs
        cfg = run_config(spec.base_config, run.overrides, tmp_path / "r")
    assert (cfg.data.val.json, cfg.data.train.images, cfg.train.batch_size) == (
        "/cli/instances_val.json",
        "/cli/train",
        8,
    )


def test_study_data_root_and_a_data_root_override_in_one_file_are_refused(tmp_path):
    spec_path = write_spec(tmp_path, data_root="/a", overrides=["data.root=/b"])
    with pytest.raises(ConfigError, match=r"data_root=/a and the run override 'data.root=/b' both set data.root"):
        load_study_spec(spec_path)


def test_seed_replicates_are_runs_that_differ_only_in_seed_with_their_own_trunks(tmp_path):
    spec = write_spec(tmp_path, arms=PRE_ARMS, schedules=[2, 3], seeds=[0, 1, 2])
    plan = plan_study(load_study_spec(spec), check_sources=False)
    assert len(plan.runs) == 2 * 2 * 3 and len(plan.trunks) == 2 * 3
    assert [r.name for r in plan.runs if r.arm == "scratch" and r.schedule == 2] == [
        "scratch_all_s0_2x",
        "scratch_all_s1_2x",
        "scratch_all_s2_2x",
    ]
    by_seed = {r.seed: r for r in plan.runs if r.arm == "pre" and r.schedule == 3}
    assert by_seed[1].trunk == "trunks/pre_all_s1" and "seed=1" in by_seed[1].overrides
    # Everything but the seed is the same run.
    assert [o for o in by_seed[0].overrides if o != "seed=0"] == [o for o in by_seed[2].overrides if o != "seed=2"]


def test_without_seeds_the_plan_is_unchanged(tmp_path):
    plan = plan_study(load_study_spec(write_spec(tmp_path, schedules=[2])), check_sources=False)
    assert [r.name for r in plan.runs] == ["scratch_all_2x"] and plan.runs[0].seed is None
    assert not any(o.startswith("seed=") for o in plan.runs[0].overrides)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"seeds": [0, 0]}, r"seeds has duplicates: \[0, 0\]"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, 1], "overrides": ["seed=3"]}, r"overrides has 'seed=3', which sets seed; that key is set by"),
    ],
)
def test_bad_seed_axes_are_refused(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_study_spec(write_spec(tmp_path, **fields))
