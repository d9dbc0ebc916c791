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
from .image import load_image


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim_uint8(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM (pytorch-msssim, 5 scales, data range 255) of two HxWx3 uint8 images; None when
    the image is too small for 5 scales (a side under 161 pixels)."""
    import torch
    from pytorch_msssim import ms_ssim

    if min(a.shape[:2]) <= 160:
        return None
    t = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float()  # noqa: E731
    return float(ms_ssim(t(a), t(b), data_range=255))


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

        t = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(self.device)  # noqa: E731
        with torch.no_grad():
            return float(self.net(t(a), t(b)).item())


def roundtrip(codec, rgb: np.ndarray) -> tuple[int, np.ndarray, float, float, bool | None]:
    """(bytes, decoded HxWx3 uint8, encode s, decode s, exact) of one image through a codec: a
    pqmim Codec (exact: the decoded codes equal the encoder's, checked outside the timings) or
    any object with compress(rgb) -> bytes and decompress(bytes) -> image (exact: None)."""
    t0 = time.perf_counter()
    data = codec.compress(rgb)
    t1 = time.perf_counter()
    if hasattr(codec, "decode_codes"):
        _, codes = codec.decode_codes(data)
        out = np.asarray(codec.decode_image(codes, rgb.shape[1], rgb.shape[0]))
        t2 = time.perf_counter()
        return len(data), out, t1 - t0, t2 - t1, bool((codes == codec.encode_codes([rgb])[0]).all())
    out = np.asarray(codec.decompress(data))
    return len(data), out, t1 - t0, time.perf_counter() - t1, None


def evaluate_folder(codec, folder: str | Path, limit: int | None = None, progress: bool = True) -> dict:
    """Compress and decompress every image with a pqmim Codec (or any object with
    compress(rgb) -> bytes and decompress(bytes) -> image, such as a baseline); for a pqmim
    Codec, also check that the decoded codes equal the encoder's.

    Returns means over images (bpp, psnr, ms_ssim, encode_s, decode_s) and the per-image rows;
    ms_ssim is None if an image is too small for it; all_exact is None for other codecs."""
    from tqdm import tqdm

    files = list_images(folder)[:limit]
    rows = []
    for p in tqdm(files, desc=f"{getattr(codec, 'name', '') or 'codec'} on {Path(folder).name}", disable=not progress, leave=False):
        rgb = load_image(p)
        n, out, enc, dec, exact = roundtrip(codec, rgb)
        rows.append({"image": p.name, "bytes": n, "bpp": n * 8 / (rgb.shape[0] * rgb.shape[1]),
                     "psnr": psnr_uint8(rgb, out), "ms_ssim": ms_ssim_uint8(rgb, out), "encode_s": enc, "decode_s": dec, "exact": exact})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("bpp", "psnr", "encode_s", "decode_s")}
    mean["ms_ssim"] = None if any(r["ms_ssim"] is None for r in rows) else float(np.mean([r["ms_ssim"] for r in rows]))
    has_codes = hasattr(codec, "decode_codes")
    return {"images": len(rows), **mean, "all_exact": all(r["exact"] for r in rows) if has_codes else None, "rows": rows}
