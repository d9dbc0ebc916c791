"""pqmim against the classical codecs at the same file size, as one picture (`pqmim compare`).

`comparison_sheet` compresses the whole image with a pqmim Codec, then each classical codec at
the highest quality setting whose file is no larger than pqmim's (pqmim.classical.encode_at_size),
and lays out the same crop of the original and of every decoded image, each labelled with its
setting, bytes, bpp and the PSNR of the full image. Invariants: every byte count is a real
file's size; a classical file is never larger than pqmim's unless even its codec's lowest
setting is (then its row says `over_budget` and its label "smallest N B"); a codec this Pillow
cannot write gets a blank tile and a row saying so, not an exception.

`tile_sheet` draws labelled tiles side by side; the bench's visual comparison uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from . import classical
from .classical import LABELS, decode, encode_at_size
from .evaluate import psnr_uint8
from .image import ImageLike, load_image

GAP = 4  # pixels between tiles
BLANK = (224, 224, 224)  # the tile of a codec that was skipped


def tile_sheet(tiles: Sequence[tuple[np.ndarray | None, str]], gap: int = GAP) -> Image.Image:
    """Tiles (HxWx3 uint8, or None for a blank tile the size of the others) side by side, each
    under its (multi-line) label. A column is as wide as its tile or its label, whichever is
    wider, plus `gap`; the labels fill a band as tall as the tallest one, the tiles sit under it."""
    shapes = [im.shape[:2] for im, _ in tiles if im is not None]
    h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [draw.multiline_textbbox((2, 2), label) for _, label in tiles]
    top = max(b[3] for b in boxes) + 4
    widths = [max(w if im is None else im.shape[1], b[2] + 2) + gap for (im, _), b in zip(tiles, boxes)]
    sheet = Image.new("RGB", (sum(widths), top + h), "white")
    draw = ImageDraw.Draw(sheet)
    x = 0
    for (im, label), width in zip(tiles, widths):
        tile = Image.new("RGB", (w, h), BLANK) if im is None else Image.fromarray(np.ascontiguousarray(im))
        sheet.paste(tile, (x, top))
        draw.multiline_text((x + 2, 2), label, fill="black")
        x += width
    return sheet


def crop_box(width: int, height: int, crop: tuple[int, int, int, int] | None = None, size: int = 256) -> tuple[int, int, int, int]:
    """(x, y, w, h) inside a width x height image: `crop` clipped to the image, or by default a
    centred square of `size` pixels (smaller where the image is)."""
    if crop is None:
        w, h = min(size, width), min(size, height)
        crop = ((width - w) // 2, (height - h) // 2, w, h)
    x, y, w, h = crop
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop {crop} lies outside the {width}x{height} image")
    return x0, y0, x1 - x0, y1 - y0


def comparison_sheet(
    rgb: ImageLike,
    pqmim_codec,
    crop: tuple[int, int, int, int] | None = None,
    size: int = 256,
    codecs: Sequence[str] = ("jpeg420", "webp", "avif"),
) -> tuple[Image.Image, list[dict]]:
    """(sheet, rows): the sheet as described in the module docstring, and one row per codec
    (pqmim first): codec, label, setting, bytes, bpp, psnr, over_budget, skipped (None, or why
    the codec was skipped; then setting, bytes, bpp, psnr and over_budget are None), and for
    a classical codec its file under "file" (see classical_at_size)."""
    rgb = load_image(rgb)
    height, width = rgb.shape[:2]
    x, y, w, h = crop_box(width, height, crop, size)
    cut = lambda im: np.asarray(im)[y : y + h, x : x + w]  # noqa: E731
    bpp = lambda n: n * 8 / (width * height)  # noqa: E731

    data = pqmim_codec.compress(rgb)
    budget = len(data)
    decoded = load_image(pqmim_codec.decompress(data))
    name = getattr(pqmim_codec, "name", None) or "pqmim"
    rows = [
        {
            "codec": "pqmim",
            "label": "pqmim",
            "setting": name,
            "bytes": budget,
            "bpp": bpp(budget),
            "psnr": psnr_uint8(rgb, decoded),
            "over_budget": False,
            "skipped": None,
        }
    ]
    tiles = [(cut(rgb), f"original\n{width}x{height}\ncrop {w}x{h} at {x},{y}"), (cut(decoded), _label(rows[0]))]
    for c in codecs:
        row, out = classical_at_size(c, rgb, budget)
        rows.append(row)
        tiles.append((None, f"{LABELS[c]}\nnot available:\nPillow cannot write it") if out is None else (cut(out), _label(row)))
    return tile_sheet(tiles), rows


def classical_at_size(codec: str, rgb: np.ndarray, budget: int) -> tuple[dict, np.ndarray | None]:
    """(row, decoded image) of a classical codec at the highest setting whose file fits `budget`
    bytes: the row as comparison_sheet's, plus the file itself under "file". When this Pillow
    cannot write the codec, the row says why under "skipped" and the image is None."""
    height, width = rgb.shape[:2]
    if not classical.available(codec):  # looked up on the module, so a test can replace it
        return {
            "codec": codec,
            "label": LABELS[codec],
            "setting": None,
            "bytes": None,
            "bpp": None,
            "psnr": None,
            "over_budget": None,
            "skipped": f"this Pillow build cannot write {LABELS[codec]}",
            "file": None,
        }, None
    quality, file = encode_at_size(codec, rgb, budget)
    out = decode(file)
    return {
        "codec": codec,
        "label": LABELS[codec],
        "setting": f"q={quality}",
        "bytes": len(file),
        "bpp": len(file) * 8 / (width * height),
        "psnr": psnr_uint8(rgb, out),
        "over_budget": len(file) > budget,
        "skipped": None,
        "file": file,
    }, out


def _label(row: dict) -> str:
    size = f"smallest {row['bytes']} B" if row["over_budget"] else f"{row['bytes']} B"
    name = row["setting"] if row["setting"].startswith(row["label"]) else f"{row['label']} {row['setting']}"
    return f"{name}\n{size}, {row['bpp']:.3f} bpp\nPSNR {row['psnr']:.2f} dB"
