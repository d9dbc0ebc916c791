"""pqmim compare: each classical codec at the best setting within a byte budget, and the sheet of
the same crop from pqmim and from each classical codec at pqmim's file size."""

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from pqmim import classical
from pqmim.classical import QUALITY_RANGE, encode, encode_at_size
from pqmim.compare import BLANK, comparison_sheet, crop_box


def example_crop(x: int, y: int, w: int, h: int) -> np.ndarray:
    with Image.open(ROOT / "examples" / "kodim23.png") as im:
        return np.asarray(im.convert("RGB"))[y : y + h, x : x + w].copy()


RGB = example_crop(200, 100, 256, 192)


def need(codec: str) -> None:
    if not classical.available(codec):
        pytest.skip(f"this Pillow build cannot write {codec}")


@pytest.mark.parametrize("codec", list(QUALITY_RANGE))
def test_encode_at_size_gives_the_highest_setting_that_fits(codec):
    need(codec)
    lo, hi = QUALITY_RANGE[codec]
    for budget in (len(encode(codec, RGB, lo)), len(encode(codec, RGB, 30)) + 1, len(encode(codec, RGB, 80)) - 1, 10**7):
        q, data = encode_at_size(codec, RGB, budget)
        assert lo <= q <= hi and len(data) <= budget and data == encode(codec, RGB, q)
        assert q == hi or len(encode(codec, RGB, q + 1)) > budget
    if codec.startswith("jpeg"):  # cheap enough to check against every setting
        sizes = {q: len(encode(codec, RGB, q)) for q in range(lo, hi + 1)}
        for budget in (3000, 5000, 9000):
            assert encode_at_size(codec, RGB, budget)[0] == max(q for q, n in sizes.items() if n <= budget)


@pytest.mark.parametrize("codec", list(QUALITY_RANGE))
def test_encode_at_size_below_the_lowest_setting(codec):
    need(codec)
    lo = QUALITY_RANGE[codec][0]
    q, data = encode_at_size(codec, RGB, 100)
    assert q == lo and data == encode(codec, RGB, lo) and len(data) > 100  # over budget: the caller says "smallest"


def test_crop_box():
    assert crop_box(768, 512) == (256, 128, 256, 256)
    assert crop_box(100, 60, size=256) == (0, 0, 100, 60)
    assert crop_box(100, 60, crop=(80, 50, 40, 40)) == (80, 50, 20, 10)
    with pytest.raises(ValueError):
        crop_box(100, 60, crop=(100, 0, 10, 10))


class Padded:
    """tiny_codec with filler bytes after its file: a larger budget, so that the classical codecs fit."""

    def __init__(self, codec, pad: int) -> None:
        self.codec, self.pad, self.name = codec, pad, "padded"

    def compress(self, rgb):
        return self.codec.compress(rgb) + b"\0" * self.pad

    def decompress(self, data):
        return self.codec.decompress(data[: len(data) - self.pad])


@pytest.mark.parametrize("pad", [0, 4000])
def test_comparison_sheet(tiny_codec, pad):
    codec = Padded(tiny_codec, pad)
    sheet, rows = comparison_sheet(RGB, codec, size=160, codecs=("jpeg420", "webp"))
    budget = len(codec.compress(RGB))
    assert [r["codec"] for r in rows] == ["pqmim", "jpeg420", "webp"] and rows[0]["bytes"] == budget
    assert rows[0]["psnr"] > 0 and rows[0]["bpp"] == pytest.approx(budget * 8 / (256 * 192))
    for r in rows[1:]:
        q = int(r["setting"].removeprefix("q="))
        assert r["bytes"] == len(encode(r["codec"], RGB, q)) and r["bpp"] == pytest.approx(r["bytes"] * 8 / (256 * 192))
        assert r["over_budget"] == (r["bytes"] > budget) and r["psnr"] > 10
        if r["over_budget"]:
            assert q == QUALITY_RANGE[r["codec"]][0]
    if pad:  # with 4000 more bytes, both codecs fit
        assert not any(r["over_budget"] for r in rows)
    # four tiles of the centred 160x160 crop (labels fit in 160 px), under a band of labels
    assert sheet.width == 4 * (160 + 4) and sheet.height > 160 + 30
    top = sheet.height - 160
    assert (np.asarray(sheet)[top:, :160] == RGB[16:176, 48:208]).all()


def test_sheet_with_a_chosen_crop(tiny_codec):
    sheet, _ = comparison_sheet(RGB, tiny_codec, crop=(10, 20, 64, 48), codecs=("jpeg420",))
    top = sheet.height - 48
    assert (np.asarray(sheet)[top:, :64] == RGB[20:68, 10:74]).all()


def test_unavailable_codec_is_reported_not_raised(tiny_codec, monkeypatch):
    real = classical.available
    monkeypatch.setattr(classical, "available", lambda c: c != "avif" and real(c))
    sheet, rows = comparison_sheet(RGB, tiny_codec, size=128, codecs=("jpeg420", "avif"))
    avif = rows[-1]
    assert avif["codec"] == "avif" and "cannot write AVIF" in avif["skipped"] and avif["bytes"] is None
    assert rows[1]["skipped"] is None and rows[1]["bytes"] > 0
    assert (np.asarray(sheet)[-128:, -132:-4] == BLANK).all()  # the last column: a blank tile
