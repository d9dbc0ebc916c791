"""CompressAI baselines: trained by our training command, shipped as safetensors, coded to real bytes."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import photo_crop
from pqmim import ModelFileError
from pqmim.baselines import Baseline, build
from pqmim.train import main

pytest.importorskip("compressai")


def test_train_export_and_code_a_tiny_hyperprior(tmp_path):
    folders = {"train": [photo_crop(0, 0, 256, 256, variant=v) for v in range(3)], "val": [photo_crop(256, 128, 256, 256)],
               "kodak": [photo_crop(350, 200, 100, 70)]}
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    args = ["--arch", "bmshj2018-hyperprior", "--n", "8", "--m", "12", "--lmbda", "0.01", "--out", str(tmp_path / "run"),
            "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--kodak", str(tmp_path / "kodak"),
            "--stage1-plan", json.dumps({"steps": 4, "crop": 64, "batch": 2}), "--ckpt-every", "2", "--log-every", "1",
            "--name", "hp-tiny", "--export-dir", str(tmp_path / "models")]
    main(args + ["--stop-at", "2"])
    main(args)  # resumes at step 2, finishes and exports
    log = (tmp_path / "run" / "train.log").read_text()
    assert "baseline: resumed at step 2" in log and "baseline val step 4" in log and "bpp" in log
    card = json.loads((tmp_path / "models" / "hp-tiny.json").read_text())
    assert card["arch"] == "bmshj2018-hyperprior" and card["lmbda"] == 0.01 and card["training"]["steps_done"] == 4
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
