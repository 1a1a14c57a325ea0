"""Reading weight files without running code from them: torch files through `torch.load(weights_only=True)`,
Detectron/detectron2 pickles through an unpickler that admits numpy arrays and plain containers only.

Shared by the ResNet and VGG-16 weight loaders (names.py and audit.py, vgg.py), which then map the names; nothing
here knows about layers.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from scratchdet.errors import CheckpointError

# torch.save's pre-1.6 (non-zip) format starts with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Top-level entries kept beside the weights: detectron2's writer name, scratchdet's recorded input convention.
_META_KEYS = ("__author__", "matching_heuristics", "input_convention")


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals a pickle of numpy arrays needs, under both numpy 1 (numpy.core) and numpy 2 (numpy._core) names.

    The objects are taken from numpy's own reductions rather than imported by path, so numpy 2 does not warn.
    """
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float32(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"): a pure data transform.
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_globals()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and refuses every other global, so a crafted file cannot run code."""

    def __init__(self, file, path: Path):
        # latin1: Detectron's files were written by Python 2, whose str holds the arrays' raw bytes.
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise CheckpointError(
                f"refusing to load {module}.{name} from {self._path}: not a plain weight file (a weight pickle holds "
                "only dicts and numpy arrays, and unpickling a reference to other code could run it); "
                "use the official file or convert it to a torch state_dict of tensors"
            )
        return found

    def persistent_load(self, pid):
        raise CheckpointError(f"{self._path} uses pickle persistent ids, which weight pickles never do; not loading it")


def _unpickle_arrays(path: Path) -> object:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # a damaged or foreign file raises many types
        raise CheckpointError(
            f"{path} is neither a torch file nor a Detectron weight pickle ({type(e).__name__}: {e}); "
            "pass a torchvision .pth, a scratchdet checkpoint or a Detectron .pkl"
        ) from None


def _torch_load(path: Path) -> object:
    try:
        # weights_only=True always: a .pth is a pickle too, and loading a file must never run code from it.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} cannot be loaded as plain weights ({type(e).__name__}: {reason}); files holding objects other "
            "than tensors and containers are refused because unpickling them could run code: re-save the "
            "state_dict alone (torch.save(model.state_dict(), path))"
        ) from None


def read_object(path: Path) -> tuple[object, str]:
    """The unpickled top-level object and its container: "torch" (torch.save) or "pickle" (plain pickle)."""
    if not path.is_file():
        raise CheckpointError(f"pre-trained weight file {path} does not exist or is not a file; check the path")
    if zipfile.is_zipfile(path):
        return _torch_load(path), "torch"
    # Not a zip: a plain pickle (Detectron) or pre-1.6 torch.save; the restricted unpickler reads the first object
    # either way, and a legacy torch file's first object is its magic number.
    obj = _unpickle_arrays(path)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path), "torch"
    return obj, "pickle"


def unwrap(obj: object, path: Path) -> tuple[dict, str | None]:
    """The name -> array dict inside common wrappers ({"blobs"}, {"model"}, {"state_dict"}), and the wrapper used."""
    wrapper = None
    for _ in range(2):  # e.g. {"model": {"state_dict": ...}}
        if not isinstance(obj, Mapping):
            break
        inner = next((k for k in ("blobs", "model", "state_dict") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        wrapper = wrapper or inner
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict of weights; expected a state_dict, "
            "{'model': state_dict} or a Detectron {'blobs': {...}} pickle"
        )
    return dict(obj), wrapper


def as_tensor(value: object) -> torch.Tensor | None:
    """The value as a CPU tensor, or None for metadata (numbers, strings, lists, non-numeric arrays)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        try:
            return torch.from_numpy(np.array(value))  # a writable, contiguous copy
        except TypeError:  # a dtype torch lacks (e.g. uint32 on older torch): metadata, never a weight here
            return None
    return None
