"""The verdict's noise (evaluation/bootstrap.py): the two-level bootstrap over seeds and validation images, tested on
synthetic per-image score tables with a known generating process, and the per-image table of real detections checked
against COCOeval itself.

The generating process: run (arm, seed) scores image i as mu_arm + d_i + u_(arm,seed) + e_(arm,seed,i): d the image's
difficulty (shared by every run: it cancels in the paired gap), u the seed's effect on the whole run (training noise),
e the run's per-image noise (test-set noise). The true gap is mu_pretrained - mu_scratch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from helpers import moved_detections

from scratchdet.evaluation.bootstrap import (
    ScoreTable,
    _evaluated,
    _resampled_ap,
    image_draws,
    match_table,
    paired_bootstrap,
    seeds_to_resolve,
    t_quantile,
    two_level_gap,
)
from scratchdet.report import verdict

MARGIN = 0.5
N_BOOT = 300


def simulate(gap: float, *, studies: int, seeds: int, seed_sd: float, image_sd: float, images: int, seed: int = 0):
    """`studies` simulated studies of two arms; yields each one's `GapInterval` through the code the report uses
    (score tables -> shared image draws -> two_level_gap)."""
    rng = np.random.default_rng(seed)
    for k in range(studies):
        difficulty = rng.normal(0, 8, images)
        tables = {
            arm: [ScoreTable(30 + mu + difficulty + rng.normal(0, seed_sd) + rng.normal(0, image_sd, images))
                  for _ in range(seeds)]
            for arm, mu in (("scratch", 0.0), ("pretrained", gap))
        }  # fmt: skip
        draws = image_draws(images, N_BOOT, seed=k)
        rows = {arm: np.stack([t.aps(draws) for t in ts]) for arm, ts in tables.items()}
        full = {arm: np.array([t.scores.mean() for t in ts]) for arm, ts in tables.items()}
        yield two_level_gap(
            rows["scratch"], rows["pretrained"], full["scratch"], full["pretrained"], images=images, seed=k
        )


def rates(gap: float, **kw) -> dict[str, float]:
    found = list(simulate(gap, **kw))
    return {
        "seed-aware beyond noise": np.mean([iv.beyond_noise for iv in found]),
        "image-only beyond noise": np.mean([iv.image_only_beyond_noise() for iv in found]),
        "seed-aware within margin": np.mean([verdict.equivalence(iv.ci95, MARGIN) == "within" for iv in found]),
        "image-only within margin": np.mean([verdict.equivalence(iv.image_ci95, MARGIN) == "within" for iv in found]),
    }


# Three seeds per arm (the demo's study), a seed SD of 0.3 AP (COCO's is 0.1-0.3, the issue), 100 validation images.
DIFFERENCE = {"studies": 300, "seeds": 3, "seed_sd": 0.3, "image_sd": 2.0, "images": 100}
# Equivalence needs an interval narrower than the margin: five seeds, a seed SD of 0.15, 200 images.
EQUIVALENCE = {"studies": 300, "seeds": 5, "seed_sd": 0.15, "image_sd": 2.0, "images": 200}


def test_with_no_true_gap_the_seed_aware_interval_rarely_claims_one_and_the_image_only_one_often_does():
    found = rates(0.0, **DIFFERENCE)
    print(f"true gap 0, {DIFFERENCE}: {found}")
    assert found["seed-aware beyond noise"] <= 0.06  # about the 5% a 95% interval allows (300 studies: +/-2.5%)
    assert found["image-only beyond noise"] >= 0.15  # training noise ignored: a claim in about one study in four
    assert found["image-only beyond noise"] >= 3 * max(found["seed-aware beyond noise"], 0.01)


def test_a_true_gap_of_twice_the_margin_is_found_in_most_studies():
    found = rates(2 * MARGIN, **DIFFERENCE)
    print(f"true gap {2 * MARGIN}, {DIFFERENCE}: {found}")
    assert found["seed-aware beyond noise"] >= 0.6
    assert found["seed-aware within margin"] == 0


def test_equivalence_is_found_with_no_gap_and_rarely_claimed_at_the_margin():
    at_zero = rates(0.0, **EQUIVALENCE)
    at_margin = rates(MARGIN, **EQUIVALENCE, seed=1)
    at_double = rates(2 * MARGIN, **EQUIVALENCE, seed=2)
    print(f"{EQUIVALENCE}: gap 0 {at_zero}; gap m {at_margin}; gap 2m {at_double}")
    assert at_zero["seed-aware within margin"] >= 0.6
    # At the margin itself the claim "within +/-m" is false: a 95% interval inside [-m, m] is two one-sided tests
    # at 2.5%, so it is made in at most about 2.5% of the studies.
    assert at_margin["seed-aware within margin"] <= 0.05
    assert at_double["seed-aware within margin"] == 0 and at_double["seed-aware beyond noise"] >= 0.9
    assert at_margin["image-only within margin"] >= at_margin["seed-aware within margin"]


def test_equivalence_words_for_each_side_of_the_margin():
    assert verdict.equivalence((-0.3, 0.4), 0.5) == "within"
    assert verdict.equivalence((0.6, 1.4), 0.5) == "pretrained"
    assert verdict.equivalence((-1.4, -0.6), 0.5) == "scratch"
    assert verdict.equivalence((0.2, 0.9), 0.5) == "inconclusive"  # beyond noise, but not beyond the margin
    assert verdict.equivalence((-0.9, 0.1), 0.5) == "inconclusive"


def test_one_seed_per_arm_gives_the_image_only_interval_and_says_training_noise_was_not_measured():
    (iv,) = simulate(1.0, studies=1, seeds=1, seed_sd=0.3, image_sd=2.0, images=100)
    assert iv.ci95 == iv.image_ci95 and not iv.training_measured and iv.df == float("inf")
    words = verdict.noise_words(iv)
    assert "over 100 validation images; training noise not measured: one seed per arm" in words
    assert words.startswith(("beyond test-set noise (95% interval", "within test-set noise (95% interval"))
    (three,) = simulate(1.0, studies=1, seeds=3, seed_sd=0.3, image_sd=2.0, images=100)
    words = verdict.noise_words(three)
    assert "training and test-set noise (95% interval" in words and "over 3 seeds per arm and 100 validation" in words
    assert "test-set noise alone: " in words
    assert three.ci95[1] - three.ci95[0] > three.image_ci95[1] - three.image_ci95[0]


def test_seeds_needed_to_resolve_a_gap():
    # n = ceil(2 sd^2 / ((gap / 1.96)^2 - se^2)): gap 0.6, image SE 0.1, seed SD 0.3 -> 2 * 0.09 / (0.0937 - 0.01).
    assert seeds_to_resolve(0.6, 0.1, 0.3) == 3
    assert seeds_to_resolve(-0.6, 0.1, 0.3) == 3
    assert seeds_to_resolve(0.15, 0.1, 0.3) is None  # the images' noise alone covers a 0.15 gap
    (iv,) = simulate(0.8, studies=1, seeds=1, seed_sd=0.0, image_sd=2.0, images=100)
    words = verdict.noise_words(iv, spread=verdict.results.SeedSpread(0.25, "docs/RESULTS.md"))
    expected = seeds_to_resolve(iv.delta, iv.image_se, 0.25)
    needed = f"about {expected} seeds per arm" if expected else "no number of seeds would resolve"
    assert "at the seed spread measured in docs/RESULTS.md (SD 0.25 AP) " + needed in words
    assert "n = 2 SD^2 / ((gap / 1.96)^2 - SE^2)" in words


def test_t_quantiles_match_the_tables():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042, float("inf"): 1.960}
    for df, value in table.items():
        assert t_quantile(df) == pytest.approx(value, abs=0.005)
    assert t_quantile(2.7) == t_quantile(2)  # rounded down: wider


# ------------------------------------------------------------------------------------------ the table vs COCOeval


def test_the_per_image_table_reproduces_cocoevals_ap_on_every_resample(val_set):
    results = moved_detections(val_set, 0.15, seed=0, false_positives=True)
    evaluator = _evaluated(val_set.coco, copy.deepcopy(results), "bbox", val_set.image_ids, None)
    table = match_table(evaluator)
    draws = image_draws(len(val_set.image_ids), 40, seed=5)
    coco = np.array([_resampled_ap(evaluator, row) for row in draws])
    assert np.allclose(table.aps(draws), coco, atol=1e-9)
    assert table.ap(np.arange(len(val_set.image_ids))) == pytest.approx(_resampled_ap(evaluator, np.arange(8)))


def test_with_one_seed_the_two_level_interval_is_the_paired_bootstraps(val_set):
    good, bad = (
        moved_detections(val_set, 0.05, seed=1, false_positives=True),
        moved_detections(val_set, 0.25, seed=2, false_positives=True),
    )
    ids = val_set.image_ids
    reference = paired_bootstrap(val_set.coco, good, bad, "bbox", ids, n_boot=100, seed=3)
    tables = [match_table(_evaluated(val_set.coco, copy.deepcopy(r), "bbox", ids, None)) for r in (good, bad)]
    draws = image_draws(len(ids), 100, seed=3)
    full = [t.ap(np.arange(len(ids))) for t in tables]
    iv = two_level_gap(tables[0].aps(draws)[None], tables[1].aps(draws)[None], full[:1], full[1:], images=len(ids))
    assert [round(v, 3) for v in iv.ci95] == reference["delta_ci95"]
    assert round(iv.delta, 3) == reference["delta"] and iv.n_boot == reference["n_boot"]


def test_the_seed_aware_interval_is_wider_than_the_image_only_one_by_what_the_seed_spread_says():
    # SE^2 ~ image SE^2 + sum over arms of s^2 / n (the two levels' variances add, `two_level_gap`): measured
    # ratios 0.85 to 1.18 over 60 simulated studies (seed SDs 0, 0.3 and 1.0 AP), the rest the replicates' own noise.
    ratios = []
    for sd in (0.0, 0.3, 1.0):
        for iv in simulate(1.0, studies=20, seeds=3, seed_sd=sd, image_sd=2.0, images=100, seed=7):
            seed_part = sum(s**2 / n for s, n in zip(iv.seed_sd, iv.seeds, strict=True))
            ratios.append(iv.se**2 / (iv.image_se**2 + seed_part))
            assert iv.ci95[1] - iv.ci95[0] > iv.image_ci95[1] - iv.image_ci95[0]
    print(f"SE^2 / (image SE^2 + seed part): {min(ratios):.2f} to {max(ratios):.2f}")
    assert min(ratios) >= 0.8 and max(ratios) <= 1.25
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.05)
