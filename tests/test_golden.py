"""Golden files: users' .pqm files must keep decoding to the same pixels.

tests/golden/ holds one small file per shipped model (a 96x64 crop of examples/kodim23.png),
a progressive file and a send-steps file of the default model, each in float64 arithmetic
(versions 2 and 3) and in integer arithmetic (versions 4 and 5, files ending in -int, since
0.7.0), and manifest.json with the SHA-256 of each file's bytes, decoded pixels and codes
(written by tests/make_golden.py; the float64 files were checked when they were made against
release 0.4.0, commit f026503, which decodes them to the same pixels and encodes the crop to
the same bytes, and 0.7.0's make_golden.py rewrote them byte for byte). A change in our code or in a dependency
(constriction turns the float probabilities into integer tables; torch computes them) that
would break existing files fails here. Needs nothing outside the repository.

Both transform precisions are checked: float32 (the files and top-level hashes) and, on CPUs
that multiply bfloat16 natively, bfloat16 (the manifest's "bfloat16" section: what `auto` runs
there). Pixel hashes are those of the machine class that wrote the manifest (x86-64 with
AVX-512 and AVX512-BF16): another CPU may round the float synthesis differently (FORMAT.md).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import ROOT, PHOTO
from PIL import Image

from pqmim.codec import Codec
from pqmim.models import banded

GOLDEN = ROOT / "tests" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
ENTRIES = MANIFEST["files"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels(image: Image.Image) -> str:
    return sha256(np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8)).tobytes())


TRANSFORMS = [
    "float32",
    pytest.param("bfloat16", marks=pytest.mark.skipif(not banded.native_bfloat16(), reason="this CPU has no native bfloat16")),
]


@pytest.fixture(scope="module")
def codecs():
    cache: dict[tuple[str, str], Codec] = {}
    return lambda name, transforms: cache.setdefault((name, transforms), Codec.from_pretrained(name, transforms=transforms))


def expected(entry: dict, transforms: str) -> dict:
    """The hashes of one transform precision: the entry itself for float32."""
    return entry if transforms == "float32" else entry[transforms]


def test_every_shipped_model_has_a_golden_file():
    from pqmim import zoo

    shipped = {c["name"] for c in zoo.list_models() if (ROOT / "models" / f"{c['name']}.safetensors").is_file()}
    assert shipped and shipped <= {e["model"] for e in ENTRIES}
    assert {"progressive", "send_steps"} <= {k for e in ENTRIES for k in e["options"]}


@pytest.mark.parametrize("transforms", TRANSFORMS)
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_file_decodes_to_the_same_pixels_and_codes(entry, transforms, codecs):
    data = (GOLDEN / entry["file"]).read_bytes()
    assert sha256(data) == entry["file_sha256"], "the golden file itself changed"
    codec, want = codecs(entry["model"], transforms), expected(entry, transforms)
    assert codec.model_id.hex() == entry["model_id"]
    assert pixels(codec.decompress(data)) == want["pixels_sha256"]
    codes = codec.read_codes(data)[1]
    assert sha256(np.ascontiguousarray(codes.numpy().astype("<u2")).tobytes()) == entry["codes_sha256"]
    for prefix in want.get("prefixes", []):
        assert pixels(codec.decompress(data[: prefix["bytes"]], partial=True)) == prefix["pixels_sha256"]


@pytest.mark.parametrize("transforms", TRANSFORMS)
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_golden_crop_encodes_to_the_same_bytes(entry, transforms, codecs):
    x, y, w, h = entry["crop"]
    with Image.open(PHOTO) as im:
        rgb = np.ascontiguousarray(np.asarray(im.convert("RGB"))[y : y + h, x : x + w])
    assert sha256(rgb.tobytes()) == entry["crop_sha256"]
    data = codecs(entry["model"], transforms).compress(rgb, **entry["options"])
    if transforms == "float32":
        assert data == (GOLDEN / entry["file"]).read_bytes()
    else:
        assert sha256(data) == entry[transforms]["encoded_sha256"]
