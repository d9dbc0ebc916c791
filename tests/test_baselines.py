"""CompressAI baselines (bench): trained with our training loop, shipped as safetensors, coded to real bytes."""

import json

import numpy as np
import pytest

from conftest import assert_same_weights, flags, photo_crop, torchrun, write_photos
from pqmim import ModelFileError

pytest.importorskip("compressai")

from bench.baselines import Baseline, build  # noqa: E402
from bench.train_baselines import main  # noqa: E402


def test_train_export_and_code_a_tiny_hyperprior(tmp_path):
    folders = {"train": [photo_crop(0, 0, 256, 256, variant=v) for v in range(3)], "val": [photo_crop(256, 128, 256, 256)]}
    write_photos(tmp_path, {**folders, "kodak": [photo_crop(350, 200, 100, 70)]})
    args = flags(
        arch="bmshj2018-hyperprior",
        channels=8,
        latent_channels=12,
        lmbda=0.01,
        out=tmp_path / "run",
        train=tmp_path / "train",
        val=tmp_path / "val",
        kodak=tmp_path / "kodak",
        plan={"iterations": 4, "crop": 64, "batch": 2},
        ckpt_every=2,
        log_every=1,
        name="hp-tiny",
        export_dir=tmp_path / "models",
    )
    main(args + ["--stop-at", "2"])
    main(args)  # resumes at iteration 2, finishes and exports
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


def test_two_ranks_stay_identical(tmp_path):
    """Under torchrun the rate-distortion and aux losses go through one backward pass, so DDP has
    reduced every gradient before either optimiser steps: the ranks end with the same weights
    (with the aux loss's backward after the RD step, as before, they drifted apart)."""
    val = [photo_crop(0, 0, 288, 256, variant=5)]  # 256x256 validation crops
    write_photos(tmp_path, {"train": [photo_crop(0, 0, 288, 256, variant=v) for v in range(4)], "val": val})
    out = tmp_path / "run"
    arch = flags(arch="bmshj2018-hyperprior", channels=8, latent_channels=8, name="hp-ddp", stages="train", threads=1, log_every=1)
    data = flags(out=out, train=tmp_path / "train", val=tmp_path / "val", kodak="", plan={"iterations": 5, "crop": 64, "batch": 4})
    a, b = torchrun("bench.train_baselines", arch + data, out)
    assert "2 processes (torchrun, DDP)" in (out / "train.log").read_text()
    assert_same_weights(a, b)
    assert any(name.endswith(".quantiles") for name in a)  # the quantiles are among the weights compared
