"""Input images behave as a user expects."""

import io

import numpy as np
import pytest
from PIL import Image

from pqmim import UnsupportedImageError
from pqmim.image import load_image


def roundtrip_png(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def test_greyscale_becomes_rgb():
    g = np.arange(48, dtype=np.uint8).reshape(6, 8)
    out = load_image(Image.fromarray(g, "L"))
    assert out.shape == (6, 8, 3) and (out[..., 0] == g).all() and (out[..., 2] == g).all()
    assert load_image(g).shape == (6, 8, 3)


def test_16bit_is_scaled_not_clipped():
    g = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    im = roundtrip_png(Image.fromarray(g))
    out = load_image(im)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_palette_is_expanded():
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    p = Image.fromarray(rgb).quantize(16)
    assert (load_image(p) == np.asarray(p.convert("RGB"))).all()


def test_exif_orientation_is_applied():
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)
    rgb[:, :5] = 255
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif, quality=95)
    out = load_image(Image.open(io.BytesIO(buf.getvalue())))
    assert out.shape == (20, 10, 3)


def test_opaque_alpha_is_dropped_transparency_is_refused():
    rgba = np.full((4, 4, 4), 255, dtype=np.uint8)
    assert load_image(rgba).shape == (4, 4, 3)
    rgba[0, 0, 3] = 0
    with pytest.raises(UnsupportedImageError, match="transparency"):
        load_image(Image.fromarray(rgba, "RGBA"))


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(UnsupportedImageError):
        load_image(junk)
    with pytest.raises(UnsupportedImageError):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(UnsupportedImageError):
        load_image(np.zeros((5, 5, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        load_image(42)
