"""Quality of a decoded 8-bit image against its original: PSNR, MS-SSIM and LPIPS-Alex
(pqmim.evaluate), with the LPIPS backbone weights from ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pqmim.evaluate import LPIPSAlex, ms_ssim_uint8, psnr_uint8

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LPIPS_BACKBONE = SHARED / "weights" / "lpips_alexnet_features.pth"


def quality(a: np.ndarray, b: np.ndarray, lpips_fn: LPIPSAlex | None) -> dict:
    return {"psnr": psnr_uint8(a, b), "ms_ssim": ms_ssim_uint8(a, b), "lpips": lpips_fn(a, b) if lpips_fn else None}
