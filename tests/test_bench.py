"""The benchmarks run end to end (quick settings)."""

import json
import subprocess
import sys

from conftest import KODAK, ROOT


def test_bench_kodak_quick(tmp_path):
    out = tmp_path / "kodak.json"
    r = subprocess.run([sys.executable, "-m", "bench", "kodak", "--limit", "1", "--kodak", str(KODAK), "--out", str(out),
                        "--models", "pqmim-q1", "pqmim-q3", "--codecs", "jpeg420", "webp"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [row["model"] for row in res["pqmim"]] == ["pqmim-q1", "pqmim-q3"]
    for row in res["pqmim"]:
        assert row["images"] == 1 and row["all_exact"] and 0 < row["bpp"] < 1 and 0 < row["ms_ssim"] < 1
    for codec in ("jpeg420", "webp"):
        curve = res["classical"][codec]
        assert len(curve) >= 6 and curve[0]["bpp"] < curve[-1]["bpp"] and curve[0]["psnr"] < curve[-1]["psnr"]
    assert (tmp_path / "kodak_psnr.png").stat().st_size > 10_000 and (tmp_path / "kodak_msssim.png").exists()


def test_interpolation_only_inside_the_curve():
    sys.path.insert(0, str(ROOT))
    from bench.kodak import interpolate

    curve = [{"bpp": 0.2, "psnr": 24.0}, {"bpp": 0.4, "psnr": 28.0}]
    assert interpolate(curve, 0.3) == 26.0
    assert interpolate(curve, 0.1) is None and interpolate(curve, 0.5) is None


def test_training_curves_keep_the_final_attempt():
    sys.path.insert(0, str(ROOT))
    from bench.curves import parse_log

    log = "\n".join([
        "10:00 start: stages ['2'] on CPU, config {'widths': [8, 8], 'm': 2}",
        "10:01 stage2 val step 100: 6.600 bits/code on masked val codes",  # an attempt later restarted
        "10:02 start: stages ['2'] on CPU, config {'widths': [8, 8], 'm': 2}",
        "10:03 stage2 val step 150: 6.400 bits/code on masked val codes",
        "10:04 start: stages ['1', '2'] on CPU, config {'widths': [8, 8], 'm': 2}",
        "10:05 stage1: resumed at step 500",
        "10:05 stage2: resumed at step 150",
        "10:06 stage2 val step 300: 6.200 bits/code on masked val codes",
    ])
    run = parse_log(log)
    assert run["config"]["m"] == 2 and run["stage2"] == [(150, 6.4), (300, 6.2)] and run["stage1"] == []
