"""The training command: both stages, resume, export (a few steps of a tiny model)."""

import json
import math


from conftest import TINY, flags, needs_shared, photo_crop, write_photos
from pqmim import Codec
from pqmim.train import main


def tiny_run(tmp_path, val, plan1: dict, plan2: dict, **extra) -> list[str]:
    """`pqmim train` flags for a TINY model on the photos under tmp_path (train/, kodak/),
    exporting to tmp_path/models."""
    return flags(
        out=tmp_path / "run",
        train=tmp_path / "train",
        val=val,
        kodak=tmp_path / "kodak",
        config=TINY.to_dict(),
        stage1_plan=plan1,
        stage2_plan=plan2,
        export_dir=tmp_path / "models",
        **extra,
    )


def test_train_resume_export(tmp_path):
    write_photos(
        tmp_path,
        {
            "train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(4)],  # the photo's 4 corners
            "val": [photo_crop(240, 120, 288, 272, variant=v) for v in (0, 3)],
            "kodak": [photo_crop(350, 200, 64, 48)],
        },
    )
    plan1 = {"iterations": 6, "warmup_ae_iterations": 2, "small_crop_until": 3, "small_crop": 32, "small_batch": 2, "crop": 64, "batch": 2}
    args = tiny_run(tmp_path, tmp_path / "val", plan1, {"iterations": 4, "batch": 4}, ckpt_every=3, log_every=1, name="tiny-trained")
    main(args + ["--stages", "1"])
    log = (tmp_path / "run" / "train.log").read_text()
    assert "k-means initialised" in log and "perplexity" in log and "stage1 val iteration 6" in log
    main(args)  # resumes: stage 1 is done, runs stage 2 and the export
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage1: resumed at iteration 6" in log and "stage2 val iteration 4" in log
    card = json.loads((tmp_path / "models" / "tiny-trained.json").read_text())
    assert card["config"] == TINY.to_dict() and card["training"]["stage2"]["iterations_done"] == 4
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

    write_photos(tmp_path, {"train": [photo_crop(0, 0, 256, 192, variant=v) for v in range(3)]})
    (tmp_path / "models").mkdir()
    base = make_tiny_model(seed=7)
    base.save(tmp_path / "models" / "tiny-full.safetensors", storage="int8")
    causal = dataclasses.replace(TINY, causal=True)
    main(
        flags(
            out=tmp_path / "run",
            train=tmp_path / "train",
            val=tmp_path / "train",
            kodak="",
            config=causal.to_dict(),
            init_from=tmp_path / "models" / "tiny-full.safetensors",
            stages="2,export",
            stage2_plan={"iterations": 3, "batch": 4},
            ckpt_every=3,
            name="tiny-causal",
            base="tiny-full",
            export_dir=tmp_path / "models",
        )
    )
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage2 val iteration 3" in log and "on all val codes" in log
    card = json.loads((tmp_path / "models" / "tiny-causal.json").read_text())
    assert card["entropy_variant_of"] == "tiny-full" and card["config"]["causal"] is True
    full = Codec.from_file(tmp_path / "models" / "tiny-full.safetensors")
    fast = Codec.from_file(tmp_path / "models" / "tiny-causal.safetensors")
    assert fast.model_id.hex() == card["model_id"] != full.model_id.hex()
    rgb = photo_crop(100, 60, 120, 88, variant=2)
    assert torch.equal(fast.encode_codes([rgb])[0], full.encode_codes([rgb])[0])
    assert np.array_equal(np.asarray(fast.decompress(fast.compress(rgb))), np.asarray(full.decompress(full.compress(rgb))))


def test_one_resume_rule_names_and_metrics(tmp_path):
    """A run folder keeps the config and plans it started with: a rerun with the same command (or
    none) resumes, one asking for other settings is refused. Old plan names ("steps") are read,
    unknown ones refused; --name may not be a zoo alias; every logged figure is a JSON line."""
    import pytest

    write_photos(tmp_path, {"train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(2)]})
    plan = {"iterations": 3, "warmup_ae_iterations": 1, "small_crop_until": 0, "crop": 64, "batch": 2}

    def run(out="run", config=TINY.to_dict(), stage1_plan=plan, *extra):
        common = flags(train=tmp_path / "train", val=tmp_path / "train", kodak="", stages=1, log_every=1, ckpt_every=2)
        main(flags(out=tmp_path / out, config=config, stage1_plan=stage1_plan) + common + list(extra))

    run("run", TINY.to_dict(), plan, "--stop-at", "2")
    with pytest.raises(SystemExit, match="another --stage1-plan"):
        run("run", TINY.to_dict(), {**plan, "lr": 2e-4})  # not the default lr
    with pytest.raises(SystemExit, match="another --config"):
        run("run", {**TINY.to_dict(), "k": 64})
    run("run", TINY.to_dict(), {"steps": 3, "warmup_ae_steps": 1, "small_crop_until": 0, "crop": 64, "batch": 2})  # the old names
    log = (tmp_path / "run" / "train.log").read_text()
    assert "stage1: resumed at iteration 2" in log and "stage1 val iteration 3" in log
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "iteration" in r] == [1, 2, 3]
    assert [r["val_iteration"] for r in lines if "val_psnr" in r] == [2, 3] and all(r["stage"] == "stage1" for r in lines)
    from bench.curves import read_run  # what bench curves plots

    curves = read_run(tmp_path / "run")
    assert [i for i, _ in curves["stage1"]] == [2, 3] and curves["config"] == TINY.to_dict() and curves["stage2"] == []
    with pytest.raises(SystemExit, match="unknown field"):
        run("other", TINY.to_dict(), {"iteratons": 3})
    with pytest.raises(SystemExit, match="alias"):
        run("run", TINY.to_dict(), plan, "--name", "pqmim-default")


def test_yardstick_scores_what_the_codec_gives(tmp_path):
    """The yardstick's Kodak PSNR of a stage-1 run is the PSNR of real files made by the model
    that run exports (float32 weights and float32 transforms: the same codes and pixels), and
    its rate bound is the codes' empirical entropy."""
    import numpy as np
    import torch
    from PIL import Image

    from pqmim.evaluate import psnr_uint8

    from pqmim.train import yardstick

    write_photos(
        tmp_path,
        {
            "train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(3)],
            "kodak": [photo_crop(350, 200, 64, 48), photo_crop(100, 60, 64, 48, variant=2)],
        },
    )
    plan1 = {"iterations": 4, "warmup_ae_iterations": 2, "small_crop_until": 0, "crop": 64, "batch": 2}
    args = tiny_run(tmp_path, tmp_path / "train", plan1, {"iterations": 2, "batch": 4}, ckpt_every=4, storage="float32", name="tiny-yard")
    main(args)
    (row,) = yardstick.main([str(tmp_path / "run"), "--kodak", str(tmp_path / "kodak"), "--json", str(tmp_path / "yard.json")])
    assert row["iterations"] == 4 and row["val_psnr"] is not None
    # the card's own Kodak figure uses the codec's default transforms (bfloat16 on CPUs that
    # multiply it natively): compare with real files made in float32, as the yardstick measures
    codec = Codec.from_file(tmp_path / "models" / "tiny-yard.safetensors", transforms="float32")
    files = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((tmp_path / "kodak").iterdir())]
    real = np.mean([psnr_uint8(rgb, np.asarray(codec.decompress(codec.compress(rgb)))) for rgb in files])
    assert abs(row["kodak_psnr"] - real) < 1e-9
    assert 0 < row["rate_bound_bpp"] <= TINY.m * math.log2(TINY.k) / TINY.f**2
    assert json.loads((tmp_path / "yard.json").read_text())[0]["kodak_psnr"] == row["kodak_psnr"]
    k = 16
    uniform = [torch.arange(k).repeat(3, 2).reshape(3, 4, 8)]  # every code equally often, 3 sub-codebooks
    assert abs(yardstick.code_entropy_bits(uniform, k) - 3 * 4) < 1e-12
    assert yardstick.code_entropy_bits([torch.zeros(3, 4, 8, dtype=torch.long)], k) == 0


def test_yardstick_unquantized_is_the_transform_ceiling(tmp_path):
    """On a trained model the unquantized column is the encoder-decoder without the quantizer:
    higher than the quantized PSNR, by less than the transform could lose (a swapped or
    broken column fails one side)."""
    import shutil

    from conftest import PHOTO, ROOT
    from pqmim.train import yardstick

    (tmp_path / "kodak").mkdir()
    shutil.copy(PHOTO, tmp_path / "kodak")
    (row,) = yardstick.main([str(ROOT / "models" / "pqmim-q3.safetensors"), "--kodak", str(tmp_path / "kodak")])
    assert row["kodak_psnr"] + 0.3 < row["kodak_psnr_unquantized"] < row["kodak_psnr"] + 8
    assert row["iterations"] == 0 and row["val_psnr"] is None


@needs_shared
def test_taef2_loads_and_reconstructs(tmp_path):
    """The taef2 architecture written from its description takes every tensor of the shared
    weight files (strict load) and reconstructs a photo; the cost command runs."""
    from PIL import Image

    from pqmim.train import taef2

    Image.fromarray(photo_crop(200, 100, 128, 96)).save(tmp_path / "crop.png")
    out = taef2.main(["--image", str(tmp_path / "crop.png")])
    assert out["taef2_psnr_unquantized"] > 24  # an untrained or misloaded net gives well under 15 dB
    assert out["taef2"]["decode_gmac"] > out["pqmim"]["decode_gmac"] > 0
