"""Decoding must give back exactly the codes the encoder chose: any image, any thread count,
one by one or in a batch."""

import numpy as np
import pytest
import torch

from conftest import photo_crop


def crops():
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):  # crops of varied sizes and places, 3 of each of the photo's 8 variants
        v = i % 8
        W, H = (768, 512) if v < 4 else (512, 768)
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 200))
        out.append(photo_crop(int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1)), w, h, variant=v))
    return out


ODD_SIZES = [(1, 1), (17, 333), (1000, 20), (15, 16), (16, 15), (129, 7)]


def assert_exact(codec, rgb, data, chosen=None):
    """The decoded codes are the encoder's (recomputed here unless given: same thread count)."""
    _, codes = codec.read_codes(data)
    assert torch.equal(codes, codec.encode_codes([rgb])[0] if chosen is None else chosen)


def test_photo_crops_roundtrip_exactly(tiny_codec):
    for rgb in crops():
        data = tiny_codec.compress(rgb)
        assert_exact(tiny_codec, rgb, data)
        out = tiny_codec.decompress(data)
        assert out.size == (rgb.shape[1], rgb.shape[0]) and out.mode == "RGB"


@pytest.mark.parametrize("w,h", ODD_SIZES)
def test_odd_sizes(tiny_codec, w, h):
    rgb = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    data = tiny_codec.compress(rgb)
    assert_exact(tiny_codec, rgb, data)
    assert tiny_codec.decompress(data).size == (w, h)


@pytest.mark.parametrize("enc_threads,dec_threads", [(1, 2), (2, 1)])
def test_thread_count_does_not_matter(tiny_codec, enc_threads, dec_threads):
    for rgb in crops()[:6]:
        torch.set_num_threads(enc_threads)
        chosen = tiny_codec.encode_codes([rgb])[0]
        data = tiny_codec.compress(rgb)
        torch.set_num_threads(dec_threads)
        assert_exact(tiny_codec, rgb, data, chosen)
        assert tiny_codec.compress(rgb) == data  # the encoder too: same file with any thread count


def test_batch_equals_one_by_one(tiny_codec):
    images = crops()[:4] + [photo_crop(0, 0, 64, 48, variant=3), photo_crop(100, 100, 64, 48, variant=4)]
    batch = tiny_codec.compress_batch(images)
    for rgb, data in zip(images, batch):
        assert_exact(tiny_codec, rgb, data)
        assert data == tiny_codec.compress(rgb)  # the analysis runs image by image in fixed bands


def test_compression_is_deterministic(tiny_codec):
    rgb = photo_crop(50, 50, 120, 90, variant=7)
    assert tiny_codec.compress(rgb) == tiny_codec.compress(rgb)


def test_range_coder_spends_what_the_model_predicts(tiny_codec):
    """The payload is within a few bytes of the information content -sum log2 p(code)."""
    for rgb in crops()[:4]:
        codes = tiny_codec.encode_codes([rgb])[0]
        coded = tiny_codec.coder.encode(codes)
        ideal = tiny_codec.coder.information_bits(codes, coded.shift)
        assert ideal - 1 <= len(coded.payload) * 8 <= ideal * 1.01 + 64


def test_wrong_model_fails_clearly(tiny_codec):
    from conftest import make_tiny_model

    from pqmim import BitstreamError
    from pqmim.codec import Codec

    other = Codec(make_tiny_model(seed=1), name="other")
    data = tiny_codec.compress(photo_crop(0, 0, 32, 32, variant=1))
    with pytest.raises(BitstreamError, match="encoded with"):
        other.decompress(data)


def test_corrupted_payload_is_reported_not_decoded(tiny_codec):
    from pqmim import BitstreamError

    data = bytearray(tiny_codec.compress(photo_crop(0, 0, 64, 64, variant=2)))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum"):
        tiny_codec.decompress(bytes(data))


@pytest.mark.parametrize("noise,exact", [(2.0**-38, True), (1e-4, False)])
def test_decodes_exactly_when_logits_differ_within_the_margin(tiny_codec, monkeypatch, noise, exact):
    """Another machine, simulated: the decoder's float64 logits are off by random noise. Within
    the margin the encoder guaranteed, decoding is exact; far beyond it (float32-size errors)
    the codes checksum refuses the file instead of returning garbage."""
    from pqmim import BitstreamError
    from pqmim.entropy import pmf

    assert noise < pmf.MARGIN or not exact
    monkeypatch.setattr(tiny_codec, "arithmetic", "float64")  # the margin is float64's (integer logits are exact)
    rgb = photo_crop(200, 100, 120, 96)
    data = tiny_codec.compress(rgb)
    chosen = tiny_codec.read_codes(data)[1]
    ent = tiny_codec.coder.entropy
    gen = torch.Generator().manual_seed(0)
    real = type(ent).logits
    monkeypatch.setattr(
        ent, "logits", lambda h: (lambda x: x + (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * noise)(real(ent, h))
    )
    if exact:
        assert torch.equal(tiny_codec.read_codes(data)[1], chosen)
    else:
        with pytest.raises(BitstreamError, match="checksum|too short|cannot be decoded"):
            tiny_codec.read_codes(data)


def test_encoder_shifts_the_grid_when_a_logit_is_too_close(tiny_codec, monkeypatch):
    """Force every logit onto a boundary of the unshifted grid: the encoder must pick another
    shift, record it, and the file must still decode exactly."""
    from pqmim.entropy import pmf

    monkeypatch.setattr(tiny_codec, "arithmetic", "float64")  # integer arithmetic needs no shift: its logits are exact
    ent = tiny_codec.coder.entropy
    real = type(ent).logits
    monkeypatch.setattr(
        ent, "logits", lambda h: torch.floor(real(ent, h) * pmf.STEPS_PER_NAT) / pmf.STEPS_PER_NAT + 0.5 / pmf.STEPS_PER_NAT
    )
    rgb = photo_crop(0, 0, 64, 64, variant=6)
    data = tiny_codec.compress(rgb)
    header, codes = tiny_codec.read_codes(data)
    assert header.shift != 0
    assert_exact(tiny_codec, rgb, data)


def test_progress_callback_counts_up_to_its_total(tiny_codec):
    rgb = photo_crop(0, 0, 200, 136)
    calls = []
    data = tiny_codec.compress(rgb, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    seen = []
    tiny_codec.decompress(data, progress=lambda done, total: seen.append((done, total)))
    assert seen == calls  # the decoder replays the encoder's steps
    assert data == tiny_codec.compress(rgb)  # reporting changes nothing
