"""Classical codecs for the bench: the Pillow settings swept. The codecs themselves (settings,
labels, availability, encode / decode) live in pqmim.classical."""

from __future__ import annotations

from pqmim.classical import CODECS, LABELS, available, decode, encode  # noqa: F401  (the bench's names)

# Quality settings that span about 0.05-2 bpp on Kodak, as far as each codec reaches
# (JPEG cannot go below ~0.17 bpp, AVIF's lowest setting is ~0.07 bpp).
QUALITIES = {
    "jpeg420": [3, 5, 10, 15, 20, 30, 50, 75, 90],
    "jpeg444": [1, 5, 10, 15, 20, 30, 50, 75, 85],
    "webp": [0, 5, 10, 20, 30, 50, 70, 80, 90],
    "avif": [0, 10, 20, 30, 40, 50, 60, 70, 80],
}
