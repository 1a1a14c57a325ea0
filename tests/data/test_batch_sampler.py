"""TrainingBatchSampler (issue 5): rank slices of the global batch, and resumable aspect-ratio grouping."""

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
