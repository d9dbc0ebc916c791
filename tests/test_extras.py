"""What travels beside the coded image: ICC profile, EXIF, exact alpha; and the format's chunks."""

import io
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from pqmim import BitstreamError
from pqmim import format as fmt
from pqmim.extras import Extras
from pqmim.image import Picture, read_picture

from conftest import PHOTO


def photo(w=64, h=48) -> np.ndarray:
    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))[200 : 200 + h, 300 : 300 + w].copy()


def p3_profile() -> bytes:
    """A real RGB profile that is not sRGB (Display P3-like primaries are not in littlecms;
    a Lab-based RGB profile built by ImageCms serves: any RGB profile's bytes must survive)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def test_no_chunks_is_version_2_or_4_byte_for_byte(tiny_codec):
    """Without chunks: version 4 (integer arithmetic, the default) or, with float64 arithmetic,
    version 2 byte for byte as 0.2.0 wrote it."""
    for arithmetic, version in (("integer", 4), ("float64", fmt.VERSION)):
        data = tiny_codec.compress(photo(), arithmetic=arithmetic)
        assert data[3] == version
        header, payload = fmt.unpack(data)
        assert header.chunks == () and header.arithmetic == arithmetic
        assert fmt.pack(header, payload) == data
        assert np.array_equal(
            np.asarray(tiny_codec.decompress(data)), np.asarray(tiny_codec.decompress(tiny_codec.compress(photo(), arithmetic="integer")))
        )


def test_rgba_roundtrips_with_exact_alpha(tiny_codec):
    rgb = photo()
    alpha = np.zeros(rgb.shape[:2], dtype=np.uint8)
    alpha[:, 20:] = 255
    alpha[10:30, 5:40] = np.arange(35, dtype=np.uint8)[None] * 7  # a gradient, partly
    im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    data = tiny_codec.compress(im)
    assert data[3] == fmt.VERSIONS[tiny_codec.arithmetic, True]
    out = tiny_codec.decompress(data)
    assert out.mode == "RGBA" and out.size == im.size
    assert (np.asarray(out)[..., 3] == alpha).all()
    # the colour is what the RGB-only file decodes to: alpha does not change the coding
    assert (np.asarray(out)[..., :3] == np.asarray(tiny_codec.decompress(tiny_codec.compress(rgb)))).all()


@pytest.mark.parametrize("mode", ["LA", "PA"])
def test_grey_and_palette_alpha(tiny_codec, mode):
    rgb = photo(32, 24)
    a = (np.arange(32 * 24) % 256).astype(np.uint8).reshape(24, 32)
    im = Image.fromarray(np.dstack([rgb, a]), "RGBA")
    im = im.convert("LA") if mode == "LA" else Image.fromarray(rgb).quantize(16).convert("PA")
    if mode == "PA":
        im.putalpha(Image.fromarray(a))
        im = im.convert("PA")
    want = np.asarray(im.convert("RGBA"))[..., 3]
    out = tiny_codec.decompress(tiny_codec.compress(im))
    assert out.mode == "RGBA" and (np.asarray(out)[..., 3] == want).all()


def test_opaque_alpha_is_dropped(tiny_codec):
    rgba = np.dstack([photo(), np.full((48, 64), 255, np.uint8)])
    data = tiny_codec.compress(rgba)
    assert data[3] == fmt.VERSIONS[tiny_codec.arithmetic, False] and tiny_codec.decompress(data).mode == "RGB"


def test_icc_profile_is_kept_exif_only_when_asked(tiny_codec):
    icc = p3_profile()
    exif = Image.Exif()
    exif[0x010F] = "pqmim test camera"  # Make
    buf = io.BytesIO()
    Image.fromarray(photo()).save(buf, format="JPEG", quality=95, icc_profile=icc, exif=exif)
    buf.seek(0)
    im = Image.open(buf)
    out = tiny_codec.decompress(tiny_codec.compress(im))
    assert out.info["icc_profile"] == icc and "exif" not in out.info
    out = tiny_codec.decompress(tiny_codec.compress(im, keep_metadata=True))
    assert out.info["icc_profile"] == icc
    assert out.getexif()[0x010F] == "pqmim test camera"


def test_cmyk_with_profile_goes_through_its_profile(monkeypatch):
    from pqmim import image

    cmyk = Image.fromarray(photo()).convert("CMYK")
    naive = read_picture(cmyk)
    assert naive.icc is None
    # no CMYK profile ships with Pillow: fake one's header, and see the conversion path taken
    fake = bytearray(p3_profile())
    fake[16:20] = b"CMYK"
    cmyk.info["icc_profile"] = bytes(fake)
    seen = []
    monkeypatch.setattr(image, "_to_srgb", lambda im, icc: seen.append(icc) or im.convert("RGB").point(lambda v: 255 - v))
    pic = read_picture(cmyk)
    assert seen == [bytes(fake)] and pic.icc is None
    assert (pic.rgb == 255 - naive.rgb).all()  # the converted pixels are what is coded


def test_profile_of_another_colour_space_is_dropped_not_misapplied():
    grey = Image.fromarray(photo()).convert("L")
    grey.info["icc_profile"] = p3_profile()  # an RGB profile cannot describe grey data
    assert read_picture(grey).icc is None
    rgb = Image.fromarray(photo())
    rgb.info["icc_profile"] = p3_profile()
    assert read_picture(rgb).icc == p3_profile()
    cmyk = Image.fromarray(photo()).convert("CMYK")
    cmyk.info["icc_profile"] = p3_profile()  # RGB profile on CMYK data: wrong, dropped
    assert read_picture(cmyk).icc is None


def _with_chunks(data: bytes, chunks) -> bytes:
    header, payload = fmt.unpack(data)
    return fmt.pack(
        fmt.Header(
            header.model_id, header.width, header.height, header.steps, header.shift, header.codes_crc, chunks, arithmetic=header.arithmetic
        ),
        payload,
    )


def test_hostile_chunks_raise_bitstream_error(tiny_codec):
    rgb = photo()
    data = tiny_codec.compress(rgb)
    bad = [
        ((b"ALPH", b"\x01" + zlib.compress(b"\0" * 10)),),  # too few alpha bytes
        ((b"ALPH", b"\x01" + zlib.compress(b"\0" * (64 * 48 + 1))),),  # too many
        ((b"ALPH", b"\x07" + zlib.compress(b"\0" * (64 * 48))),),  # unknown filter
        ((b"ALPH", b""),),
        ((b"ICCP", b"not deflate"),),
        ((b"ICCP", zlib.compress(b"\0" * (17 << 20))),),  # a bomb: inflates past the limit
        ((b"EXIF", zlib.compress(b"x")[:-2]),),  # truncated
        ((b"ZZZZ", b"critical and unknown"),),
    ]
    for chunks in bad:
        with pytest.raises(BitstreamError):
            tiny_codec.decompress(_with_chunks(data, chunks))
    # an unknown ancillary chunk (lowercase first letter) is skipped
    assert (np.asarray(tiny_codec.decompress(_with_chunks(data, ((b"zzzz", b"later"),)))) == np.asarray(tiny_codec.decompress(data))).all()


def test_truncated_chunk_section_and_duplicates(tiny_codec):
    data = tiny_codec.compress(np.dstack([photo(), np.zeros((48, 64), np.uint8)]))
    header, payload = fmt.unpack(data)
    body = data[:-4]
    for cut in range(len(body) - len(payload) - 1, 8, -1):  # every cut inside the header and chunks
        trunc = body[:cut]
        with pytest.raises(BitstreamError):
            fmt.unpack(trunc + zlib.crc32(trunc).to_bytes(4, "little"))
    with pytest.raises(ValueError):
        _with_chunks(data, ((b"ALPH", b"x"), (b"ALPH", b"y")))
    dup = body[: len(body) - len(payload)]  # craft a duplicate past pack()'s check
    i = dup.index(b"ALPH")
    n = len(header.chunks[0][1])
    crafted = bytearray(dup[: i - 1]) + b"\x02" + dup[i:] + dup[i:] + payload
    crafted = bytes(crafted)
    with pytest.raises(BitstreamError, match="twice"):
        fmt.unpack(crafted + zlib.crc32(crafted).to_bytes(4, "little"))
    assert n > 0


def test_extras_roundtrip_directly():
    a = np.random.default_rng(0).integers(0, 256, (5, 7), dtype=np.uint8)
    e = Extras(b"icc" * 50, b"Exif\0\0data", a)
    back = Extras.from_chunks(e.to_chunks(), 7, 5)
    assert back.icc == e.icc and back.exif == e.exif and (back.alpha == a).all()
    assert Extras.from_chunks(e.to_chunks(), 7, 5, alpha=False).alpha is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200), st.integers(0, 40))
def test_fuzzed_chunk_sections_decode_or_raise(tiny_codec, junk, at):
    """Random bytes spliced into the chunk section of a version-3 file (CRC fixed up): the file
    decodes to an image of the header's size or raises BitstreamError, nothing else."""
    data = _sample_v3(tiny_codec)
    header, payload = fmt.unpack(data)
    start = len(data) - 4 - len(payload) - sum(4 + len(fmt._put_varint(len(d))) + len(d) for _, d in header.chunks) - 1
    body = data[:-4]
    body = body[: start + at] + junk + body[start + at + len(junk) // 2 :]
    try:
        out = tiny_codec.decompress(body + zlib.crc32(body).to_bytes(4, "little"))
    except BitstreamError as e:
        assert str(e)
        return
    h2, _ = fmt.unpack(body + zlib.crc32(body).to_bytes(4, "little"))
    assert out.size == (h2.width, h2.height)


_V3: dict = {}


def _sample_v3(codec) -> bytes:
    if "data" not in _V3:
        a = np.zeros((24, 32), np.uint8)
        a[5:9] = 200
        _V3["data"] = codec.compress(Picture(photo(32, 24), a, p3_profile()[:300], b"Exif\0\0abc"), keep_metadata=True)
    return _V3["data"]


@pytest.mark.parametrize("kind", ["flat", "rows", "columns", "noise"])
def test_every_alpha_filter_roundtrips(kind):
    rng = np.random.default_rng(1)
    a = {
        "flat": np.full((9, 13), 7, np.uint8),
        "rows": np.repeat(rng.integers(0, 256, (9, 1), dtype=np.uint8), 13, 1),
        "columns": np.repeat(rng.integers(0, 256, (1, 13), dtype=np.uint8), 9, 0),
        "noise": rng.integers(0, 256, (9, 13), dtype=np.uint8),
    }[kind]
    for f in (0, 1, 2):  # each filter, forced, decodes exactly
        packed = dict(Extras(alpha=a).to_chunks())[b"ALPH"]
        assert packed[0] in (0, 1, 2)
        from pqmim.extras import _unpack_alpha

        plane = a.copy()
        if f == 1:
            plane[:, 1:] -= a[:, :-1]
        elif f == 2:
            plane[1:] -= a[:-1]
        assert (_unpack_alpha(bytes([f]) + zlib.compress(plane.tobytes()), 13, 9) == a).all()
    assert (Extras.from_chunks(Extras(alpha=a).to_chunks(), 13, 9).alpha == a).all()
