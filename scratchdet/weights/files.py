"""Reading weight files without running code from them, and choosing the network inside a checkpoint.

Containers: torch files (`.pth`, `.pth.tar`, `.bin`; zip or pre-1.6 legacy) through `torch.load(weights_only=True)`,
which admits tensors and plain containers plus `argparse.Namespace` (the `args` entry DINO's and timm's training
checkpoints carry: rebuilt as a bag of attributes, none of its code runs); safetensors files through the
`safetensors` package (a JSON header and raw tensor bytes: nothing to run); Detectron/detectron2 pickles through an
unpickler that admits numpy arrays and plain containers only. Any other object type is refused before it is built,
naming the type and the one-line extraction a user can run on a file they trust.

A checkpoint can hold several networks (DINO's `teacher` and `student`, timm's `state_dict` and `state_dict_ema`);
`unwrap` takes the one `checkpoint_key` names, the only one there is, or refuses naming them.

Shared by the ResNet and VGG-16 weight loaders (names.py and audit.py, vgg.py), which then map the names; nothing
here knows about layers.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import json
import pickle
import re
import struct
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


# Non-tensor types a training checkpoint may carry that are safe to rebuild: argparse.Namespace is a plain attribute
# bag (protocol 2+ pickles rebuild it with object.__new__ and a __dict__ update; it defines no __setstate__), saved as
# `args` by DINO (main_dino.py save_dict) and timm's train.py. Everything else stays refused.
SAFE_TYPES = (argparse.Namespace,)
_UNSUPPORTED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|Unsupported class|unsupported GLOBAL) ([\w.]+)")


def extraction_command(path: Path) -> str:
    """The one line that re-saves the tensors of `path`'s network (its state_dict or model entry, else the top level)
    as a plain state_dict. It unpickles the file with weights_only=False, which runs the code the file names: only
    for a file from a trusted source."""
    out = path.with_name(path.name.split(".")[0] + ".state_dict.pth")
    return (
        f"python -c \"import torch; c = torch.load('{path}', map_location='cpu', weights_only=False); "
        "c = c.get('state_dict', c.get('model', c)); "
        f"torch.save({{k: v for k, v in c.items() if torch.is_tensor(v)}}, '{out}')\""
    )


def _unsafe_types(path: Path, error: Exception) -> list[str]:
    """The object types that made `torch.load(weights_only=True)` refuse `path`, read without loading it."""
    try:
        found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # zip files, torch >= 2.5
    except Exception:  # legacy (pre-1.6) files or an older torch: the loader's message names the first one
        found = []
    if not found:
        found = _UNSUPPORTED_GLOBAL.findall(str(error))
    safe = {f"{t.__module__}.{t.__qualname__}" for t in SAFE_TYPES}
    return sorted({t for t in found if t not in safe})


def _torch_load(path: Path) -> object:
    try:
        # weights_only=True always: a .pth is a pickle too, and loading a file must never run code from it.
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5: admitted for this load only
            with torch.serialization.safe_globals(list(SAFE_TYPES)):
                return torch.load(path, map_location="cpu", weights_only=True)
        torch.serialization.add_safe_globals(list(SAFE_TYPES))  # torch 2.4: process-wide, the same harmless type
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        types = _unsafe_types(path, e)
        if types:
            raise CheckpointError(
                f"{path} holds objects of type {', '.join(types)} beside its tensors; they are not rebuilt, because "
                "unpickling them would run code named by the file. If you trust the file, extract the network's "
                "tensors once (for a network under another key, e.g. teacher, use that key): "
                + extraction_command(path)
            ) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} cannot be loaded as plain weights ({type(e).__name__}: {reason}); files holding objects other "
            "than tensors and containers are refused because unpickling them could run code: re-save the "
            "state_dict alone (torch.save(model.state_dict(), path))"
        ) from None


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (size,) = struct.unpack("<Q", head[:8])
    return 0 < size <= path.stat().st_size - 8


def _safetensors_load(path: Path) -> dict:
    """The tensors of a safetensors file (its header's string metadata, {"format": "pt"} in timm's and transformers'
    files, says nothing about the network and is left out)."""
    from safetensors import SafetensorError, safe_open  # the only reader of this format; imported where needed

    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a Mapping)
                tensors[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-download it") from None
    return tensors


def read_json(path: Path) -> dict:
    """A JSON object file (a hub folder's config.json); only parsed, never executed.

    Raises:
        CheckpointError: the file is not JSON or not an object.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file ({e}); re-download it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object; re-download it")
    return data


def read_object(path: Path) -> tuple[object, str]:
    """The top-level object and its container: "torch" (torch.save), "safetensors" or "pickle" (plain pickle).

    Raises:
        CheckpointError: a missing file, or one that is neither of these or holds objects other than plain data.
    """
    if not path.is_file():
        raise CheckpointError(f"pre-trained weight file {path} does not exist or is not a file; check the path")
    if zipfile.is_zipfile(path):
        return _torch_load(path), "torch"
    if _is_safetensors(path):
        return _safetensors_load(path), "safetensors"
    if path.suffix == ".safetensors":
        raise CheckpointError(f"{path} is named .safetensors but is not a safetensors file; not loading it")
    # Not a zip: a plain pickle (Detectron) or pre-1.6 torch.save; the restricted unpickler reads the first object
    # either way, and a legacy torch file's first object is its magic number.
    obj = _unpickle_arrays(path)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path), "torch"
    return obj, "pickle"


# Wrappers holding one network, in the order they are looked for: Detectron's blobs, scratchdet's and detectron2's
# model, the state_dict of MoCo, timm, mmengine and most training scripts.
_WRAPPERS = ("blobs", "model", "state_dict")


def _is_network(value: object) -> bool:
    """A name -> tensor mapping: at least two array entries named like module parameters ("layer1.0.conv1.weight",
    Caffe2's "res2_0_branch2a_w"). An optimizer's state (int keys), a loss's buffer (DINO's `center`) or RNG states
    are not."""
    if not isinstance(value, Mapping):
        return False
    named = [k for k, v in value.items() if isinstance(k, str) and ("." in k or k.endswith("_w"))]
    return sum(as_tensor(value[k]) is not None for k in named) >= 2


def networks_in(obj: object) -> list[str]:
    """Top-level keys of a checkpoint that hold a network (teacher, student, state_dict, state_dict_ema, ...)."""
    if not isinstance(obj, Mapping) or _is_network(obj):
        return []
    return [str(k) for k, v in obj.items() if _is_network(v) or (k in _WRAPPERS and isinstance(v, Mapping))]


def unwrap(obj: object, path: Path, checkpoint_key: str | None = None) -> tuple[dict, str | None]:
    """The name -> array dict of the network a checkpoint holds, and the key it was under (None: the file is one).

    Args:
        obj: the file's top-level object (read_object).
        path: the file, for messages.
        checkpoint_key: the top-level key of the network to take (pretrained.checkpoint_key): teacher, student,
            state_dict, state_dict_ema, model, ...; None takes the only network the file holds.

    Raises:
        CheckpointError: checkpoint_key not in the file (the message lists its networks), several networks and no
            checkpoint_key (ambiguous: the message lists them), or no dict of weights at all.
    """
    wrapper = None
    candidates = networks_in(obj)
    if checkpoint_key is not None:
        if not isinstance(obj, Mapping) or checkpoint_key not in obj or not isinstance(obj[checkpoint_key], Mapping):
            keys = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
            among = ", ".join(candidates) or "none: the file is one state_dict; drop the key"
            raise CheckpointError(
                f"{path} has no network under pretrained.checkpoint_key={checkpoint_key!r}; its top-level keys are "
                f"{keys} (networks among them: {among})"
            )
        obj, wrapper = obj[checkpoint_key], checkpoint_key
    elif len(candidates) > 1:
        raise CheckpointError(
            f"{path} holds several networks: {', '.join(candidates)}; set pretrained.checkpoint_key to the one to "
            "load (DINO's evaluation takes teacher; an EMA copy such as state_dict_ema is usually the better model)"
        )
    elif candidates:
        obj, wrapper = obj[candidates[0]], candidates[0]
    if isinstance(obj, Mapping) and not _is_network(obj):  # e.g. {"model": {"state_dict": ...}}
        inner = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is not None:
            obj, wrapper = obj[inner], wrapper or inner
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
