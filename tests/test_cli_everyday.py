"""Everyday habits of image tools, from the command line: file permissions from the umask,
--quiet and -v, --max-bytes, alpha and metadata through encode / decode, files that send only
some steps and files cut short."""

import os
import stat
import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import PHOTO, ROOT


def run(*args, umask=None, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "pqmim", *map(str, args)], capture_output=True, env=env, timeout=300, preexec_fn=pre)


def rgba_photo(path):
    with Image.open(PHOTO) as im:
        rgb = np.asarray(im.convert("RGB"))[200:260, 300:380]
    a = np.full(rgb.shape[:2], 255, np.uint8)
    a[10:40, 10:50] = 0
    a[:, 60:] = 128
    exif = Image.Exif()
    exif[0x010F] = "pqmim camera"
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(path, exif=exif)
    return a


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_honour_the_umask_and_keep_a_replaced_files_mode(tmp_path, tiny_ladder):
    env = {"PQMIM_MODELS": str(tiny_ladder[0])}
    src = tmp_path / "in.png"
    alpha = rgba_photo(src)
    r = run("encode", src, "-o", tmp_path / "a.pqm", "-q", "1", umask=0o022, env=env)
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "a.pqm") == 0o644
    r = run("decode", tmp_path / "a.pqm", "-o", tmp_path / "a.png", umask=0o077, env=env)
    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "a.png") == 0o600
    os.chmod(tmp_path / "a.png", 0o640)
    r = run("decode", tmp_path / "a.pqm", "-o", tmp_path / "a.png", "--force", umask=0o022, env=env)
    assert r.returncode == 0 and mode(tmp_path / "a.png") == 0o640  # replaced, mode kept
    with Image.open(tmp_path / "a.png") as out:  # alpha survives the CLI round trip exactly
        assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == alpha).all()
        assert "exif" not in out.info or not out.getexif().get(0x010F)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keep_metadata_quiet_verbose_info(tmp_path, tiny_ladder):
    env = {"PQMIM_MODELS": str(tiny_ladder[0])}
    src = tmp_path / "in.png"
    rgba_photo(src)
    r = run("encode", src, "-o", tmp_path / "a.pqm", "--keep-metadata", "--quiet", env=env)
    assert r.returncode == 0 and r.stderr == b"" and r.stdout == b""
    r = run("decode", tmp_path / "a.pqm", "-o", tmp_path / "a.png", "-v", env=env)
    err = r.stderr.decode()
    assert r.returncode == 0 and "80x60 RGBA" in err and "decode" in err and " s" in err
    with Image.open(tmp_path / "a.png") as out:
        assert out.getexif()[0x010F] == "pqmim camera"
    r = run("info", tmp_path / "a.pqm", env=env)
    assert "alpha plane" in r.stdout.decode() and "EXIF" in r.stdout.decode()
    r = run("encode", src, "-o", tmp_path / "b.pqm", "-v", env=env)
    err = r.stderr.decode()
    assert r.returncode == 0 and "bpp" in err and "encode" in err and "ready in" in err


def test_max_bytes_and_max_bpp(tmp_path, tiny_ladder):
    env = {"PQMIM_MODELS": str(tiny_ladder[0])}
    src = tmp_path / "in.png"
    rgba_photo(src)
    r = run("encode", src, "-o", tmp_path / "a.pqm", "--max-bytes", "100000", env=env)
    assert r.returncode == 0, r.stderr
    assert "(pqmim-q" in r.stderr.decode()  # the model chosen is named
    r = run("encode", src, "-o", tmp_path / "c.pqm", "--max-bytes", "20", env=env)
    assert r.returncode == 1 and b"too small" in r.stderr and not (tmp_path / "c.pqm").exists()
    r = run("encode", src, "-o", tmp_path / "d.pqm", "--max-bpp", "8", env=env)
    assert r.returncode == 0 and (tmp_path / "d.pqm").stat().st_size <= 8 * 80 * 60 / 8
    r = run("encode", src, "-o", tmp_path / "e.pqm", "--max-bytes", "900", "-q", "2", env=env)
    assert r.returncode == 1 and b"choose the model" in r.stderr


def test_send_steps_progressive_and_partial(tmp_path, tiny_ladder):
    env = {"PQMIM_MODELS": str(tiny_ladder[0])}
    src = tmp_path / "in.png"
    rgba_photo(src)
    r = run("encode", src, "-o", tmp_path / "s.pqm", "--send-steps", "2", "--seed", "5", env=env)
    assert r.returncode == 0 and b"2 of 6 steps sent" in r.stderr, r.stderr
    r = run("info", tmp_path / "s.pqm", env=env)
    assert b"2 sent, the rest filled in with codes drawn with seed 5" in r.stdout, r.stdout
    assert run("decode", tmp_path / "s.pqm", "-o", tmp_path / "s.png", env=env).returncode == 0
    assert Image.open(tmp_path / "s.png").size == (80, 60)
    r = run("encode", src, "-o", tmp_path / "p.pqm", "--progressive", env=env)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "p.pqm").read_bytes()
    assert b"progressive" in run("info", tmp_path / "p.pqm", env=env).stdout
    (tmp_path / "cut.pqm").write_bytes(data[: len(data) * 2 // 3])
    assert b"cut short" in run("info", tmp_path / "cut.pqm", env=env).stdout
    r = run("decode", tmp_path / "cut.pqm", "-o", tmp_path / "cut.png", env=env)
    assert r.returncode == 1 and b"--progressive" not in r.stderr and b"checksum" in r.stderr and not (tmp_path / "cut.png").exists()
    r = run("decode", tmp_path / "cut.pqm", "-o", tmp_path / "cut.png", "--partial", env=env)
    assert r.returncode == 0 and b"cut short" in r.stderr and b"of 6 coding steps" in r.stderr, r.stderr
    assert Image.open(tmp_path / "cut.png").mode == "RGBA"  # the alpha chunk is in the header
    for bad, msg in (
        (["encode", src, "--seed", "1"], b"--send-steps"),
        (["decode", tmp_path / "p.pqm", "--seed", "1"], b"--partial"),
        (["encode", src, "--max-bytes", "500", "--send-steps", "1"], b"choose the steps"),
        (["encode", src, "--send-steps", "9", "-f"], b"send_steps"),
    ):
        r = run(*bad, env=env)
        assert r.returncode == 1 and msg in r.stderr, r.stderr


def test_compare_writes_one_sheet(tmp_path, tiny_ladder):
    env = {"PQMIM_MODELS": str(tiny_ladder[0])}
    with Image.open(PHOTO) as im:
        im.crop((200, 100, 520, 340)).save(tmp_path / "p.png")
    r = run("compare", tmp_path / "p.png", "-q", "2", "--size", "128", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    pqm = int(next(line.split()[2] for line in out.splitlines() if line.startswith("pqmim ")))
    for label in ("JPEG 4:2:0", "WebP", "AVIF"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        size = line.split()[-3]
        assert size.startswith(">") or int(size) <= pqm  # same budget, never over (unless flagged)
    with Image.open(tmp_path / "p_compare.png") as sheet:
        assert sheet.height > 128 and sheet.width >= 5 * 128
    r = run("compare", tmp_path / "p.png", "-q", "2", env=env)
    assert r.returncode == 1 and b"exists" in r.stderr  # no overwrite without --force
    r = run("compare", tmp_path / "missing.png", env=env)
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1


BLOCK_BENCH = """
import sys
for name in ("compressai", "lpips", "torch_fidelity", "bjontegaard", "matplotlib", "torchvision", "pytest", "hypothesis"):
    sys.modules[name] = None  # as if not installed: import raises ModuleNotFoundError, find_spec gives None
from pqmim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_core_install_needs_no_benchmark_package(tmp_path, tiny_ladder):
    """What `pip install pqmim` gives (no extras) is enough for the CLI and the Pillow plugin."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [
        d
        for d in deps
        if d.split(">")[0].split("=")[0].split("<")[0].strip()
        in {"compressai", "lpips", "torch-fidelity", "bjontegaard", "matplotlib", "torchvision"}
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PQMIM_MODELS": str(tiny_ladder[0])}
    with Image.open(PHOTO) as im:
        im.crop((0, 0, 96, 64)).save(tmp_path / "p.png")
    for args in (
        ["--version"],
        ["models"],
        ["encode", tmp_path / "p.png", "-o", tmp_path / "p.pqm", "-q", "1"],
        ["decode", tmp_path / "p.pqm", "-o", tmp_path / "p_out.png"],
        ["info", tmp_path / "p.pqm"],
    ):
        r = subprocess.run([sys.executable, "-c", BLOCK_BENCH, *map(str, args)], capture_output=True, env=env, timeout=300)
        assert r.returncode == 0, (args, r.stderr)
    assert Image.open(tmp_path / "p_out.png").size == (96, 64)


def test_import_pqmim_loads_neither_torch_nor_constriction():
    """`import pqmim` (and with it `pqmim --version`, Pillow's .pqm plugin) stays quick: torch and
    the entropy coder load when a model is used, not before."""
    code = "import sys, pqmim, pqmim.format; print(sorted(m for m in ('torch', 'constriction') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
