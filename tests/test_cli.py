"""The README's commands, end to end through the CLI entry point."""

import json

from helpers import MINI_CONFIG, tiny_overrides

from scratchdet.cli import main


def test_synth_train_eval(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--train-images",
                "6",
                "--val-images",
                "3",
                "--min-side",
                "64",
                "--max-side",
                "80",
            ]
        )
        == 0
    )
    assert (data / "instances_train.json").is_file() and len(list((data / "val").glob("*.png"))) == 3

    run = tmp_path / "run"
    assert main(["train", str(MINI_CONFIG), *tiny_overrides(data, run, **{"train.max_iters": 1})]) == 0
    assert "run folder" in capsys.readouterr().out

    trained = (run / "eval" / "iter_0000001.json").read_text()
    assert main(["eval", str(run)]) == 0  # the run's own settings: the training record's name and numbers
    printed = capsys.readouterr().out
    report = json.loads((run / "eval" / "iter_0000001.json").read_text())
    assert str(run / "eval" / "iter_0000001.json") in printed and report["checkpoint"].endswith("model_0000001.pth")
    assert report["bbox"] == json.loads(trained)["bbox"] and report["settings_differ"] == []

    assert main(["eval", str(run), "eval.max_images=2", "eval.coco_backend=faster_coco_eval"]) == 0
    other = run / "eval" / "iter_0000001_coco_backend-faster_coco_eval_max_images-2.json"
    assert str(other) in capsys.readouterr().out  # beside the training record, named by how it differs
    report = json.loads(other.read_text())
    assert report["images"] == 2 and report["settings_differ"] == [
        "eval.coco_backend=faster_coco_eval",
        "eval.max_images=2",
    ]
    left = json.loads((run / "eval" / "iter_0000001.json").read_text())  # as training wrote it (all 3 val images)
    assert left["images"] == json.loads(trained)["images"] == 3 and left["bbox"] == json.loads(trained)["bbox"]


def test_data_check_prints_the_cleaning_summary(shapes_dir, capsys):
    assert main(["data", "check", str(shapes_dir / "instances_train.json"), "--images", str(shapes_dir / "train")]) == 0
    out = capsys.readouterr().out
    assert "crowd_excluded" in out and "as a training split" in out and "as an evaluation split" in out


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file") and "Traceback" not in err
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no config.yaml" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    assert main(["data", "check", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_commands_other_than_train_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["pretrain", "configs/pretrain/mini_R18_GN_synth.yaml"], ["study", "configs/study/mini.yaml"]):
        assert main(argv) == 2
        assert "runs in one process, but WORLD_SIZE=2" in capsys.readouterr().err
