"""CompressAI baselines (bench): trained with our training loop, shipped as safetensors, coded to real bytes."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import photo_crop
from pqmim import ModelFileError

pytest.importorskip("compressai")

from bench.baselines import Baseline, build  # noqa: E402
from bench.train_baselines import main  # noqa: E402


def test_train_export_and_code_a_tiny_hyperprior(tmp_path):
    folders = {
        "train": [photo_crop(0, 0, 256, 256, variant=v) for v in range(3)],
        "val": [photo_crop(256, 128, 256, 256)],
        "kodak": [photo_crop(350, 200, 100, 70)],
    }
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    args = [
        "--arch",
        "bmshj2018-hyperprior",
        "--channels",
        "8",
        "--latent-channels",
        "12",
        "--lmbda",
        "0.01",
        "--out",
        str(tmp_path / "run"),
        "--train",
        str(tmp_path / "train"),
        "--val",
        str(tmp_path / "val"),
        "--kodak",
        str(tmp_path / "kodak"),
        "--plan",
        json.dumps({"iterations": 4, "crop": 64, "batch": 2}),
        "--ckpt-every",
        "2",
        "--log-every",
        "1",
        "--name",
        "hp-tiny",
        "--export-dir",
        str(tmp_path / "models"),
    ]
    main(args + ["--stop-at", "2"])
    main(args)  # resumes at step 2, finishes and exports
    log = (tmp_path / "run" / "train.log").read_text()
    assert "baseline: resumed at iteration 2" in log and "baseline val iteration 4" in log and "bpp" in log
    card = json.loads((tmp_path / "models" / "hp-tiny.json").read_text())
    assert card["arch"] == "bmshj2018-hyperprior" and card["lmbda"] == 0.01 and card["training"]["iterations_done"] == 4
    assert card["kodak"]["images"] == 1 and card["kodak"]["bpp"] > 0

    model = Baseline.load(tmp_path / "models" / "hp-tiny.safetensors")
    rgb = photo_crop(10, 20, 90, 70, variant=5)  # not a multiple of 64: padded, then cropped back
    data = model.compress(rgb)
    out = model.decompress(data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out, model.decompress(data))  # decoding is deterministic
    assert len(data) > 12  # header plus both entropy-coded strings


def test_bad_baseline_files_are_refused(tmp_path, tiny_model_file):
    with pytest.raises(ModelFileError, match="not a pqmim baseline"):
        Baseline.load(tiny_model_file)  # a pqmim model is not a baseline
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="cannot read"):
        Baseline.load(bad)
    with pytest.raises(ValueError, match="unknown baseline"):
        build("cheng2099")


def test_mbt2018_mean_saves_loads_and_codes(tmp_path):
    import torch

    torch.manual_seed(0)
    model = Baseline(build("mbt2018-mean", 8, 12), "mbt2018-mean", 8, 12)
    model.save(tmp_path / "mbt.safetensors")
    loaded = Baseline.load(tmp_path / "mbt.safetensors")
    assert loaded.arch == "mbt2018-mean" and loaded.name == "mbt"
    rgb = photo_crop(0, 0, 64, 64, variant=1)
    assert loaded.decompress(loaded.compress(rgb)).shape == rgb.shape


LAUNCH = """
import os, sys, torch
from bench.train_baselines import main
net = main(sys.argv[1:])
torch.save(net.state_dict(), os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank{os.environ['RANK']}.pt"))
"""


def test_two_ranks_stay_identical(tmp_path):
    """Under torchrun the rate-distortion and aux losses go through one backward pass, so DDP has
    reduced every gradient before either optimiser steps: the ranks end with the same weights
    (with the aux loss's backward after the RD step, as before, they drifted apart)."""
    import os
    import subprocess
    import sys

    import torch

    from pqmim.checkout import ROOT

    for name, variants in (("train", range(4)), ("val", [5])):
        (tmp_path / name).mkdir()
        for v in variants:
            Image.fromarray(photo_crop(0, 0, 288, 256, variant=v)).save(tmp_path / name / f"{v}.png")  # val: 256x256 crops
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    out = tmp_path / "run"
    args = [
        "--arch",
        "bmshj2018-hyperprior",
        "--channels",
        "8",
        "--latent-channels",
        "8",
        "--out",
        str(out),
        "--name",
        "hp-ddp",
        "--train",
        str(tmp_path / "train"),
        "--val",
        str(tmp_path / "val"),
        "--kodak",
        "",
        "--stages",
        "train",
        "--plan",
        json.dumps({"iterations": 5, "crop": 64, "batch": 4}),
        "--threads",
        "1",
        "--log-every",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 processes (torchrun, DDP)" in (out / "train.log").read_text()
    a, b = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a.keys() == b.keys()
    quantiles = 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
        quantiles += name.endswith(".quantiles")
    assert quantiles  # the quantiles are among the weights compared
