"""Model files: safetensors only (no pickle, so a file cannot run code), with a format tag and
the architecture in the metadata, read back with one clear error type for every failure.

Storage (metadata key ``storage``): ``float32``, ``float16`` or ``int8``. An int8 file keeps
every float tensor of at least 2 dimensions and ``INT8_MIN_ELEMENTS`` elements (convolution and
linear weights, embeddings) as int8 with one float32 scale per slice along dimension 0 (per
output channel), stored beside it as ``int8_scale:<name>``; other float tensors (biases, norms,
codebooks) stay float16. Invariant: dequantisation is one float32 multiplication per weight,
``int8 * scale``, which IEEE 754 rounds the same way on every machine, so an int8 file gives
bit-identical float32 weights (and the same model id) everywhere: the codec stays exact. A
file without the key is float16 or float32, as written before int8 storage existed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn
from torch.overrides import TorchFunctionMode

from ..fileio import atomic_write

STORAGES = ("float32", "float16", "int8")
INT8_MIN_ELEMENTS = 1024  # smaller tensors gain nothing worth their scales
SCALE_PREFIX = "int8_scale:"


class ModelFileError(ValueError):
    """A model file is missing, unreadable or does not match the architecture it declares."""


def quantize_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (codes int8, scale float32 of shape (t.shape[0],))."""
    w = t.detach().float().reshape(t.shape[0], -1)
    scale = w.abs().amax(1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays zero
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(t.shape), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The one float32 multiplication per weight that every machine rounds identically."""
    return (q.float().reshape(q.shape[0], -1) * scale.float()[:, None]).reshape(q.shape)


def _stored_int8(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.dim() >= 2 and t.numel() >= INT8_MIN_ELEMENTS


def save_tensors(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, str], storage: str = "float32") -> None:
    """Write a state dict atomically in one of STORAGES (see the module docstring)."""
    if storage not in STORAGES:
        raise ValueError(f"unknown weight storage {storage!r} (known: {', '.join(STORAGES)})")
    tensors = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        if storage == "int8" and _stored_int8(t):
            tensors[name], tensors[SCALE_PREFIX + name] = quantize_int8(t)
        elif storage != "float32" and t.is_floating_point():
            tensors[name] = t.half()
        else:
            tensors[name] = t
    atomic_write(path, save(tensors, metadata={**meta, "storage": storage}))  # save_file would make it 0600


def _dequantized(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in tensors.items() if not k.startswith(SCALE_PREFIX)}
    for key, scale in tensors.items():
        if not key.startswith(SCALE_PREFIX):
            continue
        name = key[len(SCALE_PREFIX):]
        q = out.get(name)
        if q is None or q.dtype != torch.int8 or q.dim() < 2 or scale.dtype != torch.float32 or tuple(scale.shape) != (q.shape[0],):
            raise ModelFileError(f"{path}: int8 tensor {name} does not match its scale")
        if not torch.isfinite(scale).all():
            raise ModelFileError(f"{path}: tensor {name} has non-finite scales")
        out[name] = dequantize_int8(q, scale)
    stray = [k for k, v in out.items() if v.dtype == torch.int8]
    if stray:
        raise ModelFileError(f"{path}: int8 tensor {stray[0]} has no scale")
    return out


def file_metadata(path: str | Path) -> dict[str, str]:
    """A model file's metadata (format tag, config, ...) without its tensors; ModelFileError if unreadable."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises several types for damaged files
        raise ModelFileError(f"cannot read model file {path}: {e}") from None


def read_tensors(path: str | Path, format_tag: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model file whose metadata says `format_tag`, int8 tensors already
    dequantised to float32; ModelFileError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for damaged files
        raise ModelFileError(f"cannot read model file {path}: {e}") from None
    if meta.get("format") != format_tag:
        raise ModelFileError(f"{path} is not a {what} file")
    storage = meta.get("storage", "float16")
    if storage not in STORAGES:
        raise ModelFileError(f"{path}: unknown weight storage {storage!r}")
    if storage == "int8":
        tensors = _dequantized(path, tensors)
    elif any(k.startswith(SCALE_PREFIX) for k in tensors):
        raise ModelFileError(f"{path}: int8 scales in a {storage} file")
    return meta, tensors


class _NoInit(TorchFunctionMode):
    """Inside `expected_state` the initialisers (torch.nn.init's, Tensor.normal_) do nothing:
    on meta tensors, which hold no values, they change nothing, but torch's meta normal_ is a
    Python decomposition that imports torch._dynamo the first time it runs (1.4 s of every
    command's start; so does arithmetic on meta tensors: tests/test_models.py keeps the models'
    constructors free of it)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init" or getattr(func, "__name__", None) == "normal_":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def expected_state(build: Callable[[], nn.Module]) -> dict[str, torch.Tensor]:
    """The state dict `build()` makes, as meta tensors: its names, shapes and dtypes with nothing
    allocated, so that a file's tensors are checked against its config (`check_state`) before a
    config from a hostile file can ask for gigabytes."""
    with torch.device("meta"), _NoInit():
        return build().state_dict()


def check_state(path: str | Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """ModelFileError unless `tensors` has exactly the names and shapes of `expected` (from
    `expected_state`, built from the file's config) and only finite float values."""
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise ModelFileError(f"{path}: weights do not match the config (missing {missing}, unexpected {extra})")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise ModelFileError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ModelFileError(f"{path}: tensor {name} holds non-finite values")
