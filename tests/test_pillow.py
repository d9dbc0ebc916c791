"""The Pillow plugin, through Pillow's own API only: Image.open / im.save on .pqm files."""

import io

import numpy as np
import pytest
from PIL import Image

import pqmim  # noqa: F401  (registers the plugin)

from conftest import PHOTO


def crop(w=80, h=56) -> Image.Image:
    with Image.open(PHOTO) as im:
        return im.convert("RGB").crop((300, 200, 300 + w, 200 + h))


def test_registered():
    assert Image.registered_extensions()[".pqm"] == "PQM"
    assert Image.MIME["PQM"] == "image/x-pqm"


def test_save_open_roundtrip(tmp_path, tiny_ladder):
    im = crop()
    im.save(tmp_path / "a.pqm", quality=2)
    im.save(tmp_path / "b.pqm")  # the default model
    with Image.open(tmp_path / "a.pqm") as back:
        assert back.format == "PQM" and back.size == im.size and back.mode == "RGB"
        first = np.asarray(back)
    with Image.open(tmp_path / "a.pqm") as again:  # decoding is deterministic
        assert (np.asarray(again) == first).all()
    with Image.open(tmp_path / "b.pqm") as b:
        b.load()
        assert b.size == im.size
    buf = io.BytesIO()
    im.save(buf, format="PQM", quality=1)
    buf.seek(0)
    assert Image.open(buf).size == im.size


def test_open_is_lazy(tmp_path, tiny_ladder, monkeypatch):
    crop().save(tmp_path / "a.pqm", quality=1)
    monkeypatch.setenv("PQMIM_MODELS", str(tmp_path))  # the model is gone: only decoding needs it
    from pqmim import codec

    codec._shipped.cache_clear()
    with Image.open(tmp_path / "a.pqm") as im:
        assert im.size == (80, 56) and im.mode == "RGB"  # from the header alone
        with pytest.raises(ValueError, match="model"):
            im.load()


def test_rgba_and_icc_through_pillow(tmp_path, tiny_ladder):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba = crop().convert("RGBA")
    a = np.asarray(rgba).copy()
    a[..., 3] = np.arange(80, dtype=np.uint8)[None] * 3
    rgba = Image.fromarray(a, "RGBA")
    rgba.save(tmp_path / "a.pqm", quality=1, icc_profile=icc)
    with Image.open(tmp_path / "a.pqm") as back:
        assert back.mode == "RGBA" and back.info["icc_profile"] == icc
        assert (np.asarray(back)[..., 3] == a[..., 3]).all()
        back.save(tmp_path / "back.png")  # Pillow writes the profile on
    with Image.open(tmp_path / "back.png") as png:
        assert png.info["icc_profile"] == icc


def test_save_max_bytes_never_over(tmp_path, tiny_ladder):
    im = crop(160, 112)
    sizes = {}
    for q in (1, 2, 3):
        im.save(tmp_path / f"q{q}.pqm", quality=q)
        sizes[q] = (tmp_path / f"q{q}.pqm").stat().st_size
    budget = max(sizes.values()) + 10
    im.save(tmp_path / "big.pqm", max_bytes=budget)
    assert (tmp_path / "big.pqm").stat().st_size <= budget
    budget = min(sizes.values())
    im.save(tmp_path / "small.pqm", max_bytes=budget)
    assert (tmp_path / "small.pqm").stat().st_size <= budget
    with pytest.raises(ValueError, match="too small"):
        im.save(tmp_path / "none.pqm", max_bytes=10)
    assert not (tmp_path / "none.pqm").exists()  # Pillow removes what it created
    with pytest.raises(ValueError, match="quality"):
        im.save(tmp_path / "bad.pqm", quality=75)


def test_broken_file_is_refused_by_open(tmp_path, tiny_ladder):
    crop().save(tmp_path / "a.pqm", quality=1)
    data = bytearray((tmp_path / "a.pqm").read_bytes())
    data[-1] ^= 1
    (tmp_path / "bad.pqm").write_bytes(bytes(data))
    with pytest.raises(Image.UnidentifiedImageError):
        Image.open(tmp_path / "bad.pqm")
