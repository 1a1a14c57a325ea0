"""Decoding COCO instance masks: polygons, uncompressed RLE and compressed RLE strings, checked.

pycocotools decodes a malformed compressed RLE string into garbage without complaint, so the run lengths are
checked here before decoding (per sample: scanning every string when a dataset opens is too slow for large files).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def _rle_string_total(counts: bytes) -> int:
    """Sum of the run lengths in a compressed RLE string (pycocotools' rleFrString), -1 if malformed."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            c = counts[p] - 48 if p < n else -1
            if not 0 <= c < 64:
                return -1
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        x += runs[-2] if len(runs) > 2 else 0
        if x < 0:
            return -1
        runs.append(x)
    return sum(runs)


def decode_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """One instance's COCO segmentation (polygons, uncompressed or compressed RLE) as a [H, W] uint8 mask.

    Raises:
        ValueError: a compressed RLE string whose run lengths do not add up to height x width.
    """
    if isinstance(seg, list):  # polygons of one instance: rasterize each, union them
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):  # uncompressed RLE (COCO crowd style)
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        counts = seg["counts"]
        rle = {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        # pycocotools decodes a malformed string without complaint (into garbage), so check the run lengths here:
        # per sample, because a Python scan of every string at construction is too slow for LVIS-sized files.
        if _rle_string_total(rle["counts"]) != height * width:
            raise ValueError(f"compressed RLE counts do not decode to height*width = {height * width} pixels")
    # pycocotools' Cython decode trips numpy 2's __array__(copy=...) DeprecationWarning on every call; harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)
