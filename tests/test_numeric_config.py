"""Edge values of every numeric key (issue 24, kind 8): one table per schema (detection config, pre-training config,
study spec) lists each numeric key with its range, every numeric key is in its table, and a value outside the range
(0, a negative number, NaN, infinity) is a ConfigError naming the key at load, never a ZeroDivisionError or a silently
empty evaluation later. `scratchdet data check`'s numeric options likewise."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from helpers import MINI_CONFIG, ROOT

from scratchdet.cli import main
from scratchdet.config import DETECTION_NUMBER_RULES, Config, NumberRule, load_config
from scratchdet.engine.checkpoint import planned_checkpoints
from scratchdet.engine.loop import due
from scratchdet.errors import ConfigError
from scratchdet.pretrain.config import PRETRAIN_NUMBER_RULES, PretrainConfig, load_pretrain_config
from scratchdet.study.spec import SPEC_NUMBER_RULES, StudySpec, validate_spec

PRETRAIN_CONFIG = ROOT / "configs" / "pretrain" / "mini_R18_GN_synth.yaml"


def _numeric_keys(schema: type, prefix: str = "") -> set[str]:
    """Dotted names of every field of a dataclass schema whose type holds an int or a float (lists included)."""
    keys = set()
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(hint):
            keys |= _numeric_keys(hint, f"{prefix}{f.name}.")
            continue
        text = str(hint)
        if ("int" in text or "float" in text) and "bool" not in text.replace("bool |", ""):
            keys.add(prefix + f.name)
    return keys


@pytest.mark.parametrize(
    ("schema", "rules"),
    [(Config, DETECTION_NUMBER_RULES), (PretrainConfig, PRETRAIN_NUMBER_RULES), (StudySpec, SPEC_NUMBER_RULES)],
)
def test_every_numeric_key_has_a_range(schema, rules):
    keys = _numeric_keys(schema)
    assert keys - set(rules) == set(), "numeric keys without a NumberRule"
    assert set(rules) - keys == set(), "rules for keys the schema does not have"


def _outside(rule: NumberRule) -> list[float]:
    """Values just outside `rule` (and NaN), for an int or float key."""
    values = [math.nan]
    if rule.low is not None:
        values.append(rule.low if rule.low_open else rule.low - 1)
    if rule.high is not None:
        values.append(rule.high if rule.high_open else rule.high + 1)
    return values


def _override(key: str, value: float, default) -> str:
    number = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
    if isinstance(default, int) and not isinstance(default, bool) and number != "nan" and float(value).is_integer():
        number = str(int(value))
    if isinstance(default, list):
        inner = f"[{number}]" if not (default and isinstance(default[0], list)) else f"[[{number},1,1,1]]"
        return f"{key}={inner}"
    return f"{key}={number}"


def _default(cfg, key):
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


# One family per section: data.*, model.*, solver.*, schedule.*, train.*, eval.*, the top level and pretrained.*.
@pytest.mark.parametrize("family", ["data", "model", "solver", "schedule", "train", "eval", "top"])
def test_detection_keys_outside_their_range_are_refused_naming_the_key(family):
    base = load_config(MINI_CONFIG, ["output=unused"])
    keys = [k for k in DETECTION_NUMBER_RULES if (k.split(".")[0] if "." in k else "top") == family]
    keys += ["pretrained.min_coverage"] if family == "top" else []
    assert keys
    for key in keys:
        for value in _outside(DETECTION_NUMBER_RULES[key]):
            override = _override(key, value, _default(base, key))
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                load_config(MINI_CONFIG, ["output=unused", override])


def test_pretrain_keys_outside_their_range_are_refused_naming_the_key():
    base = load_pretrain_config(PRETRAIN_CONFIG, ["output=unused"])
    for key, rule in PRETRAIN_NUMBER_RULES.items():
        for value in _outside(rule):
            default = _default(base, key)
            if default is None:  # train.iters: set only with train.epochs=null
                extra = ["train.epochs=null"] if key == "train.iters" else []
                default = 1
            else:
                extra = []
            override = _override(key, value, default)
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                load_pretrain_config(PRETRAIN_CONFIG, ["output=unused", override, *extra])


def test_spec_keys_outside_their_range_are_refused_naming_the_key():
    for key, rule in SPEC_NUMBER_RULES.items():
        for value in _outside(rule):
            spec = StudySpec(name="s", base_config=str(MINI_CONFIG), output="out")
            *parents, name = key.split(".")
            owner = spec
            for parent in parents:
                owner = getattr(owner, parent)
            listed = isinstance(getattr(owner, name), list) or key == "seeds"  # seeds: a list or null
            setattr(owner, name, [value] if listed else value)
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                validate_spec(spec, "spec.yaml")


def test_periods_accept_zero_as_only_at_the_end():
    cfg = load_config(
        MINI_CONFIG, ["output=unused", "train.checkpoint_period=0", "train.log_period=0", "eval.period=0"]
    )
    assert (cfg.train.checkpoint_period, cfg.train.log_period, cfg.eval.period) == (0, 0, 0)
    # The loop's rule and the free-space plan agree: only the end (and the extra checkpoints).
    assert [i for i in range(1, 11) if due(i, 0, 10, (4,))] == [4, 10]
    assert planned_checkpoints(0, 10, 0, [4]) == 2
    assert planned_checkpoints(0, 10, 3, []) == 4  # 3, 6, 9 and the end


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_max_images_must_be_a_count_or_null(value):
    with pytest.raises(ConfigError, match=r"eval\.max_images.*>= 1 \(null = every image\)"):
        load_config(MINI_CONFIG, ["output=unused", f"eval.max_images={value}"])
    assert load_config(MINI_CONFIG, ["output=unused", "eval.max_images=null"]).eval.max_images is None


@pytest.mark.parametrize(
    "option", [["--workers", "-1"], ["--workers", "0"], ["--max-image-pixels", "0"], ["--min-size-test", "-5"]]
)
def test_data_check_options_outside_their_range_exit_2_naming_the_option(tmp_path, capsys, option):
    (tmp_path / "a.json").write_text('{"images": [], "annotations": [], "categories": []}')
    assert main(["data", "check", str(tmp_path / "a.json"), *option]) == 2
    assert f"{option[0]}={option[1]}" in capsys.readouterr().err
