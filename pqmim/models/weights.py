"""Model files: safetensors only (no pickle, so a file cannot run code), with a format tag and
the architecture in the metadata, read back with one clear error type for every failure."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class ModelFileError(ValueError):
    """A model file is missing, unreadable or does not match the architecture it declares."""


def save_tensors(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, str], half: bool = False) -> None:
    """Write a state dict atomically (float tensors as float16 when `half`)."""
    tensors = {}
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        tensors[name] = t.half() if half and t.is_floating_point() else t
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def read_tensors(path: str | Path, format_tag: str, what: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a model file whose metadata says `format_tag`; ModelFileError otherwise."""
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
    return meta, tensors
