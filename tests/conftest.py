import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pqmim.codec import Codec
from pqmim.config import ModelConfig
from pqmim.image import to_tensor
from pqmim.models import PQMIM

from pqmim.checkout import ROOT, SHARED  # noqa: F401  (SHARED: not every checkout has it)

PHOTO = ROOT / "examples" / "kodim23.png"  # the photo the repository ships: natural pixels everywhere

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared (Kodak, LPIPS/FID weights): absent beside this clone")

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


@functools.lru_cache(maxsize=None)
def _photo(variant: int) -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTO) as im:
        rgb = np.asarray(im.convert("RGB"))
    if variant >= 4:  # 4-7: portrait, 512 wide and 768 high
        rgb = rgb.transpose(1, 0, 2)
    if variant & 1:
        rgb = rgb[:, ::-1]
    if variant & 2:
        rgb = rgb[::-1]
    rgb = np.ascontiguousarray(rgb)
    rgb.flags.writeable = False
    return rgb


def assert_same_pixels_any_threads_or_batch(decoder, w: int, h: int, dtype: torch.dtype) -> None:
    """A perceptual decoder's `refine` (a Refiner or a LatentTexture) gives an image the same
    pixels on 1 and 2 threads and alone or second in a batch, and another image other pixels."""
    a, b = to_tensor(photo_crop(0, 0, w, h)), to_tensor(photo_crop(0, 0, w, h, variant=3))
    torch.set_num_threads(1)
    one = decoder.refine(a, dtype)
    torch.set_num_threads(2)
    assert torch.equal(decoder.refine(a, dtype), one)
    assert torch.equal(decoder.refine(torch.cat([b, a]), dtype)[1:], one)
    assert not torch.equal(decoder.refine(b, dtype), one)


def photo_crop(x: int, y: int, w: int, h: int, variant: int = 0) -> np.ndarray:
    """A w x h crop at (x, y) of the shipped photo, or of one of its 8 flips and transposes for
    tests that need distinct images: variants 0-3 are 768x512 (0 the photo itself, 1 mirrored,
    2 upside down, 3 both), 4-7 the same of its transpose, 512x768. The crop must fit."""
    if not 0 <= variant < 8:
        raise ValueError(f"variant {variant}: 0 to 7")
    rgb = _photo(variant)
    if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= rgb.shape[1] and y + h <= rgb.shape[0]):
        raise ValueError(f"crop {w}x{h} at ({x}, {y}) does not fit variant {variant} ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb[y : y + h, x : x + w].copy()


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# A ladder of tiny random models standing in for the shipped ones (fast), through
# $PQMIM_MODELS: the zoo looks there first, so `pqmim-q1`, `pqmim-q2` and `pqmim-q3` are these.
LADDER = {1: dataclasses.replace(TINY, m=2), 2: TINY, 3: dataclasses.replace(TINY, m=4)}


def write_ladder(folder: Path) -> dict[str, str]:
    """Writes pqmim-q1..q3 (weights and cards) into folder; returns name -> model id."""
    ids = {}
    for q, cfg in LADDER.items():
        name = f"pqmim-q{q}"
        model = make_tiny_model(seed=q, cfg=cfg)
        model.save(folder / f"{name}.safetensors")
        ids[name] = model.model_id().hex()
        (folder / f"{name}.json").write_text(
            json.dumps({"model_id": ids[name], "description": "tiny test model", "kodak": {"bpp": 0.5 * q}})
        )
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


def flags(**options) -> list[str]:
    """Command-line flags from keyword arguments: init_from="x" -> ["--init-from", "x"]; dicts
    and lists as JSON, everything else as str (so one call builds a training command line)."""
    out = []
    for name, value in options.items():
        out += [f"--{name.replace('_', '-')}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return out


def write_photos(root: Path, folders: dict[str, list[np.ndarray]]) -> None:
    """root/<folder>/<i>.png for each folder's images (training, validation, Kodak stand-ins)."""
    from PIL import Image

    for name, images in folders.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(root / name / f"{i}.png")


_LAUNCH = """
import importlib, os, sys, torch
net = importlib.import_module(sys.argv[1]).main(sys.argv[2:])
torch.save(net.state_dict(), os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank{os.environ['RANK']}.pt"))
"""


def torchrun(module: str, args: list[str], out: Path) -> list[dict]:
    """Run `module`'s main(args) as 2 CPU processes under torchrun (gloo, one thread each);
    returns each rank's final weights (state dicts, rank 0 then 1)."""
    import os
    import subprocess
    import sys

    script = out.parent / f"launch-{out.name}.py"
    script.write_text(_LAUNCH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # ROOT: the bench is importable
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
