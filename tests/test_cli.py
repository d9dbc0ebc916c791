"""The command line end to end, as a user runs it."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTO, ROOT, TINY, make_tiny_model, photo_crop


def run(*args, stdin=None, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pqmim", *map(str, args)], input=stdin, capture_output=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture()
def photo(tmp_path):
    p = tmp_path / "photo.png"
    Image.fromarray(photo_crop(100, 100, 70, 50)).save(p)
    return p


def test_encode_decode_info(tmp_path, photo, tiny_model_file):
    before = photo.read_bytes()
    r = run("encode", photo, "-o", tmp_path / "photo.pqm", "--model-file", tiny_model_file)
    assert r.returncode == 0, r.stderr
    assert photo.read_bytes() == before  # the input is never touched
    r = run("decode", tmp_path / "photo.pqm", "-o", tmp_path / "out.png", "--model-file", tiny_model_file)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out.png").size == (70, 50)
    r = run("info", tmp_path / "photo.pqm")
    assert r.returncode == 0
    size = (tmp_path / "photo.pqm").stat().st_size
    info = r.stdout.decode()
    assert "70x50" in info and f"bytes:   {size}" in info and "bpp" in info
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_compat_writes_a_float64_file_that_decodes_the_same(tmp_path, photo):
    model_file = tmp_path / "causal.safetensors"  # block-causal: integer arithmetic by default
    make_tiny_model(cfg=dataclasses.replace(TINY, causal=True)).save(model_file)
    for name, extra in (("new.pqm", ()), ("old.pqm", ("--compat",))):
        r = run("encode", photo, "-o", tmp_path / name, "--model-file", model_file, *extra)
        assert r.returncode == 0, r.stderr
        assert run("decode", tmp_path / name, "-o", tmp_path / f"{name}.png", "--model-file", model_file).returncode == 0
    assert (tmp_path / "new.pqm").read_bytes()[3] == 4 and (tmp_path / "old.pqm").read_bytes()[3] == 2
    assert "version 2 (float64" in run("info", tmp_path / "old.pqm").stdout.decode()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "new.pqm.png")), np.asarray(Image.open(tmp_path / "old.pqm.png")))


def test_stdin_stdout(photo, tiny_model_file):
    r = run("encode", "-", "-o", "-", "--model-file", tiny_model_file, stdin=photo.read_bytes())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"PQM")
    r2 = run("decode", "-", "-o", "-", "--model-file", tiny_model_file, stdin=r.stdout)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.startswith(b"\x89PNG")


@pytest.mark.parametrize("content", [b"", b"PQM", b"garbage that is not a pqm file", None])
def test_bad_files_give_one_line_and_exit_1(tmp_path, content, tiny_model_file):
    path = tmp_path / "bad.pqm"
    if content is not None:
        path.write_bytes(content)
    r = run("decode", path, "-o", tmp_path / "out.png", "--model-file", tiny_model_file)
    assert r.returncode == 1
    err = r.stderr.decode().strip()
    assert err.startswith("pqmim: error:") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_truncated_and_wrong_model(tmp_path, photo, tiny_model_file):
    from conftest import make_tiny_model

    assert run("encode", photo, "-o", tmp_path / "a.pqm", "--model-file", tiny_model_file).returncode == 0
    data = (tmp_path / "a.pqm").read_bytes()
    (tmp_path / "t.pqm").write_bytes(data[: len(data) // 2])
    r = run("decode", tmp_path / "t.pqm", "-o", tmp_path / "t.png", "--model-file", tiny_model_file)
    assert r.returncode == 1 and b"truncated or corrupted" in r.stderr
    other = tmp_path / "other.safetensors"
    make_tiny_model(seed=3).save(other)
    r = run("decode", tmp_path / "a.pqm", "-o", tmp_path / "w.png", "--model-file", other)
    assert r.returncode == 1 and b"encoded with" in r.stderr
    assert not (tmp_path / "w.png").exists()


def test_refuses_to_overwrite_without_force(tmp_path, photo, tiny_model_file):
    out = tmp_path / "x.pqm"
    out.write_bytes(b"precious")
    r = run("encode", photo, "-o", out, "--model-file", tiny_model_file)
    assert r.returncode == 1 and out.read_bytes() == b"precious"
    assert run("encode", photo, "-o", out, "--model-file", tiny_model_file, "--force").returncode == 0
    assert out.read_bytes().startswith(b"PQM")
    png = tmp_path / "x.png"
    png.write_bytes(b"precious")
    r = run("decode", out)  # refused before its model is looked for (none ships for this file's id)
    assert r.returncode == 1 and b"exists (use --force" in r.stderr and png.read_bytes() == b"precious"
    assert b"model" in run("decode", out, "--force").stderr  # with --force, the model is what fails


def test_unsupported_images(tmp_path, tiny_model_file):
    Image.fromarray(np.zeros((8, 8), dtype=np.float32), "F").save(tmp_path / "a.tiff")
    r = run("encode", tmp_path / "a.tiff", "-o", tmp_path / "a.pqm", "--model-file", tiny_model_file)
    assert r.returncode == 1 and b"floating-point" in r.stderr and not (tmp_path / "a.pqm").exists()
    r = run("encode", tmp_path / "missing.png", "-o", tmp_path / "m.pqm", "--model-file", tiny_model_file)
    assert r.returncode == 1 and b"no such file" in r.stderr


def test_default_model_from_any_folder(tmp_path):
    """The README's main job: encode and decode the shipped photo with the shipped default model."""
    src = PHOTO
    r = run("encode", src, "-o", "k.pqm", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run("decode", "k.pqm", "-o", "k.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "k.png").size == Image.open(src).size
    r = run("models")
    assert r.returncode == 0 and b"pqmim-q3" in r.stdout and b"(default)" in r.stdout


def test_quality_option_picks_the_ladder_model(tmp_path):
    """`pqmim encode -q N` uses quality level N; the file then decodes with no option, and the
    file sizes grow with the quality."""
    from pqmim import zoo

    levels = zoo.quality_levels()
    assert len(levels) >= 5
    Image.fromarray(photo_crop(256, 128, 256, 192)).save(tmp_path / "in.png")
    sizes = []
    for q in (min(levels), max(levels)):
        r = run("encode", "in.png", "-q", str(q), "-o", f"{q}.pqm", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert levels[q].encode() in r.stderr
        r = run("info", f"{q}.pqm", cwd=tmp_path)
        assert levels[q].encode() in r.stdout
        assert run("decode", f"{q}.pqm", "-o", f"{q}.png", cwd=tmp_path).returncode == 0
        sizes.append((tmp_path / f"{q}.pqm").stat().st_size)
    assert sizes[0] < sizes[1]
    r = run("encode", "in.png", "-q", str(max(levels) + 1), "-o", "x.pqm", cwd=tmp_path)
    assert r.returncode == 1 and b"no model for quality" in r.stderr and not (tmp_path / "x.pqm").exists()
    r = run("encode", "in.png", "-q", "1", "-m", "pqmim-q1", "-o", "x.pqm", cwd=tmp_path)
    assert r.returncode == 1 and b"choose one of" in r.stderr


def test_cli_shim_from_checkout(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, cwd=tmp_path)
    assert r.returncode == 0 and b"pqmim" in r.stdout


def test_batch_goes_on_past_a_bad_file(tmp_path, tiny_model_file):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(photo_crop(0, 0, 40, 30, variant=1)).save(src / "a.png")
    Image.fromarray(photo_crop(0, 0, 50, 20, variant=2)).save(src / "c.jpg")
    (src / "b.png").write_bytes(b"\x89PNG broken")
    (src / "notes.txt").write_text("not an image: skipped")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    r = run("encode", src, "-o", tmp_path / "coded", "--model-file", tiny_model_file)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "b.png" in err and "encoded 2 of 3 files; 1 failed" in err
    assert sorted(p.name for p in (tmp_path / "coded").iterdir()) == ["a.pqm", "c.pqm"]
    assert before == {p.name: p.read_bytes() for p in src.iterdir()}  # inputs untouched
    (tmp_path / "coded" / "d.pqm").write_bytes(b"PQM\x02garbage")
    r = run("decode", tmp_path / "coded", "-o", tmp_path / "decoded", "--model-file", tiny_model_file)
    assert r.returncode == 1 and "d.pqm" in r.stderr.decode() and "decoded 2 of 3 files" in r.stderr.decode()
    assert Image.open(tmp_path / "decoded" / "a.png").size == (40, 30)
    assert not (tmp_path / "decoded" / "d.png").exists()  # a failure leaves nothing behind
    r = run(
        "decode", tmp_path / "coded" / "a.pqm", tmp_path / "coded" / "c.pqm", "-o", tmp_path / "decoded", "--model-file", tiny_model_file
    )
    assert r.returncode == 1 and "exists (use --force" in r.stderr.decode()  # no silent overwrite in a batch either


def test_device_option(tmp_path, photo, tiny_model_file):
    """--device cpu is the default; a device this torch cannot use is refused in one line,
    before anything is written."""
    import torch

    r = run("encode", photo, "-o", tmp_path / "a.pqm", "--model-file", tiny_model_file, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    bad = ["tpu"] + ([] if torch.cuda.is_available() else ["cuda"])
    for device in bad:
        r = run("decode", tmp_path / "a.pqm", "-o", tmp_path / "b.png", "--model-file", tiny_model_file, "--device", device)
        assert r.returncode == 1 and len(r.stderr.decode().strip().splitlines()) == 1 and "device" in r.stderr.decode()
        assert not (tmp_path / "b.png").exists()
