"""Export: a trained run becomes a release model, safetensors plus a JSON card, measured on Kodak
with the real codec (what ships is what is measured: the stored weights, read back).

A card says what the model is (config, model id, storage), where it came from (data, warm
start, the plans it was trained with and how far each got, device, torch) and, unless --kodak is
'', what it does (bpp, PSNR, MS-SSIM, whether every Kodak image decoded exactly).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import describe_source
from ..fileio import atomic_write_json
from ..models import PQMIM
from .loop import load_ckpt, log, progress, read_json


def write_card(dest: Path, name: str, card: dict, out: Path) -> None:
    """The one card writer (the bench's baselines use it too)."""
    atomic_write_json(dest / f"{name}.json", card, indent=2)
    log(out, f"export: wrote {dest / name}.safetensors and its card")


def provenance(run, stages: dict[str, str]) -> dict:
    """The card's account of where a model came from: its data, warm start and, per stage
    (stage name -> plan file in the run folder), the plan and how far it got."""
    return {
        "init_from": read_json(run.out / "warm_start.json") or None,
        "data": {**describe_source(run.train), "val": str(run.val)},
        "training": {
            stage: {**read_json(run.out / plan), **progress(load_ckpt(run.out / f"{stage}.pt"))} for stage, plan in stages.items()
        },
    }


def export(model: PQMIM, run, device_name: str) -> Path:
    """Write the release model and its card in run.export_dir; returns the weights' path."""
    dest = Path(run.export_dir)
    dest.mkdir(parents=True, exist_ok=True)
    weights = dest / f"{run.name}.safetensors"
    model.cpu().eval().save(weights, storage=run.storage, base=dest / f"{run.base}.safetensors" if run.base else None)
    shipped = PQMIM.load(weights)  # what ships: the stored weights, read back
    origin = provenance(run, {"stage1": "stage1_plan.json", "stage2": "stage2_plan.json"})
    card = {
        "name": run.name,
        "description": run.description,
        "config": model.cfg.to_dict(),
        "model_id": shipped.model_id().hex(),
        "storage": run.storage,
        **({"entropy_variant_of": run.base} if run.base else {}),
        **origin,
        "training": {**origin["training"], "device": device_name, "torch": torch.__version__},
    }
    if run.kodak:
        from ..codec import Codec
        from ..evaluate import evaluate_folder

        res = evaluate_folder(Codec(shipped, name=run.name), run.kodak)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim", "all_exact")}  # speed: bench speed, on an idle machine
        log(
            run.out,
            f"export: Kodak bpp {res['bpp']:.4f} psnr {res['psnr']:.2f} dB ms-ssim {res['ms_ssim'] or float('nan'):.4f} over {res['images']} images",
        )
    write_card(dest, run.name, card, run.out)
    return weights
