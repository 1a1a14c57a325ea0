"""The parts both training loops are built from (engine/loop.py)."""

import signal

import pytest
import torch

from scratchdet.distributed import SINGLE
from scratchdet.engine.loop import LossWindow, SampleCounter, due, next_batch, preempt, stop_if_not_finite
from scratchdet.engine.preemption import StopRequest
from scratchdet.errors import DataError, Preempted, TrainingError


def test_loss_window_means_and_reset():
    window = LossWindow()
    window.add({"loss": torch.tensor(1.0), "loss_box": torch.tensor(0.5)})
    window.add({"loss": torch.tensor(3.0), "loss_box": torch.tensor(1.5)})
    window.data_time = 0.4
    record = window.flush(SINGLE, torch.device("cpu"))
    assert record["loss"] == pytest.approx(2.0) and record["loss_box"] == pytest.approx(1.0)
    assert record["data_time"] == pytest.approx(0.2) and record["time_per_iter"] >= 0
    assert window.iters == 0 and window.sums == {} and window.data_time == 0.0


def test_loss_window_does_not_alias_the_added_tensor():
    window, value = LossWindow(), torch.tensor(1.0)
    window.add({"loss": value})
    window.add({"loss": torch.tensor(2.0)})
    assert float(value) == 1.0  # the first value is copied, not summed into in place


def test_sample_counter_sums_pending_into_seen():
    counter = SampleCounter({"images": 10, "instances": 20, "pixels": 30})
    counter.add(2, 5, 100)
    counter.add(2, 1, 100)
    assert counter.seen["images"] == 10  # not yet synced
    assert counter.sync(SINGLE) == {"images": 14, "instances": 26, "pixels": 230}
    assert counter.sync(SINGLE) == {"images": 14, "instances": 26, "pixels": 230}


@pytest.mark.parametrize(
    ("done", "period", "extra", "expected"),
    [
        (10, 5, (), True),
        (11, 5, (), False),
        (20, 0, (), True),
        (7, 0, (), False),
        (7, None, (7,), True),
    ],
)
def test_due(done, period, extra, expected):
    assert due(done, period, 20, extra) is expected


def test_next_batch_alone_reraises_the_load_error():
    def loader():
        raise DataError("image 7 unreadable")
        yield

    with pytest.raises(DataError, match="image 7"):
        next_batch(loader(), SINGLE, StopRequest(), 0)


def test_next_batch_reports_a_stop_request():
    stop = StopRequest()
    stop.signum = signal.SIGTERM
    batch, stopping, waited = next_batch(iter([("images", "targets")]), SINGLE, stop, 3)
    assert batch == ("images", "targets") and stopping
    assert 0.0 <= waited < 1.0  # seconds spent in the loader's next(): the caller adds it to its loss window


def test_next_batch_returns_the_loaders_wait():
    import time

    def slow():
        time.sleep(0.05)
        yield "batch"

    _, _, waited = next_batch(slow(), SINGLE, StopRequest(), 0)
    assert waited >= 0.05


def test_preempt_saves_records_and_raises(tmp_path):
    saved, records = [], []

    class Metrics:
        def write(self, record):
            records.append(record)

    class Progress:
        def close(self):
            pass

    stop = StopRequest()
    stop.signum = signal.SIGINT
    with pytest.raises(Preempted) as info:
        preempt(stop, 12, lambda it: saved.append(it) or tmp_path / "model_0000012.pth", Metrics(), Progress())
    assert saved == [12] and records == [{"type": "preempted", "iter": 12, "signal": int(signal.SIGINT)}]
    assert info.value.iteration == 12 and info.value.checkpoint.endswith("model_0000012.pth")


def test_stop_if_not_finite_names_the_iteration_and_batch():
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 4: loss=nan \(ids 1, 2\)\. lower the LR"):
        stop_if_not_finite(
            SINGLE, torch.device("cpu"), torch.tensor(float("nan")), 4, lambda: "loss=nan (ids 1, 2)", "lower the LR"
        )
