"""The training command: both stages, resume, export (a few steps of a tiny model)."""

import json

from PIL import Image

from conftest import TINY, photo_crop
from pqmim import Codec
from pqmim.train import main


def test_train_resume_export(tmp_path):
    folders = {"train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(4)],  # the photo's 4 corners
               "val": [photo_crop(240, 120, 288, 272, variant=v) for v in (0, 3)], "kodak": [photo_crop(350, 200, 64, 48)]}
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    args = ["--out", str(tmp_path / "run"), "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
            "--kodak", str(tmp_path / "kodak"), "--config", json.dumps(TINY.to_dict()),
            "--stage1-plan", json.dumps({"steps": 6, "warmup_ae_steps": 2, "small_crop_until": 3, "small_crop": 32,
                                         "small_batch": 2, "crop": 64, "batch": 2}),
            "--stage2-plan", json.dumps({"steps": 4, "batch": 4}), "--ckpt-every", "3", "--log-every", "1",
            "--name", "tiny-trained", "--export-dir", str(tmp_path / "models")]
    main(args + ["--stages", "1"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "k-means initialised" in log and "perplexity" in log and "stage1 val step 6" in log
    main(args)  # resumes: stage 1 is done, runs stage 2 and the export
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage1: resumed at step 6" in log and "stage2 val step 4" in log
    card = json.loads((tmp_path / "models" / "tiny-trained.json").read_text())
    assert card["config"] == TINY.to_dict() and card["training"]["stage2"]["steps_done"] == 4
    assert card["kodak"]["images"] == 1 and card["kodak"]["bpp"] > 0
    codec = Codec.from_file(tmp_path / "models" / "tiny-trained.safetensors")
    assert codec.model_id.hex() == card["model_id"]
    rgb = photo_crop(0, 0, 40, 30, variant=4)
    assert codec.decompress(codec.compress(rgb)).size == (40, 30)


def test_block_causal_entropy_variant_of_a_trained_model(tmp_path):
    """The recipe behind a shipped block-causal model: stage 2 alone, warm-started from a model
    file, exported as an entropy variant of it (a small file; same codes, faster coding)."""
    import dataclasses

    import numpy as np
    import torch

    from conftest import make_tiny_model

    (tmp_path / "train").mkdir()
    for i, v in enumerate(range(3)):
        Image.fromarray(photo_crop(0, 0, 256, 192, variant=v)).save(tmp_path / "train" / f"{i}.png")
    (tmp_path / "models").mkdir()
    base = make_tiny_model(seed=7)
    base.save(tmp_path / "models" / "tiny-full.safetensors", storage="int8")
    causal = dataclasses.replace(TINY, causal=True)
    main(["--out", str(tmp_path / "run"), "--train", str(tmp_path / "train"), "--val", str(tmp_path / "train"), "--kodak", "",
          "--config", json.dumps(causal.to_dict()), "--init-from", str(tmp_path / "models" / "tiny-full.safetensors"),
          "--stages", "2,export", "--stage2-plan", json.dumps({"steps": 3, "batch": 4}), "--ckpt-every", "3",
          "--name", "tiny-causal", "--base", "tiny-full", "--export-dir", str(tmp_path / "models")])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage2 val step 3" in log and "on all val codes" in log
    card = json.loads((tmp_path / "models" / "tiny-causal.json").read_text())
    assert card["entropy_variant_of"] == "tiny-full" and card["config"]["causal"] is True
    full = Codec.from_file(tmp_path / "models" / "tiny-full.safetensors")
    fast = Codec.from_file(tmp_path / "models" / "tiny-causal.safetensors")
    assert fast.model_id.hex() == card["model_id"] != full.model_id.hex()
    rgb = photo_crop(100, 60, 120, 88, variant=2)
    assert torch.equal(fast.encode_codes([rgb])[0], full.encode_codes([rgb])[0])
    assert np.array_equal(np.asarray(fast.decompress(fast.compress(rgb))), np.asarray(full.decompress(full.compress(rgb))))
