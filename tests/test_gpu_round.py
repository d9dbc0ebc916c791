"""The GPU round's machinery on this CPU: data packs, int8 model files, time-budgeted plans,
retired model ids, shipping under the models/ budget, and the whole trip as a dry run."""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, TINY, make_tiny_model
from pqmim import BitstreamError, ModelFileError, gpu_round, pack, zoo
from pqmim import format as fmt
from pqmim.codec import Codec
from pqmim.data import CropSource, center_crops, photos as source_photos
from pqmim.models import PQMIM
from pqmim.models.weights import SCALE_PREFIX, dequantize_int8, quantize_int8
from pqmim.train.loop import finished, lr_at
from pqmim.train.stage1 import Stage1Plan


def photos(folder, n, size=(300, 260), seed=0):
    """Smooth colour fields with texture: compressible like photos, not like noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = size
        yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
        base = np.stack([np.sin(6 * xx + i), np.cos(5 * yy - i), np.sin(4 * (xx + yy) + 2 * i)], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    return folder


# ----------------------------------------------------------------------------- data packs
def test_pack_is_deterministic_fits_its_limit_and_reads_back(tmp_path):
    train, val = photos(tmp_path / "train", 5), photos(tmp_path / "val", 3, (280, 270), seed=1)
    m = pack.build([train], tmp_path / "a.tar", val, max_side=200)
    pack.build([train], tmp_path / "b.tar", val, max_side=200)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert m["images"] == 5 and m["val"]["crops"] == 3 and m["jpeg_quality"] == pack.QUALITIES[0]
    imgs = source_photos(tmp_path / "a.tar")
    assert len(imgs) == 5 and all(max(im.shape[:2]) == 200 and im.dtype == np.uint8 for im in imgs)
    assert m["megapixels"] == round(sum(im.shape[0] * im.shape[1] for im in imgs) / 1e6, 2)
    assert center_crops(tmp_path / "a.tar", 256, 16).shape == (3, 3, 256, 256)
    # a tighter limit lowers the JPEG quality, never the limit
    no_val = pack.build([train], tmp_path / "n.tar", None, max_side=200)
    limit = int(no_val["bytes"] * 0.7)
    small = pack.build([train], tmp_path / "c.tar", None, max_side=200, max_bytes=limit)
    assert small["jpeg_quality"] < no_val["jpeg_quality"] and small["bytes"] <= limit and small["val"]["crops"] == 0
    with pytest.raises(ValueError, match="do not fit"):
        pack.build([train], tmp_path / "d.tar", val, max_bytes=10_000)
    assert not (tmp_path / "d.tar").exists()
    (tmp_path / "e.tar").write_bytes((tmp_path / "a.tar").read_bytes().replace(b'"pack_version": 1', b'"pack_version": 9'))
    with pytest.raises(ValueError, match="version 9"):
        source_photos(tmp_path / "e.tar")


def test_crops_are_the_same_batch_from_a_folder_or_a_pack_tensor(tmp_path):
    """CropSource cuts crops from tensors (on a GPU in the round): the batch is a pure function of
    the indices and the generator, the same draws as the numpy crops of earlier releases."""
    imgs = source_photos(photos(tmp_path / "t", 3))
    src = CropSource(imgs)
    a = src.crops([0, 2, 1], 64, np.random.default_rng(7))
    b = src.crops([0, 2, 1], 64, np.random.default_rng(7))
    assert a.shape == (3, 3, 64, 64) and torch.equal(a, b)
    rng = np.random.default_rng(7)  # the draw order: y, x, flip per crop
    y, x, flip = rng.integers(260 - 64 + 1), rng.integers(300 - 64 + 1), rng.random() < 0.5
    ref = imgs[0][y : y + 64, x : x + 64]
    ref = ref[:, ::-1] if flip else ref
    assert torch.equal(a[0], torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255)


# ----------------------------------------------------------------------------- int8 weights
def test_int8_model_files_are_exact_and_half_the_size(tmp_path):
    model = make_tiny_model(seed=1)
    model.save(tmp_path / "f16.safetensors", storage="float16")
    model.save(tmp_path / "i8.safetensors", storage="int8")
    a, b = PQMIM.load(tmp_path / "i8.safetensors"), PQMIM.load(tmp_path / "i8.safetensors")
    assert a.model_id() == b.model_id() != PQMIM.load(tmp_path / "f16.safetensors").model_id()
    w = model.entropy.blocks[0].qkv.weight  # (96, 32): stored as int8, one scale per output row
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (w.shape[0],)
    assert torch.equal(a.entropy.blocks[0].qkv.weight, dequantize_int8(q, scale))  # one float32 multiply
    assert (dequantize_int8(q, scale) - w).abs().max() <= scale.max() / 2 + 1e-7
    for small in ("quantizer.codebooks", "decoder.net.0.weight"):  # under INT8_MIN_ELEMENTS: float16
        assert torch.equal(a.state_dict()[small], model.state_dict()[small].half().float())
    # the codec with int8 weights decodes exactly what it encoded
    codec = Codec.from_file(tmp_path / "i8.safetensors")
    rgb = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    data = codec.compress(rgb)
    _, codes = codec.read_codes(data)
    assert torch.equal(codes, codec.encode_codes([rgb])[0])
    big = PQMIM(TINY.__class__(**{**TINY.to_dict(), "widths": (32, 64, 64, 128)}))
    big.save(tmp_path / "big16.safetensors", storage="float16")
    big.save(tmp_path / "big8.safetensors", storage="int8")
    assert (tmp_path / "big8.safetensors").stat().st_size < 0.55 * (tmp_path / "big16.safetensors").stat().st_size


def test_damaged_int8_files_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    make_tiny_model().save(tmp_path / "m.safetensors", storage="int8")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta = f.metadata()
    t = load_file(str(tmp_path / "m.safetensors"))
    key = next(k for k in t if k.startswith(SCALE_PREFIX))
    cases = {
        "bad_scale": ({**t, key: torch.full_like(t[key], float("inf"))}, meta, "non-finite scales"),
        "no_scale": ({k: v for k, v in t.items() if k != key}, meta, "has no scale"),
        "scale_shape": ({**t, key: t[key][:1]}, meta, "does not match its scale"),
        "scales_in_fp16": (t, {**meta, "storage": "float16"}, "int8 scales in a float16 file"),
        "storage": (t, {**meta, "storage": "int3"}, "unknown weight storage"),
    }
    for name, (tensors, md, msg) in cases.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata=md)
        with pytest.raises(ModelFileError, match=msg):
            PQMIM.load(tmp_path / f"{name}.safetensors")


def test_shipped_models_fit_the_budget_and_are_int8():
    root = gpu_round.ROOT / "models"
    files = list(root.rglob("*.safetensors"))
    assert files and sum(p.stat().st_size for p in files) <= gpu_round.MODELS_BUDGET
    from safetensors import safe_open

    for p in files:
        with safe_open(str(p), framework="pt") as f:
            assert f.metadata().get("storage") == "int8", p


# ----------------------------------------------------------------------------- retired ids
def test_a_retired_models_file_names_the_release_that_decodes_it(tmp_path, capsys):
    retired = json.loads((gpu_round.ROOT / "models" / "retired.json").read_text())["retired"]
    old_q3 = next(r for r in retired if r["name"] == "pqmim-q3")
    assert old_q3["model_id"] == "daa47f29" and "0.1.0" in old_q3["decoded_by"]
    assert "retired" in zoo.describe_id(bytes.fromhex("daa47f29")) and "pqmim 0.1.0" in zoo.describe_id(bytes.fromhex("daa47f29"))
    # a file made with the fp16 q3 of 0.1.0: the CLI refuses it with that message, and the API too
    data = fmt.pack(fmt.Header(bytes.fromhex("daa47f29"), 64, 48, 8, 0, 0), b"\x00" * 16)
    (tmp_path / "old.pqm").write_bytes(data)
    from pqmim.cli import main as cli

    assert cli(["decode", str(tmp_path / "old.pqm"), "-o", str(tmp_path / "old.png")]) == 1
    err = capsys.readouterr().err
    assert "pqmim-q3" in err and "retired" in err and "pqmim 0.1.0" in err and not (tmp_path / "old.png").exists()
    with pytest.raises(BitstreamError, match=r"pqmim-q3.*retired.*pqmim 0\.1\.0"):
        Codec(make_tiny_model()).decompress(data)


def test_ship_keeps_the_budget_and_retires_replaced_ids(tmp_path, monkeypatch):
    models, export = tmp_path / "models", tmp_path / "round" / "export"
    models.mkdir()
    export.mkdir(parents=True)
    old, new = make_tiny_model(seed=1), make_tiny_model(seed=2)
    old.save(models / "pqmim-q9.safetensors", storage="int8")
    old_id = PQMIM.load(models / "pqmim-q9.safetensors").model_id().hex()
    (models / "pqmim-q9.json").write_text(json.dumps({"model_id": old_id}))
    new.save(export / "pqmim-q9.safetensors", storage="int8")
    new_id = PQMIM.load(export / "pqmim-q9.safetensors").model_id().hex()
    (export / "pqmim-q9.json").write_text(json.dumps({"model_id": new_id}))
    with pytest.raises(SystemExit, match="receive first"):  # no Kodak figures yet
        gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models)
    (export / "pqmim-q9.json").write_text(json.dumps({"model_id": new_id, "kodak": {"bpp": 0.1, "psnr": 30.0}}))
    monkeypatch.setattr(gpu_round.here, "MODELS_BUDGET", 1000)
    with pytest.raises(SystemExit, match="budget"):
        gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models)
    monkeypatch.setattr(gpu_round.here, "MODELS_BUDGET", 64 * 10**6)
    gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models, retired_in="test")
    assert json.loads((models / "pqmim-q9.json").read_text())["model_id"] == new_id
    retired = json.loads((models / "retired.json").read_text())["retired"]
    assert [(r["model_id"], r["name"]) for r in retired] == [(old_id, "pqmim-q9")]
    # a standalone rung replacing an entropy variant leaves the variant's base to retire; a base
    # that a shipping variant still needs is refused, and nothing moves
    for name, model_id, card in (("pqmim-q9-full", "aa", {}), ("pqmim-q8", "bb", {"entropy_variant_of": "pqmim-q9-full"})):
        old.save(models / f"{name}.safetensors", storage="int8")
        (models / f"{name}.json").write_text(json.dumps({"model_id": model_id, **card}))
    with pytest.raises(SystemExit, match="base of pqmim-q8"):
        gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models, retire=["pqmim-q9-full"])
    assert (models / "pqmim-q9-full.safetensors").exists() and len(json.loads((models / "retired.json").read_text())["retired"]) == 1
    monkeypatch.setattr(gpu_round.here, "MODELS_BUDGET", (models / "pqmim-q9.safetensors").stat().st_size * 1.5)
    with pytest.raises(SystemExit, match="budget"):  # one model's worth: only within budget without the base
        gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models, retire=["pqmim-q8"])
    gpu_round.ship(tmp_path / "round", ["pqmim-q9"], models, retired_in="test", retire=["pqmim-q8", "pqmim-q9-full"])
    assert not list(models.glob("pqmim-q9-full.*")) and not list(models.glob("pqmim-q8.*"))
    retired = json.loads((models / "retired.json").read_text())["retired"]
    assert [(r["model_id"], r["name"]) for r in retired][1:] == [("bb", "pqmim-q8"), ("aa", "pqmim-q9-full")]
    monkeypatch.setattr(gpu_round.here, "MODELS_BUDGET", 64 * 10**6)
    # a round's baselines replace every shipped baseline (another architecture's too)
    (models / "baselines").mkdir()
    for stem in ("bmshj2018-hyperprior-lambda0.0004", "bmshj2018-hyperprior-lambda0.0018"):
        (models / "baselines" / f"{stem}.safetensors").write_bytes(b"old")
        (models / "baselines" / f"{stem}.json").write_text("{}")
    (export / "mbt2018-mean-lambda0.0018.safetensors").write_bytes(b"new")
    (export / "mbt2018-mean-lambda0.0018.json").write_text(json.dumps({"arch": "mbt2018-mean", "kodak": {"bpp": 0.2, "psnr": 28.0}}))
    gpu_round.ship(tmp_path / "round", ["mbt2018-mean-lambda0.0018"], models)
    assert sorted(p.name for p in (models / "baselines").iterdir()) == [
        "mbt2018-mean-lambda0.0018.json",
        "mbt2018-mean-lambda0.0018.safetensors",
    ]


# ----------------------------------------------------------------------------- time budgets
def test_time_budgeted_plans_decay_over_their_minutes_and_stop_on_time():
    plan = Stage1Plan(iterations=10**6, lr=1e-3, minutes=10)
    assert not finished(500, 599.0, plan) and finished(500, 600.0, plan) and finished(10**6, 1.0, plan)
    assert lr_at(50, 1.0, plan) == pytest.approx(1e-3 * 51 / 100)  # warm-up by iterations
    assert lr_at(1000, 300.0, plan) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # half the time: half the cosine
    assert lr_at(1000, 600.0, plan) == pytest.approx(5e-5)
    by_iterations = Stage1Plan(iterations=1100, lr=1e-3)
    assert lr_at(600, 10**6, by_iterations) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))  # the wall time is ignored


def test_default_plan_covers_the_ladder_and_baselines_within_what_comes_back(tmp_path):
    plan = gpu_round.default_plan(20, ".round/pack.tar")
    names = [j.name for j in plan.jobs]
    assert names[:5] == [f"pqmim-q{q}" for q in range(1, 6)] and sum(j.kind == "baseline" for j in plan.jobs) == 4
    for j in plan.jobs:
        s1 = json.loads(j.args[j.args.index("--stage1-plan" if j.kind == "pqmim" else "--plan") + 1])
        s2 = json.loads(j.args[j.args.index("--stage2-plan") + 1]) if "--stage2-plan" in j.args else {"minutes": 0}
        assert s1["crop"] == 256 and s1["minutes"] + s2["minutes"] <= 20 - gpu_round.OVERHEAD_MIN + 1e-9
    # what one collect call returns fits the device's limits (8 files of 16 MiB, 64 MiB in all)
    assert gpu_round.PART_BYTES <= 16 << 20 and gpu_round.CALL_BYTES + (1 << 20) <= 64 << 20
    assert gpu_round.CALL_BYTES // gpu_round.PART_BYTES + 1 <= 8
    # and the int8 weights of these architectures come back in at most two calls, even uncompressed
    from bench.baselines import Baseline, build

    sizes = sum(p.stat().st_size for p in (gpu_round.ROOT / "models").glob("pqmim-q*.safetensors"))
    for arch in ("bmshj2018-hyperprior", "mbt2018-mean"):
        Baseline(build(arch), arch, 128, 192).save(tmp_path / f"{arch}.safetensors")
        sizes += 2 * (tmp_path / f"{arch}.safetensors").stat().st_size
    assert sizes <= 2 * gpu_round.CALL_BYTES
    with pytest.raises(ValueError, match="no job named"):
        gpu_round.default_plan(20, "p.tar", only=["pqmim-q7"])


def test_a_rung_trained_on_from_a_model_keeps_its_codebooks():
    """From scratch, a rung's codebooks are k-means initialised after a warm-up without the
    quantizer; from a model (--init) they are set already, and that warm-up would only move the
    encoder away from them, so it starts quantized and with a smaller step."""
    plan = gpu_round.default_plan(8, "p.tar", only=["pqmim-q2", "pqmim-q3"], init={"pqmim-q3": "models/pqmim-q3.safetensors"})
    s1 = {j.name: json.loads(j.args[j.args.index("--stage1-plan") + 1]) for j in plan.jobs}
    assert s1["pqmim-q3"]["warmup_ae_iterations"] == 0 and s1["pqmim-q3"]["lr"] < s1["pqmim-q2"]["lr"]
    assert s1["pqmim-q2"]["warmup_ae_iterations"] > 0
    q3 = next(j for j in plan.jobs if j.name == "pqmim-q3")
    assert q3.args[q3.args.index("--init-from") + 1] == "models/pqmim-q3.safetensors"


def test_perceptual_jobs_run_only_when_named_and_their_arguments_parse(tmp_path):
    """They serve the shipped q1-q3, so a plain round (which may retrain those) leaves them out;
    named, each is a `pqmim.train.perceptual` command whose plan is valid and online on the GPU;
    the texture trial tunes the shipped texture decoder for the models it serves."""
    from pqmim.models.perceptual import RefinerConfig
    from pqmim.train import perceptual
    from pqmim.train.loop import plan_from_dict

    assert not [j for j in gpu_round.default_plan(20, "p.tar").jobs if j.kind == "perceptual"]
    names = ["pqmim-perceptual-lpips", "pqmim-perceptual-gan", "pqmim-perceptual-wide", "pqmim-perceptual-alex", "pqmim-perceptual-texture"]
    plan = gpu_round.default_plan(8, "p.tar", only=names)
    assert [j.name for j in plan.jobs] == names
    adv, kinds, mse = [], [], []
    for job in plan.jobs:
        argv = gpu_round.device.job_argv(job, tmp_path, "export")  # as collect exports an unfinished job
        assert argv[1:3] == ["-m", "pqmim.train.perceptual"]
        args = perceptual.parser().parse_args(argv[3:])
        p = plan_from_dict(perceptual.PerceptualPlan, json.loads(args.plan))
        assert p.online and p.ema > 0 and p.snapshot_every > 0 and p.minutes <= 8 - gpu_round.OVERHEAD_MIN
        assert args.device == "cuda" and args.export == str(tmp_path / "export") and args.stages == "export"
        assert args.train == args.val == "p.tar"
        if job.name.endswith("texture"):
            assert args.models == gpu_round.plan.TEXTURE_SERVES and str(args.texture) == gpu_round.plan.TEXTURE_FILE
            assert (ROOT / args.texture).is_file()  # what the job reads is what ships
        else:
            assert args.models == gpu_round.plan.PERCEPTUAL_SERVES and args.texture is None
        RefinerConfig.from_dict(p.refiner)
        adv.append(p.k_adv)
        kinds.append(p.d_kind)
        mse.append(p.k_mse)
    assert adv[0] == 0 and all(a > 0 for a in adv[1:]) and kinds == ["patch"] * 3 + ["alex"] * 2
    assert mse[-1] == 0 and all(m > 0 for m in mse[:-1])  # the texture trial: no pixel MSE, which would teach it to ignore the noise


def test_a_perceptual_decoder_ships_only_once_selected(tmp_path):
    from pqmim.models.perceptual import Refiner, RefinerConfig

    models, export = tmp_path / "models", tmp_path / "round" / "export"
    models.mkdir()
    export.mkdir(parents=True)
    Refiner(RefinerConfig(width=8, channels=16, blocks=1)).save(export / "pqmim-perceptual.safetensors", [])
    card = {"kind": zoo.PERCEPTUAL, "serves": []}
    (export / "pqmim-perceptual.json").write_text(json.dumps(card))
    with pytest.raises(SystemExit, match="perceptual-select"):
        gpu_round.ship(tmp_path / "round", ["pqmim-perceptual"], models)
    (export / "pqmim-perceptual.json").write_text(json.dumps({**card, "selection": {"chosen": "x"}}))
    gpu_round.ship(tmp_path / "round", ["pqmim-perceptual"], models)
    assert Refiner.load(models / "pqmim-perceptual.safetensors").cfg.width == 8


# ----------------------------------------------------------------------------- the whole trip
def test_dry_run_of_the_whole_round(tmp_path):
    """Pack, launch detached jobs, poll, collect in parts (stopping an overrunning job and
    exporting it from its checkpoint), reassemble, write cards, measure with the real codecs."""
    t0 = time.time()
    train, kodak = photos(tmp_path / "train", 4, (320, 288)), photos(tmp_path / "kodak", 2, (96, 80), seed=5)
    rows = gpu_round.dry_run(tmp_path / "run", train, kodak)
    assert time.time() - t0 < 300
    outs = sorted((tmp_path / "run").glob("OUT*"))
    assert len(outs) >= 2  # more than one call's worth: the continuation path ran
    for out in outs:
        parts = sorted(out.glob("round.tar.gz.*"))
        assert parts and len(parts) + 1 <= 8 and all(p.stat().st_size <= 32 << 10 for p in parts)
        assert sum(p.stat().st_size for p in parts) <= 64 << 10
    cards = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run" / "received" / "export").glob("*.json")}
    assert set(cards) == {"tiny-pqmim", "tiny-hyperprior"} and {r["name"] for r in rows} == set(cards)
    pq, hp = cards["tiny-pqmim"], cards["tiny-hyperprior"]
    assert pq["kodak"]["images"] == 2 and pq["kodak"]["all_exact"] and pq["storage"] == "int8"
    s1 = pq["training"]["stage1"]
    assert s1["minutes"] == 0.1 and 5 <= s1["wall_s"] <= 30 and s1["seen"] == 2 * s1["iterations_done"] > 0  # stopped by its time budget
    assert pq["data"]["train_images"] == 4 and pq["round"]["device"] == "cpu"
    assert 0 < hp["training"]["iterations_done"] < 10**6 and hp["kodak"]["bpp"] > 0  # stopped by collect, exported from its checkpoint
    codec = Codec.from_file(tmp_path / "run" / "received" / "export" / "tiny-pqmim.safetensors")
    assert codec.model_id.hex() == pq["model_id"]
    # a damaged part is caught by the manifest's hash, a missing one is named
    part = sorted(outs[0].glob("round.tar.gz.*"))[1]
    damaged = bytearray(part.read_bytes())
    damaged[-1] ^= 1
    part.write_bytes(bytes(damaged))
    with pytest.raises(SystemExit, match="SHA-256"):
        gpu_round.reassemble(outs, tmp_path / "again")
    with pytest.raises(SystemExit, match="part 2 of"):
        gpu_round.reassemble(outs[:1], tmp_path / "again")


def test_exactness_cross_check_between_machines(tmp_path):
    """The xcheck steps (CPU files decoded on the device, device files decoded here), run with the
    device being this CPU: every round trip is exact, and a file that does not decode exactly is
    counted as such, with the reason."""
    model_file = tmp_path / "m.safetensors"
    make_tiny_model(seed=4).save(model_file, storage="int8")
    folder = tmp_path / "xcheck"
    gpu_round.xcheck_prepare(photos(tmp_path / "kodak", 3, (120, 90), seed=2), model_file, folder)
    res = gpu_round.xcheck_device(tmp_path / "OUT", folder, device="cpu")
    assert res["cpu_to_gpu_exact"] == 3 and res["images"] == 3
    back = gpu_round.xcheck_receive(tmp_path / "OUT", folder, dest=tmp_path / "x.json")
    assert back["gpu_to_cpu_exact"] == 3 and json.loads((tmp_path / "x.json").read_text())["gpu_to_cpu_exact"] == 3
    bad = sorted((folder / "cpu").glob("*.pqm"))[0]  # a file damaged on the way is counted, with the reason
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad.write_bytes(bytes(data))
    res = gpu_round.xcheck_device(tmp_path / "OUT2", folder, device="cpu")
    assert res["cpu_to_gpu_exact"] == 2 and "corrupted" in res["per_image"][bad.stem]["error"]
    other = tmp_path / "other.safetensors"  # the model travels by its path: another file there is refused
    make_tiny_model(seed=5).save(other, storage="int8")
    shutil.copyfile(other, model_file)
    with pytest.raises(SystemExit, match="not the model"):
        gpu_round.xcheck_device(tmp_path / "OUT3", folder, device="cpu")


def test_a_new_rung_is_judged_against_the_shipped_ladder_at_its_own_rate():
    ladder = [(0.4, 27.0), (0.1, 25.0)]
    assert gpu_round.ladder_psnr_at(0.2, ladder) == pytest.approx(26.0)  # linear in log-rate
    assert gpu_round.ladder_psnr_at(0.05, ladder) is None and gpu_round.ladder_psnr_at(0.5, ladder) is None
