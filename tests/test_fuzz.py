"""Property tests: whatever bytes the decoder is given, it either decodes an image of the size
the header states (and then exactly the encoder's codes) or raises BitstreamError with a
message. The long campaign is tests/fuzz_campaign.py."""

import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import photo_crop
from pqmim import BitstreamError
from pqmim import format as fmt
from pqmim.entropy import coder as coder_mod
from pqmim.entropy import replay

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def sample(tiny_codec):
    rgb = photo_crop(100, 80, 96, 72)
    data = tiny_codec.compress(rgb)
    return data, tiny_codec.read_codes(data)[1]


def with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def decode_or_reject(codec, data: bytes, codes=None) -> str:
    """'rejected' or 'decoded'; any other exception fails the test."""
    try:
        header, _ = fmt.unpack(data)
        _, decoded = codec.read_codes(data)
    except BitstreamError as e:
        assert str(e)
        return "rejected"
    image = codec.decode_image(decoded, header.width, header.height)
    assert image.size == (header.width, header.height)
    if codes is not None and decoded.shape == codes.shape:
        assert torch.equal(decoded, codes), "decoded into garbage"
    return "decoded"


@FAST
@given(st.binary(max_size=300))
def test_random_bytes(tiny_codec, data):
    decode_or_reject(tiny_codec, data)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_behind_a_valid_magic(tiny_codec, tail):
    decode_or_reject(tiny_codec, with_crc(fmt.MAGIC + bytes([fmt.VERSION]) + tail))


def test_truncated_at_every_byte(tiny_codec, sample):
    data, _ = sample
    for n in range(len(data)):
        assert decode_or_reject(tiny_codec, data[:n]) == "rejected"


@FAST
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=3))
def test_bit_flips_are_caught_by_the_checksum(tiny_codec, sample, bits):
    data, _ = sample
    flipped = bytearray(data)
    for b in set(b % (len(data) * 8) for b in bits):
        flipped[b // 8] ^= 1 << (b % 8)
    with pytest.raises(BitstreamError):
        tiny_codec.decompress(bytes(flipped))


@FAST
@given(st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_crafted_payloads_never_decode_into_garbage(tiny_codec, sample, where, new):
    """Bytes overwritten and the CRC recomputed: the codes checksum (or the range decoder) stops it."""
    data, codes = sample
    body = bytearray(data[:-4])
    i = where % len(body)
    body[i : i + len(new)] = new
    decode_or_reject(tiny_codec, with_crc(bytes(body)), codes)


@FAST
@given(st.integers(0, 2**35 - 1), st.integers(0, 2**35 - 1), st.integers(0, 300), st.integers(0, 255))
def test_lying_header_fields(tiny_codec, sample, width, height, steps, grid):
    data, codes = sample
    header, payload = fmt.unpack(data)
    body = fmt.MAGIC + bytes([fmt.VERSION]) + header.model_id + fmt._put_varint(width) + fmt._put_varint(height) + fmt._put_varint(steps)
    body += bytes([grid]) + header.codes_crc.to_bytes(4, "little") + payload
    decode_or_reject(tiny_codec, with_crc(body), codes)


@FAST
@given(st.binary(min_size=1, max_size=64))
def test_trailing_garbage(tiny_codec, sample, extra):
    data, _ = sample
    assert decode_or_reject(tiny_codec, data + extra) == "rejected"


def test_huge_dimensions_stop_after_one_chunk(tiny_codec, sample, monkeypatch):
    """A valid-CRC file claiming 8000x8000 pixels with a small payload is refused after the
    first chunk of windows, not after decoding 64 megapixels."""
    data, _ = sample
    header, payload = fmt.unpack(data)
    forged = fmt.pack(
        fmt.Header(header.model_id, 8000, 8000, header.steps, header.shift, header.codes_crc, arithmetic=header.arithmetic), payload
    )
    calls = []
    real = replay.Replayer._piece_logits
    monkeypatch.setattr(
        replay.Replayer, "_piece_logits", lambda self, net, piece, *a: calls.append(len(piece.windows)) or real(self, net, piece, *a)
    )
    with pytest.raises(BitstreamError, match="too short|cannot be decoded"):
        tiny_codec.decompress(forged)
    assert 0 < sum(calls) <= replay.WINDOWS_PER_CALL  # windows computed before the refusal


def test_pixel_limit_is_checked_before_decoding(tiny_codec, sample, monkeypatch):
    data, _ = sample
    header, payload = fmt.unpack(data)
    monkeypatch.setattr(fmt, "MAX_IMAGE_PIXELS", 50 * 50)
    monkeypatch.setattr(coder_mod.MIMCoder, "decode", lambda *a: pytest.fail("decoded past the pixel limit"))
    with pytest.raises(BitstreamError, match="pixel limit"):
        tiny_codec.decompress(data)
    monkeypatch.setattr(fmt, "MAX_IMAGE_PIXELS", None)  # the user may lift it
    assert fmt.unpack(fmt.pack(fmt.Header(header.model_id, 10**5, 10**5, header.steps), payload))[0].width == 10**5


def test_every_symbol_gets_a_nonzero_probability():
    from pqmim.entropy import pmf

    logits = torch.tensor([[0.0, -1e9, 50.0, float(-(2**40))]], dtype=torch.float64)
    w = pmf.integer_weights(logits).numpy()
    assert w.min() >= 1 and w.max() == 2**pmf.WEIGHT_BITS
    assert np.isfinite(pmf.symbol_bits(w.astype(np.float32), np.array([1]))).all()
