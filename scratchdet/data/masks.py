"""Decoding COCO instance masks: polygons, uncompressed RLE and compressed RLE strings, checked.

pycocotools decodes a malformed compressed RLE string into garbage without complaint, so the run lengths are
checked: for every string when a file is loaded (data/coco.py), and again here before decoding.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def rle_string_total(counts: bytes | str) -> int:
    """Sum of the run lengths in a compressed RLE string (pycocotools' rleFrString), -1 if malformed.

    pycocotools decodes a malformed string without complaint: into garbage, past the end of its buffer, or (in the
    IoU of the metric) into a loop that never ends. Vectorized, so every string of a file can be checked when it is
    loaded. Format: each run is a little-endian base-32 number in characters '0'..'o' (value c - 48, 5 bits each,
    bit 0x20 = another character follows, bit 0x10 of the last one = negative), and from the fourth run on each
    value is a difference to the run two before.
    """
    if isinstance(counts, str):
        if not counts.isascii():
            return -1
        counts = counts.encode("ascii")
    c = np.frombuffer(counts, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0 or c.min() < 0 or c.max() >= 64 or c[-1] & 0x20:
        return -1
    last = (c & 0x20) == 0  # the last character of each run
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:  # beyond 60 bits: no real mask has such a run
        return -1
    position = np.arange(c.size) - np.repeat(starts, lengths)  # k: the character's place within its run
    values = np.add.reduceat((c & 0x1F) << (5 * position), starts)
    negative = (c[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * lengths[negative])
    runs = values.copy()
    for first in (3, 4):  # runs[j] = values[j] + runs[j - 2] from j = 3 on: two interleaved running sums
        if runs.size > first - 2:
            tail = runs[first - 2 :: 2]
            runs[first - 2 :: 2] = np.concatenate([[tail[0]], tail[0] + np.cumsum(values[first::2])])[: tail.size]
    if (runs < 0).any():
        return -1
    return int(runs.sum())


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
        # pycocotools decodes a malformed string without complaint (into garbage), so check the run lengths here.
        if rle_string_total(rle["counts"]) != height * width:
            raise ValueError(f"compressed RLE counts do not decode to height*width = {height * width} pixels")
    # pycocotools' Cython decode trips numpy 2's __array__(copy=...) DeprecationWarning on every call; harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)
