"""GPU <-> CPU exactness: files encoded here decoded on the device, files encoded there decoded
here (FORMAT.md states what holds across machines)."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

from ..checkout import ROOT
from .plan import TRIP


# ----------------------------------------------------------------------------- GPU <-> CPU exactness
XCHECK = TRIP / "xcheck"  # carried in its own call: Kodak, the files encoded here, which model


def xcheck_prepare(kodak: Path, model_file: Path, folder: Path = XCHECK, images: int | None = None) -> None:
    """Here: the Kodak images (the first `images` of them), the files this CPU encodes from them,
    for the device to decode on its GPU (and to encode there, for this CPU to decode), and
    model.json naming the model. The model is not copied: a model under the checkout travels
    as a carried path (models/NAME.safetensors, and its base if it is an entropy variant), so its
    megabytes are not sent twice when the round carries it anyway."""
    from ..codec import Codec
    from ..data import list_images

    (folder / "kodak").mkdir(parents=True, exist_ok=True)
    (folder / "cpu").mkdir(exist_ok=True)
    model_file = Path(model_file).resolve()
    codec = Codec.from_file(model_file)
    where = str(model_file.relative_to(ROOT)) if model_file.is_relative_to(ROOT) else str(model_file)
    (folder / "model.json").write_text(json.dumps({"path": where, "model_id": codec.model_id.hex()}, indent=2))
    chosen = list_images(kodak)[:images]
    for p in chosen:
        shutil.copyfile(p, folder / "kodak" / p.name)
        (folder / "cpu" / f"{p.stem}.pqm").write_bytes(codec.compress(p))
    print(f"xcheck: {len(chosen)} images and their CPU-encoded files in {folder}; the device needs {where} (carry it)")


def _codec(folder: Path, device: str = "cpu"):
    """The model model.json names (relative paths: under this checkout), checked by its id."""
    from ..codec import Codec

    named = json.loads((folder / "model.json").read_text())
    codec = Codec.from_file(ROOT / named["path"], device=device)  # an absolute path stays as it is
    if codec.model_id.hex() != named["model_id"]:
        raise SystemExit(f"xcheck: {named['path']} is not the model the CPU's files were encoded with")
    return codec


def _exact(codec, data: bytes) -> tuple[bool, str]:
    """Whether a file decodes to exactly its encoder's codes: the header's CRC of the codes is
    checked by read_codes, so any difference in the decoder's probabilities is caught."""
    from ..format import BitstreamError

    try:
        codec.read_codes(data)
        return True, ""
    except BitstreamError as e:
        return False, str(e)


def xcheck_device(out: Path, folder: Path = XCHECK, device: str = "cuda") -> dict:
    """Device: decode this CPU's files on the GPU, and encode every image on the GPU; the GPU's
    files go back (one tar) for the CPU to decode with xcheck_receive."""
    import torch

    from ..data import list_images

    codec = _codec(folder, device)
    rows = {}
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "xcheck.tar", "w") as tar:
        for p in list_images(folder / "kodak"):
            ok, why = _exact(codec, (folder / "cpu" / f"{p.stem}.pqm").read_bytes())
            data = codec.compress(p)
            info = tarfile.TarInfo(f"gpu/{p.stem}.pqm")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            rows[p.stem] = {"cpu_to_gpu_exact": ok, "error": why, "gpu_bytes": len(data)}
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__,
        "cpu_to_gpu_exact": sum(r["cpu_to_gpu_exact"] for r in rows.values()),
        "images": len(rows),
        "per_image": rows,
    }
    (out / "xcheck.json").write_text(json.dumps(result, indent=2))
    print(f"xcheck: {result['cpu_to_gpu_exact']} of {len(rows)} files encoded on the CPU decode exactly on {result['device']}")
    return result


def xcheck_receive(files: Path, folder: Path = XCHECK, dest: Path | None = None) -> dict:
    """Here: decode the GPU's files on this CPU; the counts both ways, written to `dest`."""
    result = json.loads((files / "xcheck.json").read_text())
    codec = _codec(folder)
    with tarfile.open(files / "xcheck.tar") as tar:
        for m in tar.getmembers():
            stem = Path(m.name).stem
            ok, why = _exact(codec, tar.extractfile(m).read())
            result["per_image"][stem].update(gpu_to_cpu_exact=ok, gpu_to_cpu_error=why)
    result["gpu_to_cpu_exact"] = sum(r.get("gpu_to_cpu_exact", False) for r in result["per_image"].values())
    print(
        f"GPU -> CPU: {result['gpu_to_cpu_exact']} of {result['images']} exact; CPU -> GPU: {result['cpu_to_gpu_exact']} of {result['images']} exact"
    )
    if dest:
        dest.write_text(json.dumps(result, indent=2) + "\n")
    return result
