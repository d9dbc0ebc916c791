"""Target-size coding: the best file within a byte budget (rung and steps sent), never over."""

import numpy as np
import pytest

from pqmim import format as fmt
from pqmim.codec import shipped_codec
from pqmim.evaluate import psnr_uint8
from pqmim.sizing import TargetSizeError, bytes_for_bpp, compress_to_size

from conftest import PHOTO


def photo() -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))[100:212, 200:360].copy()


def quality(name: str, data: bytes, rgb: np.ndarray) -> float:
    return psnr_uint8(rgb, np.asarray(shipped_codec(name).decompress(data)))


def test_best_level_within_budget_whole_files(tiny_ladder):
    rgb = photo()
    sizes = {q: len(shipped_codec(f"pqmim-q{q}").compress(rgb)) for q in (1, 2, 3)}
    for budget in sorted({*sizes.values(), *(s - 1 for s in sizes.values()), max(sizes.values()) * 2}):
        if budget < min(sizes.values()):
            with pytest.raises(TargetSizeError, match=f"{min(sizes.values())} bytes"):
                compress_to_size(rgb, budget, partial=False)
            continue
        data, name = compress_to_size(rgb, budget, partial=False)
        q = int(name[-1])
        assert len(data) == sizes[q] <= budget
        assert q == 3 or sizes[q + 1] > budget  # no higher level would have fitted
        assert data == shipped_codec(name).compress(rgb)


def test_steps_sent_never_over_and_never_worse(tiny_ladder):
    """With steps sent as a choice too: never over the budget, and at least as good (PSNR) as
    the best whole file within it; below the whole files, a file that sends fewer steps."""
    rgb = photo()
    whole = {q: shipped_codec(f"pqmim-q{q}").compress(rgb) for q in (1, 2, 3)}
    smallest = len(shipped_codec("pqmim-q1").compress(rgb, send_steps=1))
    for budget in (smallest - 1, smallest, smallest + 40, len(whole[1]) // 2, len(whole[1]), len(whole[2]) - 1, len(whole[3]) + 5):
        if budget < smallest:
            with pytest.raises(TargetSizeError, match=f"{smallest} bytes"):
                compress_to_size(rgb, budget)
            continue
        data, name = compress_to_size(rgb, budget)
        assert len(data) <= budget
        header, _ = fmt.unpack(data)
        fitting = [q for q in whole if len(whole[q]) <= budget]
        if fitting:
            q = max(fitting)
            assert quality(name, data, rgb) >= quality(f"pqmim-q{q}", whole[q], rgb)
        else:
            assert header.sent is not None
        if header.sent is not None:  # the most steps of its rung that fit
            more = shipped_codec(name).compress(rgb, send_steps=header.sent + 1)
            assert len(more) > budget


def test_bytes_for_bpp():
    assert bytes_for_bpp(0.1, 768, 512) == 4915
    assert bytes_for_bpp(1.0, 3, 3) == 1
