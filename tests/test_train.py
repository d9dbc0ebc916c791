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
