"""Writes the golden files of tests/golden/: one small .pqm per shipped model, plus a progressive
file and a send-steps file of the default model, and tests/golden/manifest.json with the SHA-256
of each file's decoded pixels and codes. tests/test_golden.py checks that this release still
decodes them to exactly those pixels (and re-encodes the crops to exactly those bytes).

Run it by hand, from the repository root, only when a format or model change is *meant* to
break existing files (a new model, retrained weights, a new format version), and say so in the
commit message: regenerating after an accidental change hides the very break the test exists
to catch.

    OMP_NUM_THREADS=1 python tests/make_golden.py

A CPU class with native bfloat16 that the manifest has no bfloat16 hashes for (test_golden.py
skips those cases there, saying so) gets them, the files and float32 hashes untouched, with

    OMP_NUM_THREADS=1 python tests/make_golden.py --bfloat16

which first checks that every file still decodes, and its crop still encodes, to the recorded
float32 hashes (so it cannot paper over a break), and records a class's hashes only once.

Manifest (tests/golden/manifest.json):

    {
      "source": "examples/kodim23.png",       # the photo the crops come from
      "files": [
        {
          "file": "pqmim-q3.pqm",             # beside the manifest
          "model": "pqmim-q3",                # shipped model name (zoo)
          "model_id": "66a84c78",             # its id, as in the model card
          "crop": [x, y, w, h],               # crop of the source photo that was encoded
          "crop_sha256": "...",               # of the crop's uint8 RGB bytes (HxWx3, C order)
          "options": {},                      # keyword arguments of Codec.compress
          "bytes": 123,                       # file size
          "file_sha256": "...",               # of the file
          "pixels_sha256": "...",             # of decompress(file) as uint8 RGB bytes (HxWx3)
          "codes_sha256": "...",              # of the codes read_codes gives, uint16 LE, C order (m, h, w)
          "prefixes": [                       # progressive files only: decompress(file[:n], partial=True)
            {"bytes": n, "pixels_sha256": "..."}
          ],
          "bfloat16": {                       # the same with transforms="bfloat16", per bfloat16 ISA
            "avx512_bf16": {                  #   (banded.bfloat16_isa(): "amx_bf16" or "avx512_bf16"):
              "encoded_sha256": "...",        #   of compress(crop) (its analysis may pick other codes)
              "pixels_sha256": "...",         #   of decompress(file)
              "prefixes": [...]
            }, ...
          }
        }, ...
      ]
    }

The files and the top-level hashes are those of transforms="float32", the transforms every
release before 0.5.0 ran: the same on every x86-64 machine the project has run on so far. The
bfloat16 ones are per ISA because AMX and AVX512-BF16 kernels round differently (a pixel one
level apart; the analysis may pick another code).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
SOURCE = "examples/kodim23.png"
CROP = (320, 200, 96, 64)  # x, y, w, h: 96x64 pixels, 6x4 latent positions at f=16 (the parrot's eye)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def photo_crop(x: int, y: int, w: int, h: int) -> np.ndarray:
    from PIL import Image

    with Image.open(ROOT / SOURCE) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[y : y + h, x : x + w])


def pixels_sha256(image) -> str:
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return sha256(np.ascontiguousarray(rgb).tobytes())


def codes_sha256(codes) -> str:
    return sha256(np.ascontiguousarray(codes.numpy().astype("<u2")).tobytes())


def shipped_models() -> list[dict]:
    """Cards of the models in the checkout's models/ folder (never $PQMIM_MODELS)."""
    os.environ.pop("PQMIM_MODELS", None)
    from pqmim import zoo

    models = ROOT / "models"
    return [c for c in zoo.list_models() if (models / f"{c['name']}.safetensors").is_file()]


def entries(crop=CROP):
    """(file name, model name, compress options, prefix lengths) of every golden file: each in
    float64 arithmetic (versions 2 and 3: the files of 0.2.0 to 0.5.0, unchanged since) and in
    integer arithmetic (versions 4 and 5, since 0.7.0: name ending in -int)."""
    from pqmim import zoo

    default = zoo.resolve(None)
    out = []
    for arithmetic, tail in (("float64", ""), ("integer", "-int")):
        out += [(f"{c['name']}{tail}.pqm", c["name"], {"arithmetic": arithmetic}, None) for c in shipped_models()]
        out.append((f"{default}-progressive{tail}.pqm", default, {"progressive": True, "arithmetic": arithmetic}, "half"))
        out.append((f"{default}-send2{tail}.pqm", default, {"send_steps": 2, "arithmetic": arithmetic}, None))
    return out


def bfloat16_record(low, rgb: np.ndarray, data: bytes, options: dict, prefixes: list[dict]) -> dict:
    """One file's bfloat16 hashes on this machine: its crop's encoding, its pixels, its prefixes'."""
    out = {"encoded_sha256": sha256(low.compress(rgb, **options)), "pixels_sha256": pixels_sha256(low.decompress(data))}
    if prefixes:
        out["prefixes"] = [
            {"bytes": p["bytes"], "pixels_sha256": pixels_sha256(low.decompress(data[: p["bytes"]], partial=True))} for p in prefixes
        ]
    return out


def main(argv: list[str]) -> int:
    from pqmim.codec import Codec
    from pqmim.models import banded

    only_bfloat16 = argv == ["--bfloat16"]
    if argv and not only_bfloat16:
        print("usage: python tests/make_golden.py [--bfloat16]", file=sys.stderr)
        return 2
    isa = banded.bfloat16_isa()
    if only_bfloat16 and isa is None:
        print("this CPU has no native bfloat16: nothing to record", file=sys.stderr)
        return 1
    path = GOLDEN / "manifest.json"
    old = {e["file"]: e for e in json.loads(path.read_text())["files"]} if path.is_file() else {}
    GOLDEN.mkdir(exist_ok=True)
    rgb = photo_crop(*CROP)
    codecs: dict[tuple[str, str], Codec] = {}
    files = []
    for fname, model, options, prefixes in entries():
        codec = codecs.setdefault((model, "float32"), Codec.from_pretrained(model, transforms="float32"))
        if only_bfloat16:
            entry, data = old.get(fname), (GOLDEN / fname).read_bytes() if (GOLDEN / fname).is_file() else b""
            if entry is None or sha256(data) != entry["file_sha256"] or codec.compress(rgb, **options) != data:
                print(f"{fname}: missing, or float32 no longer encodes the crop to it: refusing", file=sys.stderr)
                return 1
            if pixels_sha256(codec.decompress(data)) != entry["pixels_sha256"]:
                print(f"{fname}: float32 pixels changed: refusing", file=sys.stderr)
                return 1
            if isa in entry.get("bfloat16", {}):
                print(f"{fname}: {isa} hashes already recorded: refusing to overwrite", file=sys.stderr)
                return 1
        else:
            data = codec.compress(rgb, **options)
            (GOLDEN / fname).write_bytes(data)
            entry = {
                "file": fname,
                "model": model,
                "model_id": codec.model_id.hex(),
                "crop": list(CROP),
                "crop_sha256": sha256(rgb.tobytes()),
                "options": options,
                "bytes": len(data),
                "file_sha256": sha256(data),
                "pixels_sha256": pixels_sha256(codec.decompress(data)),
                "codes_sha256": codes_sha256(codec.read_codes(data)[1]),
            }
            if prefixes == "half":  # a cut inside the payload: the steps it holds, the rest filled in
                n = len(data) // 2
                entry["prefixes"] = [{"bytes": n, "pixels_sha256": pixels_sha256(codec.decompress(data[:n], partial=True))}]
            # other ISAs' bfloat16 hashes stay valid only for a file and model that did not change
            same = old.get(fname, {})
            kept = (
                same.get("bfloat16", {})
                if (same.get("file_sha256"), same.get("model_id")) == (entry["file_sha256"], entry["model_id"])
                else {}
            )
            entry["bfloat16"] = {k: v for k, v in kept.items() if k != isa}
            if same.get("bfloat16") and not kept:
                print(f"{fname}: changed, other ISAs' bfloat16 hashes dropped (record them there with --bfloat16)", file=sys.stderr)
        if isa is not None:
            low = codecs.setdefault((model, "bfloat16"), Codec.from_pretrained(model, transforms="bfloat16"))
            entry.setdefault("bfloat16", {})[isa] = bfloat16_record(low, rgb, data, options, entry.get("prefixes", []))
        files.append(entry)
        print(f"{fname}: {len(data)} bytes", file=sys.stderr)
    manifest = {"source": SOURCE, "files": files}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(path)
    if not only_bfloat16:
        for stale in set(GOLDEN.glob("*.pqm")) - {GOLDEN / f["file"] for f in files}:
            stale.unlink()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main(sys.argv[1:]))
