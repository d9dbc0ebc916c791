"""The benchmarks run end to end (quick settings)."""

import json
import subprocess
import sys

from conftest import KODAK, ROOT


def test_bench_kodak_quick(tmp_path):
    out = tmp_path / "kodak.json"
    r = subprocess.run([sys.executable, "-m", "bench", "kodak", "--limit", "1", "--kodak", str(KODAK), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    row = res["pqmim"][0]
    assert row["images"] == 1 and row["all_exact"] and 0 < row["bpp"] < 1
    assert len(res["jpeg420"]) >= 10 and res["jpeg420"][0]["bpp"] < res["jpeg420"][-1]["bpp"]


def test_interpolation_only_inside_the_curve():
    sys.path.insert(0, str(ROOT))
    from bench.kodak import interpolate

    curve = [{"bpp": 0.2, "psnr": 24.0}, {"bpp": 0.4, "psnr": 28.0}]
    assert interpolate(curve, 0.3) == 26.0
    assert interpolate(curve, 0.1) is None and interpolate(curve, 0.5) is None
