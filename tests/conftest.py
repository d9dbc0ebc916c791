from pathlib import Path

import numpy as np
import pytest
import torch

from pqmim.codec import Codec
from pqmim.config import ModelConfig
from pqmim.models import PQMIM

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
KODAK = SHARED / "data" / "kodak"

# A small random model: the coding machinery is the same as for a trained one, and fast.
TINY = ModelConfig(widths=(8, 8, 16, 16), res_blocks=1, m=3, k=32, sub_dim=2, d_model=32, n_layers=2, n_heads=2, window=8, steps=6)


def make_tiny_model(seed: int = 0, cfg: ModelConfig = TINY) -> PQMIM:
    torch.manual_seed(seed)
    model = PQMIM(cfg)
    with torch.no_grad():  # spread the codebooks so a random encoder uses many code words
        model.quantizer.codebooks.normal_(0, 0.05)
        model.entropy.head.weight.mul_(4.0)  # non-uniform distributions, as a trained model gives
    return model.eval()


@pytest.fixture(scope="session")
def tiny_codec() -> Codec:
    return Codec(make_tiny_model(), name="tiny")


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    make_tiny_model().save(path)
    return path


def kodak_crop(i: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    from PIL import Image

    with Image.open(KODAK / f"kodim{i:02d}.png") as im:
        return np.asarray(im.convert("RGB"))[y : y + h, x : x + w].copy()


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
