"""The bench suite: --quick runs the whole pipeline end to end; its pieces measure what they say."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, needs_shared, photo_crop
from pqmim import zoo

sys.path.insert(0, str(ROOT))
pytest.importorskip("compressai")


def run_module(*argv: str) -> subprocess.CompletedProcess:
    """`python -m argv...` from the checkout's root, as a user runs the bench."""
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, timeout=900)


@needs_shared  # Kodak, the val photos and both sets of weights
def test_bench_quick_end_to_end(tmp_path):
    r = run_module("bench", "run", "--quick", "--results", str(tmp_path), "--no-progress", "--threads", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    kod = json.loads((tmp_path / "kodak.json").read_text())
    assert kod["images"] == 2 and kod["git_commit"] and kod["versions"]["torch"]
    by_codec = {}
    for p in kod["points"]:
        by_codec.setdefault(p["codec"], []).append(p)
        assert p["images"] == 2 and p["bpp"] > 0 and 0 < p["ms_ssim"] < 1 and 0 < p["lpips"] < 1 and p["encode_s"] > 0
        assert p["bpp"] == pytest.approx(np.mean([row["bytes"] * 8 / (512 * 768) for row in p["rows"]]))
    assert [p["label"] for p in by_codec["pqmim"]] == ["q1", "q3"]
    if zoo.perceptual_decoders():  # the same files through the perceptual decoder: same rates, other pixels
        perceptual = by_codec["pqmim-perceptual"]
        assert [p["label"] for p in perceptual] == ["q1", "q3"]
        assert [p["bpp"] for p in perceptual] == [p["bpp"] for p in by_codec["pqmim"]]
        assert [p["psnr"] for p in perceptual] != [p["psnr"] for p in by_codec["pqmim"]]
    assert len(by_codec["bmshj2018-hyperprior"]) == 1
    assert len(by_codec["jpeg420"]) == 3 and len(by_codec["webp"]) == 3
    fid = json.loads((tmp_path / "fid.json").read_text())
    assert fid["images"] == 2 and fid["patches"] > 10 and all(p["fid"] > 0 for p in fid["points"])
    bd = json.loads((tmp_path / "bdrate.json").read_text())
    assert set(bd) == {"psnr", "ms_ssim"} and "jpeg420" in bd["psnr"]
    for name in ("kodak_psnr.png", "kodak_msssim.png", "kodak_lpips.png", "fid.png", "visual.png", "visual_low.png"):
        assert (tmp_path / name).stat().st_size > 5_000, name
    assert "BD-rate" in r.stdout and "FID" in r.stdout

    # the report alone redraws from the JSON, through the `pqmim bench` alias too
    (tmp_path / "kodak_psnr.png").unlink()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:begin (python -m bench run writes this section) -->\nold\n<!-- bench:end -->\ntail\n")
    r = run_module("pqmim", "bench", "report", "--results", str(tmp_path), "--readme", str(readme))
    assert r.returncode == 0, r.stderr[-3000:]
    text = readme.read_text()
    assert (tmp_path / "kodak_psnr.png").exists() and "old" not in text and "BD-rate" in text and text.endswith("tail\n")

    # a second run takes every point from the cache: nothing is measured again
    cached = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.json")}
    r = run_module("bench", "run", "--quick", "--results", str(tmp_path), "--no-progress", "--threads", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("*.json")} == cached


def test_bd_rate_reports_overlap():
    from bench.bdrate import bd_rate, monotone

    anchor = [(0.1, 25.0), (0.2, 27.0), (0.4, 29.0), (0.8, 31.0)]
    assert bd_rate(anchor, [(b * 0.8, q) for b, q in anchor])["bd_rate"] == pytest.approx(-20.0)
    assert bd_rate(anchor, [(b * 1.5, q) for b, q in anchor])["bd_rate"] == pytest.approx(50.0)
    far = bd_rate(anchor, [(0.05, 20.0), (0.1, 22.0)])
    assert far["bd_rate"] is None and not far["meaningful"]
    thin = bd_rate(anchor, [(0.05, 20.0), (0.1, 22.0), (0.3, 26.0)])
    assert thin["bd_rate"] is not None and not thin["meaningful"] and "overlap" in thin["why"]
    assert monotone([(0.2, 21.0), (0.18, 21.5), (0.3, 25.0)]) == [(0.18, 21.5), (0.3, 25.0)]


@needs_shared  # the LPIPS backbone weights
def test_lpips_uses_the_local_backbone():
    from bench.classical import decode, encode
    from pqmim.checkout import LPIPS_BACKBONE
    from pqmim.evaluate import LPIPSAlex

    lp = LPIPSAlex(LPIPS_BACKBONE)
    rgb = photo_crop(200, 100, 256, 256)
    low, high = (lp(rgb, decode(encode("jpeg420", rgb, q))) for q in (5, 90))
    assert lp(rgb, rgb) == 0.0 and 0.2 < low < 0.9 and high < 0.1 < low


@needs_shared  # the published reference curves
def test_published_curves_are_marked():
    from bench.report import family_label, published

    refs = published()
    assert set(refs) == {"bmshj2018-hyperprior", "mbt2018-mean"}
    assert all(len(r["bpp"]) == len(r["psnr"]) >= 6 for r in refs.values())
    assert "ours" in family_label("bmshj2018-hyperprior") and family_label("webp") == "WebP (Pillow)"


def test_training_curves_keep_the_final_attempt():
    from bench.curves import parse_log

    log = "\n".join(
        [
            "10:00 start: stages ['2'] on CPU, config {'widths': [8, 8], 'm': 2}",
            "10:01 stage2 val step 100: 6.600 bits/code on masked val codes",  # an attempt later restarted
            "10:02 start: stages ['2'] on CPU, config {'widths': [8, 8], 'm': 2}",
            "10:03 stage2 val step 150: 6.400 bits/code on masked val codes",
            "10:04 start: stages ['1', '2'] on CPU, config {'widths': [8, 8], 'm': 2}",
            "10:05 stage1: resumed at step 500",
            "10:05 stage2: resumed at step 150",
            "10:06 stage2 val step 300: 6.200 bits/code on masked val codes",
        ]
    )
    run = parse_log(log)
    assert run["config"]["m"] == 2 and run["stage2"] == [(150, 6.4), (300, 6.2)] and run["stage1"] == []


def test_pqmim_bench_is_the_bench_suite():
    from pqmim.cli import main

    assert main(["bench"]) == 2  # usage, like `python -m bench`


def test_default_point_against_a_curve():
    from bench.bdrate import point_saving, rate_at

    curve = [(0.1, 25.0), (0.4, 29.0)]
    assert rate_at(curve, 27.0) == pytest.approx(0.2)  # halfway in log-rate
    assert point_saving(0.1, 27.0, curve) == pytest.approx(-50.0)
    assert point_saving(0.1, 30.0, curve) is None


def test_speed_bench_times_pqmim_beside_webp_and_avif(tmp_path):
    """`python -m bench speed` on the shipped photo and a small downscale of it: every row has
    real times and sizes, the classical codecs are held to pqmim's file size, and the same file
    is timed through the perceptual decoder too (the default model has one)."""
    out = tmp_path / "speed.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "speed",
            "--image",
            str(ROOT / "examples" / "kodim23.png"),
            "--small",
            "96x64",
            "--repeat",
            "1",
            "--threads",
            "1",
            "--perceptual",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())
    assert {r["image"] for r in rows} == {"768x512", "96x64"}
    for size in ("768x512", "96x64"):
        pq, perceptual = [r for r in rows if r["image"] == size and r["codec"].startswith("pqmim")]
        assert pq["encode_s"] > 0 and pq["decode_s"] > 0 and pq["bytes"] > 0 and pq["decode_peak_mb"] > 0
        assert perceptual["codec"].endswith("decoded --perceptual") and perceptual["bytes"] == pq["bytes"] and perceptual["decode_s"] > 0
        assert pq["decode_start_s"] > 0 and perceptual["decode_start_s"] > 0
        for r in rows:
            if r["image"] == size and r["codec"] in ("webp", "avif") and "skipped" not in r:
                assert r["encode_s"] > 0 and (r["bytes"] <= pq["bytes"]) != r["over_budget"]


@needs_shared  # Kodak and the LPIPS weights
def test_bench_progressive_quick(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n<!-- progressive:begin (python -m bench progressive writes this section) -->\nold\n<!-- progressive:end -->\ntail\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "progressive",
            "--quick",
            "--no-fid",
            "--results",
            str(tmp_path),
            "--readme",
            str(readme),
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "progressive_quick.json").read_text())
    assert [p["label"] for p in res["send"]] == ["q1 s=1", "q1 s=4", "q3 s=1", "q3 s=4"]
    for model in ("pqmim-q1", "pqmim-q3"):
        pts = [p for p in res["send"] if p["model"] == model]
        assert pts[0]["bpp"] < pts[1]["bpp"] and all(p["images"] == 2 for p in pts)
    for prefix in res["prefix"]:
        assert prefix["prefix_bpp"] == sorted(prefix["prefix_bpp"]) and 0 < prefix["table_bytes"] < 30
    for mb in res["max_bytes"]:  # never over
        assert mb["within"] == 2 and all(row["bytes"] <= mb["budget"] for row in mb["rows"])
    assert res["tiny"]["codecs"]["jpeg420"]["fits"] == 0  # JPEG's headers alone are over 200 bytes
    for name in ("progressive_psnr.png", "progressive_quick.png", "tiny_quick.png"):
        assert (tmp_path / name).stat().st_size > 5_000, name
    text = readme.read_text()
    assert "old" not in text and "--max-bytes N" in text and text.endswith("tail\n")


def test_fast_fid_equals_torch_fidelitys_and_the_bootstrap_tells_decoders_apart():
    """`frechet` gives torch-fidelity's FID in both its forms (n x n with fewer samples than dimensions, d x d with more);
    the paired bootstrap's interval holds 0 for a decoder against itself, lies above 0 for a
    worse one and below for a better one."""
    import torch

    from bench.fid import fid_differences, fid_kid_of, frechet

    rng = np.random.default_rng(0)
    groups = [3, 5, 2, 4, 6, 3, 5, 4, 2, 6]  # patches per photo
    n, d = sum(groups), 96
    reference = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    base = reference + torch.from_numpy(rng.normal(scale=0.8, size=(n, d)).astype(np.float32))
    fid = fid_kid_of(reference, base)["fid"]
    assert frechet(reference.numpy(), base.numpy()) == pytest.approx(fid, rel=1e-6)
    assert frechet(base.numpy()[:30], reference.numpy()) == pytest.approx(frechet(reference.numpy(), base.numpy()[:30]), rel=1e-9)
    # weights count rows as repeats: what the bootstrap's draws use instead of repeating photos
    times = rng.integers(1, 4, size=n)
    repeated = np.repeat(np.arange(n), times)
    assert frechet(reference.numpy(), base.numpy(), times) == pytest.approx(
        frechet(reference.numpy()[repeated], base.numpy()[repeated]), rel=1e-9
    )
    with pytest.raises(ValueError, match="weights"):
        frechet(reference.numpy(), base.numpy()[:30], times)
    # more samples than dimensions: the d x d form, the same FID (and the same with weights)
    many = np.concatenate([reference.numpy()] * 3), np.concatenate([base.numpy(), base.numpy()[::-1], base.numpy() + 0.1])
    assert len(many[0]) > d and frechet(*many) == pytest.approx(fid_kid_of(*map(torch.from_numpy, many))["fid"], rel=1e-6)
    assert frechet(*many, np.tile(times, 3)) == pytest.approx(
        frechet(*(m[np.repeat(np.arange(3 * n), np.tile(times, 3))] for m in many)), rel=1e-6
    )
    worse = base + 0.5
    better = reference + torch.from_numpy(rng.normal(scale=0.3, size=(n, d)).astype(np.float32))
    same, up, down = fid_differences(reference, base, [base, worse, better], groups, draws=50)
    assert same == (0.0, 0.0) and up[0] > 0 and down[1] < 0
    with pytest.raises(ValueError, match="groups"):
        fid_differences(reference, base, [base[:-1]], groups)


def test_perceptual_selection_holds_out_the_bench_images_and_picks_the_best_that_serves_all(tmp_path, capsys):
    """The held-out photos are never the bench's FID images; --pick takes the lowest score among
    candidates serving every model measured, with its run's card and the snapshot's iteration,
    and says so when the bootstrap interval does not show its FID lower than the default's."""
    from PIL import Image

    from bench.fid import spread
    from bench.perceptual_select import BENCH_FID_IMAGES, held_out, pick
    from pqmim.models.perceptual import Refiner, RefinerConfig

    val = tmp_path / "val"
    val.mkdir()
    for i in range(40):
        Image.fromarray(photo_crop(0, 0, 16, 16, i % 7)).save(val / f"{i:02d}.png")
    chosen = held_out(val, 10)
    assert len(chosen) == 10 and not set(chosen) & set(spread(sorted(val.iterdir()), BENCH_FID_IMAGES))
    run = tmp_path / "export"
    run.mkdir()
    small = RefinerConfig(width=8, channels=16, blocks=1)
    q1, q2 = (next(c["model_id"] for c in zoo.list_models() if c["name"] == n) for n in ("pqmim-q1", "pqmim-q2"))
    for stem in ("job.it000100", "job.it000200", "other"):  # trained for q1 and q2, chosen on q1
        Refiner(small).save(run / f"{stem}.safetensors", [{"name": "pqmim-q1", "model_id": q1}, {"name": "pqmim-q2", "model_id": q2}])
    plan = {"ema": 0.999, "k_adv": 0.15, "gan_from": 150, "k_low": 4000}
    (run / "job.json").write_text(json.dumps({"kind": "perceptual decoder", "description": "(... + conditional GAN)", "plan": plan}))
    fid = lambda v: {"pqmim-q1": {"fid": v}}  # noqa: E731
    rows = [
        {"candidate": "default decoder", "models": fid(100.0), "serves_all": True, "score": 1.0},
        {"candidate": str(run / "job.it000100.safetensors"), "models": fid(90.0), "serves_all": True, "score": 0.9},
        {"candidate": str(run / "job.it000200.safetensors"), "models": fid(95.0), "serves_all": True, "score": 0.95},
        {"candidate": str(run / "other.safetensors"), "models": fid(50.0), "serves_all": False, "score": 0.5},  # serves too few
    ]
    rows[1]["models"]["pqmim-q1"]["fid_delta_90"] = (-14.0, 1.5)  # lower, but not surely: said so
    out = pick(rows, tmp_path / "dest", "pqmim-perceptual", {"models": ["pqmim-q1"]})
    assert "not shown lower than the default decoder's (90% interval of the difference [-14.0, +1.5])" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert out.read_bytes() == (run / "job.it000100.safetensors").read_bytes()
    assert card["selection"]["chosen"] == "job.it000100.safetensors" and card["plan"] == plan
    assert card["serves"] == [{"name": "pqmim-q1", "model_id": q1}]  # routes what it was chosen on, not q2
    assert card["training"]["iterations_done"] == 100
    assert "GAN" not in card["description"]  # iteration 100 came before the GAN term (from 150)
    with pytest.raises(SystemExit, match="serves every model"):
        pick([rows[0], rows[3]], tmp_path / "dest2", "pqmim-perceptual", {})
    with pytest.raises(SystemExit, match="ships as a pqmim-texture-1 file .* pqmim-perceptual-1 file"):
        pick(rows, tmp_path / "dest3", "pqmim-texture", {})  # a refiner never replaces the texture decoder
    assert not (tmp_path / "dest3").exists()


@needs_shared  # the FID Inception weights
def test_point_features_pair_each_patch_with_the_originals_and_are_cached(tmp_path):
    """A point's features come in the originals' patch order (a lossless point gives the
    originals' features exactly: a difference of 0 on every bootstrap draw), with the bits per
    pixel of its real bytes; a blurred point's FID is above it on every draw; a second call
    reads the cache and decodes nothing."""
    import torch

    from bench.codecs import Point
    from bench.fid import fid_differences, inception_features, patches, point_features
    from pqmim.checkout import FID_WEIGHTS

    images = [photo_crop(0, 0, 512, 384, v) for v in range(4)]  # 3 patches each
    decoded = []

    def lossless(rgb):
        decoded.append(rgb)
        return 1000, rgb.copy(), 0.0, 0.0

    def blurred(rgb):
        out = rgb.astype(np.float32)
        for axis in (0, 1):
            out = (np.roll(out, 2, axis) + out + np.roll(out, -2, axis)) / 3
        return 4000, out.round().astype(np.uint8), 0.0, 0.0

    reference = inception_features([p for im in images for p in patches(im)], FID_WEIGHTS)
    same, bpp = point_features(Point("x", "lossless", "x-lossless", lossless), images, FID_WEIGHTS, cache_dir=tmp_path)
    assert len(decoded) == 4 and torch.equal(same, reference)
    assert bpp == [1000 * 8 / (512 * 384)] * 4
    blur, _ = point_features(Point("x", "blurred", "x-blurred", blurred), images, FID_WEIGHTS)
    [(lo, hi)] = fid_differences(reference, same, [blur], [3] * 4, draws=50)
    assert 0 < lo <= hi
    again, bpp_again = point_features(Point("x", "lossless", "x-lossless", lossless), images, FID_WEIGHTS, cache_dir=tmp_path)
    assert len(decoded) == 4 and torch.equal(again, same) and bpp_again == bpp
    assert len(list((tmp_path / "inception").glob("point-x-lossless-*.pt"))) == 1


def test_classical_at_names_its_points_and_refuses_bad_ones():
    """CODEC:QUALITY is a classical setting, pqmim-qN a model's default decoder and
    pqmim-qN:perceptual its perceptual one; anything else is refused with the forms it takes."""
    from bench.classical_at import point_of
    from bench.codecs import PERCEPTUAL

    assert point_of("avif:15").key.startswith("avif-q15-")
    assert (point_of("pqmim-q1").codec, point_of("pqmim-q1").label) == ("pqmim", "q1")
    if zoo.perceptual_decoders():
        assert point_of("pqmim-q1:perceptual").codec == PERCEPTUAL
    with pytest.raises(ValueError, match="no perceptual decoder"):
        point_of("pqmim-q5:perceptual")
    for bad in ("avif", "avif:x", "pqmim-q1:fast", "gif:3"):
        with pytest.raises(ValueError, match="CODEC:QUALITY"):
            point_of(bad)
    r = run_module("bench.classical_at", "avif:15", "--against", "pqmim-q9")
    assert r.returncode == 2 and "unknown model 'pqmim-q9'" in r.stderr
    r = run_module("bench.classical_at", "avif:15", "--images", "0")
    assert r.returncode == 2 and "--images must be at least 1" in r.stderr


@needs_shared  # the FID Inception weights
def test_classical_at_measures_the_photos_of_another_folder(tmp_path, monkeypatch):
    """--photos DIR pairs the points on every photo of DIR (a held-out set): all their patches,
    each point's rate from its own bytes; a folder that is missing or holds no image, or
    --photos without --against, is refused before anything is measured."""
    from PIL import Image

    from bench import classical_at

    photos = tmp_path / "photos"
    photos.mkdir()
    for v in range(3):
        Image.fromarray(photo_crop(0, 0, 512, 384, v)).save(photos / f"{v}.png")  # 3 patches each
    monkeypatch.setattr(classical_at, "RESULTS", tmp_path)  # the cache
    coarse, fine = classical_at.point_of("avif:5"), classical_at.point_of("avif:60")
    rows = classical_at.paired([coarse], fine, None, photos)
    assert [r["point"] for r in rows] == [fine, coarse] and [r["patches"] for r in rows] == [9, 9]
    assert rows[0]["fid_delta_90"] is None and rows[1]["bpp"] < rows[0]["bpp"] and rows[1]["fid"] > rows[0]["fid"]
    for args, why in [
        (["--photos", str(tmp_path / "nowhere"), "--against", "avif:60"], "No such file"),
        (["--photos", str(tmp_path), "--against", "avif:60"], "no images found"),
        (["--photos", str(photos)], "--photos needs --against"),
    ]:
        r = run_module("bench.classical_at", "avif:5", *args)
        assert r.returncode == 2 and why in r.stderr, r.stderr


def test_a_pqmim_points_cache_key_sees_its_pixels():
    """The probe in a pqmim point's key (bench.codecs.outcome) is the same on every call and
    moves with what moves the pixels: the transforms precision, the perceptual decoder."""
    from bench.codecs import _Perceptual, outcome
    from pqmim import Codec

    f32 = Codec.from_pretrained("pqmim-q1", transforms="float32")
    assert outcome(f32) == outcome(Codec.from_pretrained("pqmim-q1", transforms="float32"))
    assert outcome(f32) != outcome(Codec.from_pretrained("pqmim-q1", transforms="bfloat16"))
    if zoo.perceptual_decoders():
        assert outcome(_Perceptual(f32)) != outcome(f32)


def test_texture_gate_fit_opens_where_the_mean_is_predicted_to_help():
    """bench.texture_gate.fit: a ridge regression of the distance change y on the statistics,
    turned into clamp(1/2 - y_hat / (2 width), 0, 1): near 1 where y is well below 0 (the mean
    brings the Inception features nearer), near 0 where it is well above; its cross-validated
    report sees a relationship that is there and none in noise."""
    from bench.texture_gate import fit

    rng = np.random.default_rng(0)
    stats = rng.normal(size=(400, 12)) * rng.uniform(0.01, 3, size=12) + rng.normal(size=12)
    y = 4 * (stats[:, 3] - stats[:, 3].mean()) / stats[:, 3].std() + 0.3 * rng.normal(size=400)
    weight, bias, report = fit(stats, y, ridge=1.0, width=0.5)
    gate = np.clip(stats @ weight + bias, 0, 1)
    assert report["photos"] == 400 and report["cv_correlation"] > 0.95 and report["cv_sign_agreement"] > 0.9
    assert gate[y < -2].min() == 1 and gate[y > 2].max() == 0
    assert 0 < np.mean((gate > 0) & (gate < 1)) < 0.2  # the soft zone is narrow
    _, _, noise = fit(stats, rng.normal(size=400), ridge=100.0, width=0.5)
    assert abs(noise["cv_correlation"]) < 0.2


def test_texture_gate_export_gates_the_models_fitted_and_opens_the_rest(tiny_ladder, tmp_path, monkeypatch):
    """`python -m bench texture-gate --export`: the models named get the fitted gate, every other
    head an open one (its draw bit for bit), every other tensor as it was; the card says per model
    how each gate was fitted (train.texture carries that with the head). The Inception
    measurements are stood in for: the fit itself is the test above's."""
    import torch

    from bench import texture_gate
    from pqmim.models.texture import FORMAT_TAG, LatentTexture, TextureConfig, TextureGate
    from pqmim.models.weights import read_tensors

    from conftest import write_photos

    _, ids = tiny_ladder
    torch.manual_seed(0)
    texture = LatentTexture(TextureConfig(8))
    source = tmp_path / "ungated" / "pqmim-texture.safetensors"
    source.parent.mkdir()
    serves = [{"name": n, "model_id": ids[n]} for n in ("pqmim-q1", "pqmim-q2")]
    texture.save(source, {s["model_id"]: texture.head.state_dict() for s in serves}, serves)
    write_photos(tmp_path / "photos", {"train": [photo_crop(0, 0, 64, 64, v) for v in range(2)]})
    rng = np.random.default_rng(0)
    stats = rng.normal(size=(400, TextureGate.STATISTICS))
    dist = np.c_[np.zeros(400), stats[:, 0], np.zeros(400)]  # the mean costs where statistic 0 is high
    monkeypatch.setattr(texture_gate, "measure", lambda *a: {"names": np.arange(400), "stats": stats, "dist": dist})
    photos, out, export = str(tmp_path / "photos" / "train"), str(tmp_path / "run"), str(tmp_path / "gated")
    assert (
        texture_gate.main([str(source), "--models", "pqmim-q1", "--photos", photos, "--out", out, "--export", export, "--ridge", "1"]) == 0
    )
    gated = tmp_path / "gated" / source.name
    (_, before), (_, after) = read_tensors(source, FORMAT_TAG, "t"), read_tensors(gated, FORMAT_TAG, "t")
    assert all(torch.equal(before[k], after[k]) for k in before)
    q1, q2 = (LatentTexture.load(gated, ids[n]).head.gate for n in ("pqmim-q1", "pqmim-q2"))
    assert q1.weight[0] < 0 and all(torch.equal(v, q2.state_dict()[k[5:]]) for k, v in TextureGate.open_state().items())
    card = json.loads(gated.with_suffix(".json").read_text())
    assert set(card["gate"]) == {"pqmim-q1"} and card["gate"]["pqmim-q1"]["photos"] == [photos] and card["config"]["gate"]
    assert card["gate"]["pqmim-q1"]["fitted"]["photos"] == 400 and card["gate"]["pqmim-q1"]["ridge"] == 1
