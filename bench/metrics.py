"""Quality of a decoded 8-bit image against its original: PSNR and MS-SSIM (pqmim.evaluate)
and LPIPS-Alex (the lpips package, backbone weights from a local file: nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pqmim.evaluate import ms_ssim_uint8, psnr_uint8

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LPIPS_BACKBONE = SHARED / "weights" / "lpips_alexnet_features.pth"


class LPIPSAlex:
    """LPIPS v0.1 with the AlexNet backbone. The package ships its linear layers; the backbone's
    convolutions (torchvision's AlexNet `features.*`) come from `backbone`."""

    def __init__(self, backbone: str | Path = LPIPS_BACKBONE, device: str = "cpu") -> None:
        import lpips

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

    @torch.no_grad()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        t = lambda x: torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(self.device)  # noqa: E731
        return float(self.net(t(a), t(b)).item())


def quality(a: np.ndarray, b: np.ndarray, lpips_fn: LPIPSAlex | None) -> dict:
    return {"psnr": psnr_uint8(a, b), "ms_ssim": ms_ssim_uint8(a, b), "lpips": lpips_fn(a, b) if lpips_fn else None}
