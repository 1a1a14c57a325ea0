"""The mask and keypoint predictors: torchvision's, with their transposed convolutions in channels-last memory on CPU.

Both predictors upsample RoI features with a transposed convolution (mask: 2x2 stride 2, 14 -> 28; keypoints: 4x4
stride 2, 14 -> 28 before the x2 bilinear upsampling). oneDNN, which runs PyTorch's CPU convolutions, is much slower
on the default NCHW layout for these than on NHWC. Measured with benchmarks/predictor_layout.py (1 thread, no
gradients; benchmarks/RESULTS.md, "Inference"):
- mask, 64 channels, 48 RoIs (the mini config): 17.3 ms against 4.0 ms;
- mask, 256 channels, 100 RoIs (R50-FPN): 261 ms against 136 ms;
- keypoints, 512 channels to 17, 50 RoIs: 43 ms against 40 ms;
- a trained mini model's whole evaluation inference: 79 ms against 66 ms per image.

Only in eval mode. In training, at the mini config's sizes, the iteration time did not change (0.123 s both), while
the other float rounding sent the learning test's training on another path (bbox AP 52.2 instead of 58.7 on its one
seed): training keeps torchvision's layout, so its numbers are torchvision's to the bit. Parameters, their names and
outputs are torchvision's (equal up to float rounding in eval mode), so checkpoints load either way. On a GPU the
layout is left alone: there the difference was not measured.
"""

from __future__ import annotations

import torch
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

__all__ = ["KeypointPredictor", "MaskPredictor", "channels_last_for_cpu_inference"]


def channels_last_for_cpu_inference(x: torch.Tensor, training: bool) -> torch.Tensor:
    """`x` [R, C, H, W] in channels-last memory when it is on the CPU and the module is in eval mode, else unchanged."""
    if training or x.device.type != "cpu":
        return x
    return x.contiguous(memory_format=torch.channels_last)


class MaskPredictor(MaskRCNNPredictor):
    """torchvision's MaskRCNNPredictor: [R, C, 14, 14] -> per-class mask logits [R, num_classes, 28, 28]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(channels_last_for_cpu_inference(x, self.training))


class KeypointPredictor(KeypointRCNNPredictor):
    """torchvision's KeypointRCNNPredictor: [R, C, 14, 14] -> heatmap logits [R, num_keypoints, 56, 56]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(channels_last_for_cpu_inference(x, self.training))
