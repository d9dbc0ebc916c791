"""The shipped models: weights (safetensors) and cards (JSON) in the project's models/ folder.

The quality ladder is the models named ``pqmim-q<N>``: quality 1 is the smallest files, each
level up roughly doubles the rate (see ``pqmim models`` for the measured Kodak figures).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

DEFAULT_MODEL = "pqmim-q3"
ALIASES = {"default": DEFAULT_MODEL, "pqmim-default": DEFAULT_MODEL}  # the default model's earlier name
PERCEPTUAL = "perceptual decoder"  # a card's "kind" (absent: a model)
_QUALITY_NAME = re.compile(r"pqmim-q(\d+)")


def model_dirs() -> list[Path]:
    """Where models are looked up, in order: $PQMIM_MODELS, the installed package's copy of
    models/, and models/ of a source checkout."""
    dirs = []
    if os.environ.get("PQMIM_MODELS"):
        dirs.append(Path(os.environ["PQMIM_MODELS"]))
    here = Path(__file__).resolve().parent
    dirs += [here / "_weights", here.parent / "models"]
    return [d for d in dirs if d.is_dir()]


def quality_levels() -> dict[int, str]:
    """Quality level -> model name, for the ladder models found."""
    levels = {}
    for c in list_models():
        m = _QUALITY_NAME.fullmatch(c["name"])
        if m:
            levels[int(m.group(1))] = c["name"]
    return dict(sorted(levels.items()))


def model_for_quality(quality: int) -> str:
    levels = quality_levels()
    if quality not in levels:
        span = f"{min(levels)}..{max(levels)}" if levels else "none shipped"
        raise ValueError(f"no model for quality {quality} (qualities: {span})")
    return levels[quality]


def resolve(name: str | None) -> str:
    """A model name with aliases ("default") and None (the default model) resolved."""
    name = name or DEFAULT_MODEL
    return ALIASES.get(name, name)


def model_path(name: str) -> Path:
    name = resolve(name)
    for d in model_dirs():
        p = d / f"{name}.safetensors"
        if p.is_file():
            return p
    known = ", ".join(c["name"] for c in list_models()) or "none found"
    raise FileNotFoundError(f"unknown model {name!r} (shipped models: {known})")


def _cards() -> list[dict]:
    """Every card with its weights beside it, first occurrence of a name wins."""
    cards: dict[str, dict] = {}
    for d in model_dirs():
        for card in sorted(d.glob("*.json")):
            if not (d / f"{card.stem}.safetensors").is_file() or card.stem in cards:
                continue
            try:
                cards[card.stem] = {"name": card.stem, **json.loads(card.read_text()), "path": d / f"{card.stem}.safetensors"}
            except (OSError, ValueError):
                continue
    return list(cards.values())


def list_models() -> list[dict]:
    """Cards of every model found (codecs; not the perceptual decoders), first occurrence of a name wins."""
    return [c for c in _cards() if c.get("kind", "model") == "model"]


def perceptual_decoders() -> list[dict]:
    """Cards of the perceptual decoders found (a refiner, pqmim/models/perceptual.py, or a latent
    texture decoder, pqmim/models/texture.py): a card's `serves` lists the models, by name and
    id, that `--perceptual` decodes with it (each shipped model with at most one; its file may
    have been trained for more: `perceptual.served_ids`)."""
    return [c for c in _cards() if c.get("kind") == PERCEPTUAL]


def perceptual_path(model_id: bytes) -> Path:
    """The perceptual decoder for a model's output; FileNotFoundError naming the models that have one."""
    for c in perceptual_decoders():
        if model_id.hex() in [s.get("model_id") for s in c.get("serves", [])]:
            return c["path"]
    served = sorted({s["name"] for c in perceptual_decoders() for s in c.get("serves", [])})
    raise FileNotFoundError(
        f"no perceptual decoder ships for {describe_id(model_id)} (perceptual decoders ship for: {', '.join(served) or 'none'})"
    )


def name_for_id(model_id: bytes) -> str | None:
    for c in list_models():
        if c.get("model_id") == model_id.hex():
            return c["name"]
    return None


def retired(model_id: bytes) -> dict | None:
    """The record of a model that no longer ships (retired.json beside the shipped models: its
    name, and the release that still decodes its files), or None."""
    for d in model_dirs():
        path = d / "retired.json"
        try:
            records = json.loads(path.read_text())["retired"] if path.is_file() else []
        except (OSError, ValueError, KeyError):
            continue
        for r in records:
            if r.get("model_id") == model_id.hex():
                return r
    return None


def describe_id(model_id: bytes) -> str:
    """What a file's model id refers to, in words: a shipped model, a retired one (naming the
    release that decodes it), or an unknown model."""
    name = name_for_id(model_id)
    if name:
        return f"model {name!r} (id {model_id.hex()})"
    r = retired(model_id)
    if r:
        return (
            f"model {r['name']!r} (id {model_id.hex()}), which this release no longer ships "
            f"(retired in {r['retired_in']}); decode it with {r['decoded_by']}"
        )
    return f"an unknown model (id {model_id.hex()})"
