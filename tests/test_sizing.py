"""Target-size coding: the best quality level within a byte budget, never over."""

import numpy as np
import pytest

from pqmim.codec import shipped_codec
from pqmim.sizing import TargetSizeError, bytes_for_bpp, compress_to_size

from conftest import PHOTO


def photo() -> np.ndarray:
    from PIL import Image

    with Image.open(PHOTO) as im:
        return np.asarray(im.convert("RGB"))[100:212, 200:360].copy()


def test_best_level_within_budget(tiny_ladder):
    rgb = photo()
    sizes = {q: len(shipped_codec(f"pqmim-q{q}").compress(rgb)) for q in (1, 2, 3)}
    for budget in sorted({*sizes.values(), *(s - 1 for s in sizes.values()), max(sizes.values()) * 2}):
        if budget < min(sizes.values()):
            with pytest.raises(TargetSizeError, match=f"{min(sizes.values())} bytes"):
                compress_to_size(rgb, budget)
            continue
        data, name = compress_to_size(rgb, budget)
        q = int(name[-1])
        assert len(data) == sizes[q] <= budget
        assert q == 3 or sizes[q + 1] > budget  # no higher level would have fitted
        assert data == shipped_codec(name).compress(rgb)


def test_bytes_for_bpp():
    assert bytes_for_bpp(0.1, 768, 512) == 4915
    assert bytes_for_bpp(1.0, 3, 3) == 1
