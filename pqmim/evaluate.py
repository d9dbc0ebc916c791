"""Measure a codec on a folder of images the way the field does: bpp from real file sizes,
PSNR and MS-SSIM on the decoded 8-bit RGB image, per image, then averaged over images; and
LPIPS-Alex of one image (the lpips package, backbone weights from a local file: nothing is
downloaded), for the bench and `pqmim serve`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .data import list_images
from .image import load_image, to_tensor


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def block_psnr(a: np.ndarray, b: np.ndarray, block: int) -> float:
    """PSNR of the block x block means of two HxWx3 images: their colour and shading, whatever
    the texture (the last partial blocks left out)."""
    h, w = a.shape[0] // block * block, a.shape[1] // block * block
    means = lambda x: x[:h, :w].astype(np.float64).reshape(h // block, block, w // block, block, -1).mean((1, 3))  # noqa: E731
    return psnr_uint8(means(a), means(b))


def ms_ssim_uint8(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM (pytorch-msssim, 5 scales, data range 255) of two HxWx3 uint8 images; None when
    the image is too small for 5 scales (a side under 161 pixels)."""
    from pytorch_msssim import ms_ssim

    if min(a.shape[:2]) <= 160:
        return None
    return float(ms_ssim(to_tensor(a), to_tensor(b), data_range=1.0))


class LPIPSAlex:
    """LPIPS v0.1 with the AlexNet backbone. The lpips package ships its linear layers; the
    backbone's convolutions (torchvision's AlexNet `features.*`) come from the file `backbone`."""

    def __init__(self, backbone: str | Path, device: str = "cpu") -> None:
        import warnings

        import lpips
        import torch

        with warnings.catch_warnings():  # torchvision's about `pretrained`: no weights are fetched (pnet_rand)
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        feats = torch.load(backbone, map_location="cpu", weights_only=True)
        # lpips splits features into slices that keep torchvision's layer index as the module name
        slices = {name: sl for name, sl in self.net.net.named_children()}
        loaded = 0
        for key, t in feats.items():
            _, idx, kind = key.split(".")
            sl = next(s for s in slices.values() if idx in dict(s.named_children()))
            getattr(getattr(sl, idx), kind).data.copy_(t)
            loaded += 1
        if loaded != 10:
            raise ValueError(f"{backbone}: expected the 5 AlexNet conv layers, found {loaded} tensors")
        self.device = device
        self.net = self.net.to(device).eval()

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        t = lambda x: to_tensor(x).mul_(2).sub_(1).to(self.device)  # noqa: E731  (LPIPS takes [-1, 1])
        with torch.no_grad():
            return float(self.net(t(a), t(b)).item())


def roundtrip(codec, rgb: np.ndarray) -> tuple[int, np.ndarray, float, float, bool | None]:
    """(bytes, decoded HxWx3 uint8, encode s, decode s, exact) of one image through a codec: a
    pqmim Codec (exact: the decoded codes equal the encoder's, checked outside the timings) or
    any object with compress(rgb) -> bytes and decompress(bytes) -> image (exact: None)."""
    t0 = time.perf_counter()
    data = codec.compress(rgb)
    t1 = time.perf_counter()
    if hasattr(codec, "read_codes"):
        _, codes = codec.read_codes(data)
        out = np.asarray(codec.decode_image(codes, rgb.shape[1], rgb.shape[0]))
        t2 = time.perf_counter()
        return len(data), out, t1 - t0, t2 - t1, bool((codes == codec.encode_codes([rgb])[0]).all())
    out = np.asarray(codec.decompress(data))
    return len(data), out, t1 - t0, time.perf_counter() - t1, None


def mean(rows: list[dict], key: str) -> float | None:
    """Mean of a column over images; None when any image has no value (e.g. MS-SSIM of a small image)."""
    vals = [r[key] for r in rows]
    return None if not vals or any(v is None for v in vals) else float(np.mean(vals))


def measure_images(roundtrip_fn, files: list[Path], lpips_fn=None, desc: str = "", progress: bool = True) -> dict:
    """The one Kodak-style measurement (used by `pqmim train`'s export, the GPU round and the
    bench): every image through `roundtrip_fn(rgb) -> (bytes, decoded, encode s, decode s,
    exact or None)`, scored against its original.

    Returns the per-image rows and their means: bpp (file bytes x 8 / original pixels), psnr,
    ms_ssim (None if an image is too small), lpips (None without `lpips_fn`), encode_s,
    decode_s, and all_exact (None when the codec does not report exactness)."""
    from tqdm import tqdm

    rows = []
    for p in tqdm(files, desc=desc or "images", disable=not progress, leave=False):
        rgb = load_image(p)
        n, out, enc, dec, exact = roundtrip_fn(rgb)
        rows.append(
            {
                "image": Path(p).name,
                "bytes": n,
                "bpp": n * 8 / (rgb.shape[0] * rgb.shape[1]),
                "psnr": psnr_uint8(rgb, out),
                "ms_ssim": ms_ssim_uint8(rgb, out),
                "lpips": lpips_fn(rgb, out) if lpips_fn else None,
                "encode_s": enc,
                "decode_s": dec,
                "exact": exact,
            }
        )
    means = {k: mean(rows, k) for k in ("bpp", "psnr", "ms_ssim", "lpips", "encode_s", "decode_s")}
    exact = [r["exact"] for r in rows]
    return {"images": len(rows), **means, "all_exact": None if None in exact else all(exact), "rows": rows}


def evaluate_folder(codec, folder: str | Path, limit: int | None = None, progress: bool = True) -> dict:
    """measure_images over a folder's images with a pqmim Codec (exact: the decoded codes equal
    the encoder's) or any object with compress(rgb) -> bytes and decompress(bytes) -> image."""
    desc = f"{getattr(codec, 'name', '') or 'codec'} on {Path(folder).name}"
    return measure_images(lambda rgb: roundtrip(codec, rgb), list_images(folder)[:limit], desc=desc, progress=progress)
