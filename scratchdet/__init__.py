"""scratchdet: Mask R-CNN / Faster R-CNN with GroupNorm, trained from scratch or fine-tuned, and the study that
compares the two (He, Girshick, Dollar, "Rethinking ImageNet Pre-training", ICCV 2019)."""

__version__ = "0.1.0"
