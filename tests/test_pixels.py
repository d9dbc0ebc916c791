"""A file decodes to the same pixels on one machine whatever the thread count or batch (not
only the same codes): the synthesis runs in fixed row bands (pqmim/models/banded.py)."""

import threading
import time

import numpy as np
import torch

from conftest import photo_crop
from pqmim.codec import Codec


def decoded(codec: Codec, data: bytes, threads: int) -> np.ndarray:
    torch.set_num_threads(threads)
    return np.asarray(codec.decompress(data))


def test_shipped_model_decodes_the_same_pixels_with_any_thread_count():
    """The default model on the shipped photo: plain multi-threaded convolutions give pixels
    that change with the thread count here (kodim21: 20 sub-pixels off by one between 1 and 2
    threads); the banded synthesis must not."""
    codec = Codec.from_pretrained()
    data = codec.compress(photo_crop(0, 0, 768, 512))
    ref = decoded(codec, data, 1)
    for threads in (2, 3, 4):
        assert np.array_equal(decoded(codec, data, threads), ref), f"{threads} threads"


def test_tiled_images_decode_the_same_pixels_with_any_thread_count(tiny_codec):
    tiny_codec.tile_pixels = 64  # force tiles with halos on a small image
    try:
        data = tiny_codec.compress(photo_crop(10, 20, 300, 170))
        ref = decoded(tiny_codec, data, 1)
        assert np.array_equal(decoded(tiny_codec, data, 3), ref)
    finally:
        tiny_codec.tile_pixels = Codec(tiny_codec.model).tile_pixels


def test_pixels_do_not_depend_on_the_batch(tiny_codec):
    """A code grid decodes to the same pixels alone and beside other grids."""
    a = tiny_codec.encode_codes([photo_crop(0, 0, 128, 96, variant=1)])[0]
    b = tiny_codec.encode_codes([photo_crop(200, 100, 128, 96, variant=2)])[0]
    model = tiny_codec.model
    for threads in (1, 2):
        torch.set_num_threads(threads)
        both = model.decode_codes(torch.stack([a, b]))
        assert torch.equal(both[0], model.decode_codes(a[None])[0])
        assert torch.equal(both[1], model.decode_codes(b[None])[0])


def test_banded_synthesis_computes_the_decoder(tiny_codec):
    """Same function as the plain decoder, up to float rounding."""
    codes = tiny_codec.encode_codes([photo_crop(64, 64, 160, 112)])[0]
    model = tiny_codec.model
    with torch.no_grad():
        plain = (model.decoder(model.quantizer.latents_for(codes[None])) + 0.5).clamp(0, 1)
    assert float((model.decode_codes(codes[None]) - plain).abs().max()) < 1e-5


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
