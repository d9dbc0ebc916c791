"""The shipped models: weights (safetensors) and cards (JSON) in the project's models/ folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_MODEL = "pqmim-default"


def model_dirs() -> list[Path]:
    """Where models are looked up, in order: $PQMIM_MODELS, the installed package's copy of
    models/, and models/ of a source checkout."""
    dirs = []
    if os.environ.get("PQMIM_MODELS"):
        dirs.append(Path(os.environ["PQMIM_MODELS"]))
    here = Path(__file__).resolve().parent
    dirs += [here / "_weights", here.parent / "models"]
    return [d for d in dirs if d.is_dir()]


def model_path(name: str) -> Path:
    for d in model_dirs():
        p = d / f"{name}.safetensors"
        if p.is_file():
            return p
    known = ", ".join(c["name"] for c in list_models()) or "none found"
    raise FileNotFoundError(f"unknown model {name!r} (shipped models: {known})")


def list_models() -> list[dict]:
    """Cards of every model found, first occurrence of a name wins."""
    cards: dict[str, dict] = {}
    for d in model_dirs():
        for card in sorted(d.glob("*.json")):
            if not (d / f"{card.stem}.safetensors").is_file() or card.stem in cards:
                continue
            try:
                cards[card.stem] = {"name": card.stem, **json.loads(card.read_text())}
            except (OSError, ValueError):
                continue
    return list(cards.values())


def name_for_id(model_id: bytes) -> str | None:
    for c in list_models():
        if c.get("model_id") == model_id.hex():
            return c["name"]
    return None
