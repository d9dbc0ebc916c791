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

Both transform precisions are checked: float32 (the files and top-level hashes, the same on
every x86-64 CPU met so far: AMD Zen 4 and Intel Xeon with AMX) and, on CPUs that multiply
bfloat16 natively, bfloat16 (what `auto` runs there). bfloat16 hashes are kept per ISA (the
manifest's "bfloat16" section, keyed by `banded.bfloat16_isa()`), because AMX and AVX512-BF16
kernels round differently: a pixel one level apart, now and then another code chosen
(FORMAT.md). An ISA with no recorded hashes skips those cases, saying how to record them.
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
    """The hashes of one transform precision: the entry itself for float32, else this CPU's
    bfloat16 ISA's record (skips when the manifest has none for it)."""
    if transforms == "float32":
        return entry
    isa = banded.bfloat16_isa()
    if isa not in entry[transforms]:
        pytest.skip(
            f"no {transforms} golden hashes for {isa} CPUs (recorded: {sorted(entry[transforms])}); record them on one: OMP_NUM_THREADS=1 python tests/make_golden.py --bfloat16"
        )
    return entry[transforms][isa]


def test_every_shipped_model_has_a_golden_file():
    from pqmim import zoo

    shipped = {c["name"] for c in zoo.list_models() if (ROOT / "models" / f"{c['name']}.safetensors").is_file()}
    assert shipped and shipped <= {e["model"] for e in ENTRIES}
    assert {"progressive", "send_steps"} <= {k for e in ENTRIES for k in e["options"]}


def test_bfloat16_hashes_are_keyed_by_an_isa_this_code_can_name():
    """A key that `banded.bfloat16_isa()` never returns would be skipped everywhere, unseen."""
    for entry in ENTRIES:
        assert entry["bfloat16"] and set(entry["bfloat16"]) <= {"amx_bf16", "avx512_bf16"}, entry["file"]


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
        assert sha256(data) == expected(entry, transforms)["encoded_sha256"]
