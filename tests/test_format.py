import zlib

import pytest

from pqmim import format as fmt
from pqmim.format import BitstreamError, Header


def sample() -> bytes:
    return fmt.pack(Header(b"\x01\x02\x03\x04", 768, 512, 8), bytes(range(200)))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**28])
def test_varint_roundtrip(n):
    enc = fmt._put_varint(n)
    assert fmt._get_varint(enc, 0, "x") == (n, len(enc))


def test_pack_unpack_and_small_header():
    data = sample()
    h, payload = fmt.unpack(data)
    assert h == Header(b"\x01\x02\x03\x04", 768, 512, 8)
    assert payload == bytes(range(200))
    assert len(data) - len(payload) <= 25  # magic, version, id, w, h, steps, grid, codes crc, crc


def test_every_truncation_is_refused():
    data = sample()
    for n in range(len(data)):
        with pytest.raises(BitstreamError):
            fmt.unpack(data[:n])


def test_every_single_bit_flip_is_detected():
    data = bytearray(sample())
    for i in range(len(data)):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(BitstreamError):
                fmt.unpack(bytes(bad))


def test_trailing_garbage_is_refused():
    with pytest.raises(BitstreamError, match="checksum"):
        fmt.unpack(sample() + b"\x00junk")


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "magic"),
        (b"PQ", "truncated"),
        (b"PQM\x09" + b"\0" * 30, "version"),
    ],
)
def test_foreign_and_broken_inputs(data, match):
    with pytest.raises(BitstreamError, match=match):
        fmt.unpack(data)


def _forge(width: int, height: int, steps: int = 8) -> bytes:
    body = fmt.MAGIC + bytes([fmt.VERSION]) + b"abcd" + fmt._put_varint(width) + fmt._put_varint(height) + fmt._put_varint(steps) + bytes(5)
    return body + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize(
    "w,h,match", [(0, 10, "invalid image size"), (10, 0, "invalid image size"), (2**20, 2**20, "pixel limit"), (100, 100, None)]
)
def test_lying_dimensions_checked_before_decoding(w, h, match):
    if match is None:
        assert fmt.unpack(_forge(w, h))[0].width == 100
    else:
        with pytest.raises(BitstreamError, match=match):
            fmt.unpack(_forge(w, h))


def test_pixel_limit_is_overridable(monkeypatch):
    monkeypatch.setattr(fmt, "MAX_IMAGE_PIXELS", None)
    assert fmt.unpack(_forge(2**20, 2**20))[0].height == 2**20


def test_bitstream_error_is_a_value_error():
    assert issubclass(BitstreamError, ValueError)
