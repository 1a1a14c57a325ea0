import pytest

from scratchdet.engine.schedule import build_schedule
from scratchdet.errors import ConfigError


@pytest.mark.parametrize(
    ("multiplier", "length", "drops"),
    [(1, 90_000, (30_000, 70_000)), (2, 180_000, (120_000, 160_000)), (6, 540_000, (480_000, 520_000))],
)
def test_paper_schedules_at_batch_16(multiplier, length, drops):
    s = build_schedule(multiplier, 16)
    assert s.max_iters == length
    assert s.milestones == drops
    assert s.base_lr == pytest.approx(0.02)
    assert s.warmup_iters == 500


def test_6x_scaled_to_batch_2_and_64():
    # Linear scaling: LR x B/16; length, tails and warm-up x 16/B, so images seen per LR phase are unchanged.
    small = build_schedule(6, 2)
    assert small.base_lr == pytest.approx(0.0025)
    assert small.max_iters == 4_320_000
    assert small.milestones == (3_840_000, 4_160_000)
    assert small.warmup_iters == 4000
    big = build_schedule(6, 64)
    assert big.base_lr == pytest.approx(0.08)
    assert big.max_iters == 135_000
    assert big.milestones == (120_000, 130_000)
    assert big.warmup_iters == 125


def test_lr_factor_warmup_and_drops():
    s = build_schedule(6, 16)
    assert s.lr_factor(0) == pytest.approx(1 / 3)
    assert s.lr_factor(250) == pytest.approx(1 / 3 + (2 / 3) * 0.5)
    assert s.lr_factor(500) == pytest.approx(1.0)
    assert s.lr_at(479_999) == pytest.approx(0.02)
    assert s.lr_at(480_000) == pytest.approx(0.002)
    assert s.lr_at(520_000) == pytest.approx(0.0002)


def test_every_schedule_shares_the_base_lr_trunk():
    # The fixed tails mean 2x..6x all run at the base LR until 60k before their own end (the study's shared trunk).
    for n in range(2, 7):
        s = build_schedule(n, 16)
        assert s.max_iters - s.milestones[0] == 60_000
        assert s.max_iters - s.milestones[1] == 20_000


def test_schedule_shorter_than_its_tail_is_refused():
    with pytest.raises(ConfigError, match="multiplier=0.5"):
        build_schedule(0.5, 16)
