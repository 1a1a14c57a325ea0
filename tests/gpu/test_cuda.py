"""The CUDA paths, on a real GPU: training under each precision (fp32, bf16 autocast, fp16 autocast with the grad
scaler) and channels_last learns what it learns on CPU, evaluation on CUDA scores what evaluation on CPU scores,
resume on CUDA continues the same image stream, RoIAlign on CUDA is torchvision's, and SyncBN's pooled-statistics
path runs over an NCCL process group.

Marked `gpu`, and skipped where no CUDA device is visible (every CI machine of this project): run them with
`python -m pytest -m gpu tests/gpu` on a GPU machine (benchmarks/gpu_check.sh does, with the GPU benchmarks).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import MINI_CONFIG, tiny_overrides
from test_learning import learning_config

from scratchdet.config import load_config
from scratchdet.engine import trainer
from scratchdet.engine.checkpoint import latest_checkpoint, load_checkpoint
from scratchdet.engine.metrics import read_metrics
from scratchdet.engine.run_eval import evaluate_run
from scratchdet.modeling import sync_bn
from scratchdet.modeling.roi_align import MultiScaleRoIAlign

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device is visible"),
]

# What the learning-test recipe reaches on CPU in fp32 (docs/RESULTS.md, "Learning test": 58.7 bbox AP, GN) is the
# reference; the CPU test asserts >= 50. A precision that loses more than that band is broken, not noisy.
LEARNED_BBOX_AP = 50.0


def _learn_on_cuda(tmp_path, **overrides) -> tuple[object, dict]:
    """The learning test's recipe (tests/test_learning.py) trained on CUDA; its config and last evaluation."""
    cfg = learning_config(tmp_path, "GN", ("train.device=cuda", *(f"{k}={v}" for k, v in overrides.items())))
    trainer.train(cfg)
    return cfg, read_metrics(cfg.output, "eval")[-1]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"train.amp": "bf16"},
        {"train.amp": "fp16"},
        {"train.amp": "bf16", "train.channels_last": "true"},
    ],
    ids=["fp32", "bf16", "fp16-scaler", "bf16-channels_last"],
)
def test_cuda_training_learns_as_on_cpu(tmp_path, overrides):
    cfg, report = _learn_on_cuda(tmp_path, **overrides)
    losses = [r["loss"] for r in read_metrics(cfg.output, "train")]
    assert losses[-1] < 0.5 * losses[0], losses
    assert report["status"] == "ok" and report["bbox"]["AP"] >= LEARNED_BBOX_AP, report["bbox"]
    state = load_checkpoint(latest_checkpoint(Path(cfg.output) / "checkpoints"))
    assert ("scaler" in state) == (overrides.get("train.amp") == "fp16")
    assert json.loads((Path(cfg.output) / "env.json").read_text())["device"].startswith("cuda")


def test_cuda_evaluation_scores_as_cpu_evaluation(tmp_path):
    """The same trained checkpoint evaluated on CUDA and on CPU: the same AP within float noise (kernels differ, so
    boxes differ in the last bits and a few near-tied detections can swap ranks)."""
    cfg, on_train = _learn_on_cuda(tmp_path)
    on_cuda = evaluate_run(cfg.output, ["train.device=cuda"])
    on_cpu = evaluate_run(cfg.output, ["train.device=cpu"])
    assert on_cuda["bbox"]["AP"] == pytest.approx(on_train["bbox"]["AP"], abs=0.1)
    for task in ("bbox", "segm"):
        assert on_cuda[task]["AP"] == pytest.approx(on_cpu[task]["AP"], abs=1.0), (task, on_cuda, on_cpu)


def test_cuda_resume_is_exact_with_deterministic_kernels(shapes_dir, tmp_path):
    """train.deterministic on CUDA: 2 + 2 iterations with a resume between equal 4 in one go, bit for bit, and so
    does a second uninterrupted run. (Without the switch they differ from the second iteration on: atomics in
    backward kernels change the last bits, and NMS / top-k / RoI sampling turn that into other proposals.)"""
    common = {
        "train.device": "cuda",
        "train.deterministic": "true",
        "train.record_image_ids": "true",
        "train.checkpoint_period": 2,
    }

    def run(out, max_iters, **extra):
        overrides = tiny_overrides(shapes_dir, out, **common, **extra, **{"train.max_iters": max_iters})
        trainer.train(load_config(MINI_CONFIG, overrides))

    run(tmp_path / "whole", 4)
    run(tmp_path / "again", 4)
    run(tmp_path / "split", 2)
    run(tmp_path / "split", 4, resume="true")
    assert not torch.are_deterministic_algorithms_enabled()  # scoped to the runs
    names = ("whole", "again", "split")
    ids = {name: [r["image_ids"] for r in read_metrics(tmp_path / name, "batch")] for name in names}
    losses = {name: [r["loss"] for r in read_metrics(tmp_path / name, "train")] for name in names}
    assert ids["whole"] == ids["again"] == ids["split"] and len(ids["whole"]) == 4
    assert losses["whole"] == losses["again"] == losses["split"], losses
    models = {n: load_checkpoint(latest_checkpoint(tmp_path / n / "checkpoints"))["model"] for n in names}
    for name, value in models["whole"].items():
        torch.testing.assert_close(models["again"][name], value, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(models["split"][name], value, rtol=0, atol=0, msg=name)


def test_roi_align_on_cuda_is_torchvisions(tmp_path):
    """On CUDA the pooler keeps torchvision's kernels (the sparse backward is for CPU): the same outputs as
    torchvision's MultiScaleRoIAlign and input gradients within float tolerance (atomics), and both match the
    CPU computation (the sparse backward) within float tolerance."""
    from torchvision.ops import MultiScaleRoIAlign as StockPooler

    g = torch.Generator().manual_seed(0)
    features = {"0": torch.randn(2, 8, 32, 40, generator=g), "1": torch.randn(2, 8, 16, 20, generator=g)}
    boxes = [torch.tensor([[1.0, 2.0, 60.0, 50.0], [10.0, 10.0, 20.5, 30.0]]), torch.tensor([[0.0, 0.0, 127.0, 100.0]])]
    sizes = [(128, 160), (128, 160)]
    results = {}
    for where, cls in (("cuda", MultiScaleRoIAlign), ("cuda_stock", StockPooler), ("cpu", MultiScaleRoIAlign)):
        device = "cpu" if where == "cpu" else "cuda"
        feats = {k: v.to(device).requires_grad_(True) for k, v in features.items()}
        out = cls(["0", "1"], 7, 2)(feats, [b.to(device) for b in boxes], sizes)
        (out * torch.arange(out.numel(), device=device).view_as(out).sin()).sum().backward()
        results[where] = (out.cpu(), [feats[k].grad.cpu() for k in ("0", "1")])
    torch.testing.assert_close(results["cuda"][0], results["cuda_stock"][0], rtol=0, atol=0)
    for a, b in zip(results["cuda"][1], results["cuda_stock"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results["cuda"][0], results["cpu"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(results["cuda"][1], results["cpu"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def nccl_group(tmp_path):
    """A one-process NCCL group (rank 0 of 1) for the duration of a test."""
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    torch.cuda.set_device(0)
    yield
    dist.destroy_process_group()


def test_sync_bn_pooled_path_over_nccl_equals_batch_norm(nccl_group, monkeypatch):
    """SyncBatchNorm2d's all-reduce path (forced on: over one process the all-reduces are sums over itself) gives
    BatchNorm2d's outputs, gradients and running statistics on the GPU, its all-reduces going through NCCL. The
    fused nn.SyncBatchNorm the trainer converts to on CUDA is checked for the conversion only: with one process
    it runs plain batch norm (its pooled path needs two GPUs)."""
    x = torch.randn(4, 6, 9, 11, generator=torch.Generator().manual_seed(3), dtype=torch.float64).cuda() * 2 + 1
    reference = torch.nn.BatchNorm2d(6).double().cuda()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)

    def step(module):
        inp = x.clone().requires_grad_(True)
        y = module(inp)
        (y.relu() ** 2).sum().backward()
        return y.detach(), inp.grad, module.weight.grad, module.running_mean.clone(), module.running_var.clone()

    ours = sync_bn.SyncBatchNorm2d(6).double().cuda()
    ours.load_state_dict(reference.state_dict())
    fused = torch.nn.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(sync_bn.SyncBatchNorm2d(6))).double()
    fused = fused.cuda()
    fused[0].load_state_dict(reference.state_dict())
    assert isinstance(fused[0], torch.nn.SyncBatchNorm)
    expected = step(reference)
    monkeypatch.setattr(sync_bn, "_world_size", lambda: 2)  # take the pooled path; NCCL's sum over 1 rank is x
    got_ours = step(ours)
    got_fused = step(fused[0])
    for a, b, c in zip(expected, got_ours, got_fused, strict=True):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)


def test_sync_bn_training_runs_under_an_nccl_group(nccl_group, shapes_dir, tmp_path):
    """model.norm=SyncBN trains on CUDA inside an existing one-process NCCL group (the trainer joins it, as it does
    a group a launcher made) and logs finite losses."""
    out = tmp_path / "syncbn"
    extra = {"train.device": "cuda", "model.norm": "SyncBN", "train.max_iters": 3}
    overrides = tiny_overrides(shapes_dir, out, **extra)
    trainer.train(load_config(MINI_CONFIG, overrides))
    losses = [r["loss"] for r in read_metrics(out, "train")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
