"""A file decodes to the same pixels on one machine whatever the thread count or batch (not
only the same codes): the synthesis runs in fixed row bands (pqmim/models/banded.py), in
float32 or, where the CPU has it natively, with bfloat16 convolutions (both are tested here on
every machine; bfloat16 is emulated, slower, where the CPU lacks it)."""

import threading
import time

import numpy as np
import pytest
import torch

from conftest import make_tiny_model, photo_crop
from pqmim.codec import Codec, transform_dtype
from pqmim.evaluate import psnr_uint8
from pqmim.models import banded
from pqmim.threads import fixed_pieces

TRANSFORMS = ["float32", "bfloat16"]


def decoded(codec: Codec, data: bytes, threads: int) -> np.ndarray:
    torch.set_num_threads(threads)
    return np.asarray(codec.decompress(data))


@pytest.mark.parametrize("transforms", TRANSFORMS)
def test_shipped_model_decodes_the_same_pixels_with_any_thread_count(transforms):
    """The default model on the shipped photo: plain multi-threaded convolutions give pixels
    that change with the thread count here (kodim21: 20 sub-pixels off by one between 1 and 2
    threads); the banded synthesis must not, in either precision."""
    codec = Codec.from_pretrained(transforms=transforms)
    data = codec.compress(photo_crop(0, 0, 768, 512))
    ref = decoded(codec, data, 1)
    for threads in (2, 3, 4):
        assert np.array_equal(decoded(codec, data, threads), ref), f"{threads} threads"


@pytest.mark.parametrize("transforms", TRANSFORMS)
def test_tiled_images_decode_the_same_pixels_with_any_thread_count(transforms):
    codec = Codec(make_tiny_model(), name="tiny", transforms=transforms)
    codec.tile_pixels = 64  # force tiles with halos on a small image
    data = codec.compress(photo_crop(10, 20, 300, 170))
    ref = decoded(codec, data, 1)
    assert np.array_equal(decoded(codec, data, 3), ref)


@pytest.mark.parametrize("transforms", TRANSFORMS)
def test_pixels_do_not_depend_on_the_batch(tiny_codec, transforms):
    """A code grid decodes to the same pixels alone and beside other grids."""
    a = tiny_codec.encode_codes([photo_crop(0, 0, 128, 96, variant=1)])[0]
    b = tiny_codec.encode_codes([photo_crop(200, 100, 128, 96, variant=2)])[0]
    model, dtype = tiny_codec.model, getattr(torch, transforms)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        both = model.decode_codes(torch.stack([a, b]), dtype)
        assert torch.equal(both[0], model.decode_codes(a[None], dtype)[0])
        assert torch.equal(both[1], model.decode_codes(b[None], dtype)[0])


def test_bfloat16_transforms_stay_within_a_level_of_float32():
    """The lowered synthesis gives the float32 synthesis's pixels to within one level and the
    same PSNR (Kodak, default model: 6% of sub-pixels one level off, -0.0004 dB); the lowered
    analysis may pick other codes but not worse ones."""
    f32, bf16 = Codec.from_pretrained(transforms="float32"), Codec.from_pretrained(transforms="bfloat16")
    rgb = photo_crop(128, 64, 384, 256)
    data = f32.compress(rgb)
    a, b = np.asarray(f32.decompress(data)), np.asarray(bf16.decompress(data))
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1
    assert abs(psnr_uint8(rgb, a) - psnr_uint8(rgb, b)) < 0.01
    other = bf16.compress(rgb)
    assert abs(psnr_uint8(rgb, np.asarray(f32.decompress(other))) - psnr_uint8(rgb, a)) < 0.05
    assert len(other) <= len(data) * 1.02


def test_transforms_setting():
    assert transform_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if banded.native_bfloat16() else torch.float32)
    assert transform_dtype("float32", torch.device("cpu")) == torch.float32
    assert transform_dtype("auto", torch.device("cuda")) == torch.float32  # the GPU runs the plain float32 transforms
    with pytest.raises(ValueError, match="for the CPU"):
        transform_dtype("bfloat16", torch.device("cuda"))
    with pytest.raises(ValueError, match="transforms must be one of"):
        Codec(make_tiny_model(), transforms="float16")


def test_lowered_transforms_follow_the_weights():
    """The bfloat16 copy of a transform is remade when the weights change in place (a training
    step, load_state_dict), so it never decodes with stale weights."""
    model = make_tiny_model()
    codes = torch.randint(0, model.cfg.k, (1, model.cfg.m, 3, 4))
    before = model.decode_codes(codes, torch.bfloat16)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(1.5)
    after = model.decode_codes(codes, torch.bfloat16)
    assert not torch.equal(before, after)
    fresh = make_tiny_model()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(after, fresh.decode_codes(codes, torch.bfloat16))


def test_banded_synthesis_computes_the_decoder(tiny_codec):
    """Same function as the plain decoder, up to float rounding."""
    codes = tiny_codec.encode_codes([photo_crop(64, 64, 160, 112)])[0]
    model = tiny_codec.model
    with torch.no_grad():
        plain = (model.decoder(model.quantizer.latents_for(codes[None])) + 0.5).clamp(0, 1)
    assert float((model.decode_codes(codes[None]) - plain).abs().max()) < 1e-5


def test_pieces_are_computed_without_autograd():
    """The pool's workers run with grad mode off (a new thread starts with it on): a band of a
    transform whose weights require grad records no graph, which would keep its inputs alive."""
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    assert conv.weight.requires_grad
    with fixed_pieces() as pool:
        assert not pool.submit(torch.is_grad_enabled).result()
        assert not pool.submit(conv, torch.randn(1, 8, 4, 4)).result().requires_grad
    assert torch.is_grad_enabled()  # the calling thread's own mode is left alone


def test_coding_leaves_the_thread_count_alone_even_when_two_threads_code(tiny_codec):
    """Codecs working in two threads at once do not change each other's thread setting nor the
    calling thread's (each thread keeps its own count, before, during and after its coding),
    and what they code is what one thread alone codes."""
    torch.set_num_threads(3)
    other = Codec(tiny_codec.model, name="tiny")
    images = [photo_crop(0, 0, 200, 150, variant=v) for v in range(2)]
    alone = [tiny_codec.compress(im) for im in images]
    results: dict[int, bytes] = {}
    counts: dict[int, set[int]] = {0: set(), 1: set()}
    seen_by_main: set[int] = set()

    def work(i: int, codec: Codec) -> None:
        torch.get_num_threads()  # torch reads the newest count set anywhere at a thread's first query, overriding
        torch.set_num_threads(2 + i)  # an earlier set: query first, then each thread has its own setting
        for _ in range(3):
            results[i] = codec.decompress(codec.compress(images[i])).tobytes()
            counts[i].add(torch.get_num_threads())

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate((tiny_codec, other))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen_by_main.add(torch.get_num_threads())
        time.sleep(0.005)
    for t in threads:
        t.join()
    assert seen_by_main == {3} and torch.get_num_threads() == 3
    assert counts == {0: {2}, 1: {3}}
    for i in range(2):
        assert results[i] == tiny_codec.decompress(alone[i]).tobytes()
