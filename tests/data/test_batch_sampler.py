"""TrainingBatchSampler: rank slices of the global batch, and resumable aspect-ratio grouping."""

from __future__ import annotations

import itertools

import pytest

from scratchdet.data.samplers import GROUP_WINDOW_ITERS, TrainingBatchSampler, TrainingSampler, aspect_groups


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_one_process_batches_are_consecutive_stream_positions():
    stream = list(itertools.islice(iter(TrainingSampler(10, 3)), 12))
    assert _take(TrainingBatchSampler(10, 3, batch_size=4), 3) == [stream[0:4], stream[4:8], stream[8:12]]


def test_ranks_split_each_global_batch_in_order():
    single = _take(TrainingBatchSampler(9, 1, batch_size=6), 5)
    ranks = [_take(TrainingBatchSampler(9, 1, batch_size=6, rank=r, world_size=3), 5) for r in range(3)]
    for i in range(5):
        assert ranks[0][i] + ranks[1][i] + ranks[2][i] == single[i]
    with pytest.raises(ValueError, match="does not divide"):
        TrainingBatchSampler(9, 1, batch_size=5, world_size=2)


def test_grouping_keeps_batches_single_group_and_uses_every_position_once():
    groups = [i % 3 == 0 for i in range(50)]  # a third portrait
    batches = _take(TrainingBatchSampler(50, 0, batch_size=4, group_ids=groups), GROUP_WINDOW_ITERS * 3)
    plain = _take(TrainingBatchSampler(50, 0, batch_size=4), GROUP_WINDOW_ITERS * 3)
    flat = sorted(x for b in batches for x in b)
    assert flat == sorted(x for b in plain for x in b)  # the same stream positions, reordered within windows
    mixed = [b for b in batches if len({groups[i] for i, _ in b}) > 1]
    assert len(mixed) <= 3  # at most one per window
    plain_mixed = [b for b in plain if len({groups[i] for i, _ in b}) > 1]
    assert len(plain_mixed) > len(mixed)


def test_grouped_stream_resumes_exactly_mid_window():
    groups = [i % 2 for i in range(30)]
    full = _take(TrainingBatchSampler(30, 5, batch_size=2, group_ids=groups), 40)
    for start in (1, GROUP_WINDOW_ITERS - 1, GROUP_WINDOW_ITERS + 3):
        resumed = _take(TrainingBatchSampler(30, 5, batch_size=2, start_iter=start, group_ids=groups), 40 - start)
        assert resumed == full[start:]


def test_aspect_groups():
    assert aspect_groups([(640, 480), (480, 640), (500, 500)]) == [0, 1, 0]


def test_grouped_loader_on_the_synthetic_set_batches_one_orientation(shapes_dir, tmp_path):
    """data.aspect_ratio_grouping through build_train_loader: sizes come from the JSON (dataset.image_sizes)."""
    from helpers import MINI_CONFIG, tiny_overrides

    from scratchdet.config import load_config
    from scratchdet.data.build import build_train_dataset, build_train_loader

    cfg = load_config(
        MINI_CONFIG,
        tiny_overrides(shapes_dir, tmp_path / "r", **{"data.aspect_ratio_grouping": "true", "train.batch_size": 4}),
    )
    dataset = build_train_dataset(cfg)
    groups = aspect_groups(dataset.image_sizes())
    assert 0 < sum(groups) < len(groups)  # the synthetic set has both orientations
    loader = iter(build_train_loader(dataset, cfg))
    batches = [next(loader)[0] for _ in range(GROUP_WINDOW_ITERS)]
    orientations = [{img.shape[-1] >= img.shape[-2] for img in images} for images in batches]
    assert sum(len(o) > 1 for o in orientations) <= 1  # at most one mixed batch in the window
