import pytest
import yaml
from helpers import ROOT

from scratchdet.errors import ConfigError
from scratchdet.study.plan import plan_study
from scratchdet.study.spec import load_study_spec


def write_spec(tmp_path, **fields):
    spec = {"name": "t", "base_config": str(ROOT / "configs/paper/mask_rcnn_R50_FPN_GN_scratch_2x.yaml"),
            "output": str(tmp_path / "study"), **fields}
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
        schedules=[2, 3], train_sizes=[None, 1000],
        hparams=[{"name": "lr02", "overrides": ["solver.base_lr=0.02"]},
                 {"name": "lr04", "overrides": ["solver.base_lr=0.04"]}],
    )
    plan = plan_study(load_study_spec(spec))
    assert len(plan.runs) == 2 * 2 * 2 * 2 and len(plan.trunks) == 8
    run = next(r for r in plan.runs if r.name == "pre_1000_lr04_3x")
    assert "init=pretrained" in run.overrides and "weights=w.pkl" in run.overrides
    assert "data.train_subset=1000" in run.overrides and "solver.base_lr=0.04" in run.overrides
    assert run.trunk == "trunks/pre_1000_lr04"


def test_pretrain_arm_uses_the_study_pretraining_run(tmp_path):
    spec = write_spec(tmp_path, arms=[{"name": "pre", "init": "pretrained", "pretrain_config": "p.yaml"}],
                      schedules=[2])
    plan = plan_study(load_study_spec(spec))
    assert plan.pretrain == {"pre": "pretrain/pre"}
    assert f"weights={tmp_path / 'study' / 'pretrain' / 'pre'}" in plan.runs[0].overrides
    assert plan.trunks == [] and plan.runs[0].fork_iter is None  # a single schedule needs no trunk


@pytest.mark.parametrize(("fields", "message"), [
    ({"arms": [{"name": "a"}, {"name": "a"}]}, "arm names must be unique"),
    ({"arms": [{"name": "p", "init": "pretrained"}]}, "needs weights=PATH or pretrain_config"),
    ({"schedules": [2, 2]}, "duplicates"),
    ({"train_sizes": [0]}, "positive image counts"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_specs_name_the_problem(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        load_study_spec(write_spec(tmp_path, **fields))


@pytest.mark.parametrize("name", ["mini.yaml", "small_data_hparams.yaml"])
def test_shipped_study_specs_plan(name):
    spec = load_study_spec(ROOT / "configs" / "study" / name)
    plan = plan_study(spec)
    arms, sizes, hps = len(spec.arms), len(spec.train_sizes), len(spec.hparams)
    assert len(plan.runs) == arms * sizes * hps * len(spec.schedules)
    assert len(plan.trunks) == arms * sizes * hps
    assert plan.iterations()["fraction"] < 1.0
