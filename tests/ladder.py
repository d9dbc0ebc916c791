"""A ladder of tiny random models standing in for the shipped ones (fast), through
$PQMIM_MODELS: the zoo looks there first, so `pqmim-q1`, `pqmim-q2` and `pqmim-q3` are these."""

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import TINY, make_tiny_model

LEVELS = {1: dataclasses.replace(TINY, m=2), 2: TINY, 3: dataclasses.replace(TINY, m=4)}


def write_ladder(folder: Path) -> dict[str, str]:
    """Writes pqmim-q1..q3 (weights and cards) into folder; returns name -> model id."""
    ids = {}
    for q, cfg in LEVELS.items():
        name = f"pqmim-q{q}"
        model = make_tiny_model(seed=q, cfg=cfg)
        model.save(folder / f"{name}.safetensors")
        ids[name] = model.model_id().hex()
        (folder / f"{name}.json").write_text(json.dumps({"model_id": ids[name], "description": "tiny test model", "kodak": {"bpp": 0.5 * q}}))
    return ids


@pytest.fixture()
def tiny_ladder(tmp_path_factory, monkeypatch):
    from pqmim import codec

    folder = tmp_path_factory.mktemp("ladder")
    ids = write_ladder(folder)
    monkeypatch.setenv("PQMIM_MODELS", str(folder))
    codec._shipped.cache_clear()
    yield folder, ids
    codec._shipped.cache_clear()
