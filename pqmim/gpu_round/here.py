"""What runs here, before and after the trip: prepare (pack, wheels, a lighter tree), reassemble
the parts, receive (cards, Kodak with the real codec), ship the models that beat the shipped ones."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ..checkout import ROOT, SHARED, head_commit
from .plan import LPIPS_TRIP, MODELS_BUDGET, PERCEPTUAL_SERVES, TEXTURE_FILE, TRIP, WHEELS
from .device import read_json_or_empty


# ----------------------------------------------------------------------------- here, before the trip
def prepare(
    sources: list[str], val: str, lighten: bool = True, max_side: int = 1024, max_mib: float | None = None, perceptual: bool = False
) -> None:
    """Build the pack and fetch the wheels the device lacks (each only if missing), take the
    tracked weights out of the index, and check what travels fits in 64 MiB. A round that
    carries start models (launch --init) needs a smaller pack: `max_mib`, `max_side`. With
    `perceptual`, the LPIPS backbone (float16) joins the trip, and the models the perceptual
    jobs serve and the texture decoder's file count as carried."""
    import torch

    from .. import pack
    from ..checkout import LPIPS_BACKBONE

    TRIP.mkdir(exist_ok=True)
    if not (TRIP / "pack.tar").exists():
        m = pack.build(sources, TRIP / "pack.tar", val, max_side=max_side, max_bytes=int(max_mib * 2**20) if max_mib else pack.MAX_BYTES)
        print(f"pack: {m['images']} photos, {m['megapixels']} MP, JPEG q{m['jpeg_quality']}, {m['bytes'] / 2**20:.1f} MiB")
    if perceptual and not LPIPS_TRIP.exists():
        feats = torch.load(LPIPS_BACKBONE, map_location="cpu", weights_only=True)
        torch.save({k: v.half() for k, v in feats.items()}, LPIPS_TRIP)
    whl = TRIP / "whl"
    if not list(whl.glob("*.whl")):
        platforms = [
            a
            for p in ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
            for a in ("--platform", p)
        ]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--implementation",
                "cp",
                *platforms,
                "-d",
                str(whl),
                *WHEELS,
            ],
            check=True,
        )
    if lighten and not (ROOT / ".git" / "device-tree-lightened").exists():
        (ROOT / ".git" / "info").mkdir(exist_ok=True)  # device-tree writes its ignore rules there
        (ROOT / ".git" / "info" / "exclude").touch()
        subprocess.run([str(SHARED / "tools" / "device-tree"), "lighten"], cwd=ROOT, check=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    tree = sum((ROOT / p).stat().st_size for p in listed.decode().split("\0") if p and (ROOT / p).is_file())
    paths = [TRIP / "pack.tar", *whl.glob("*.whl")]
    if perceptual:
        paths += [LPIPS_TRIP, ROOT / TEXTURE_FILE] + [ROOT / "models" / f"{n}.safetensors" for n in PERCEPTUAL_SERVES]
    carried = sum(p.stat().st_size for p in paths)
    what = (
        ".round/pack.tar, .round/whl"
        + (", .round/lpips.pth, " + ", ".join([*(f"models/{n}.safetensors" for n in PERCEPTUAL_SERVES), TEXTURE_FILE])) * perceptual
    )
    print(
        f"launch travels: {tree / 2**20:.1f} MiB of the tree + {carried / 2**20:.1f} MiB carried ({what}) = {(tree + carried) / 2**20:.1f} MiB of 64"
    )
    if tree + carried > 64 << 20:
        raise SystemExit("too big to travel: lighten the tree (../shared/tools/device-tree lighten) or build a smaller pack (--max-mib)")


# ----------------------------------------------------------------------------- here, after the trip
def reassemble(folders: list[Path], dest: Path) -> dict:
    """Join the parts that came back (in one or several folders, one per collect call), check
    their SHA-256, unpack into dest; returns the manifest."""
    manifest = json.loads((folders[0] / "round.json").read_text())
    chunks = []
    for i in range(manifest["parts"]):
        found = [f / f"round.tar.gz.{i:03d}" for f in folders if (f / f"round.tar.gz.{i:03d}").exists()]
        if not found:
            raise SystemExit(f"part {i} of {manifest['parts']} is in none of {', '.join(map(str, folders))}: collect --from-part {i}")
        chunks.append(found[0].read_bytes())
    data = b"".join(chunks)
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(
            f"the parts in {', '.join(map(str, folders))} do not add up to the round's bundle (size or SHA-256 differ): collect again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return manifest


def ladder_psnr_at(bpp: float, points: list[tuple[float, float]]) -> float | None:
    """The shipped ladder's PSNR at `bpp`, linear in log-rate between its nearest points (None
    outside its range: no verdict by extrapolation)."""
    import math

    pts = sorted(points)
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if b0 <= bpp <= b1:
            t = (math.log(bpp) - math.log(b0)) / (math.log(b1) - math.log(b0))
            return p0 + t * (p1 - p0)
    return None


def receive(files: list[Path], dest: Path, kodak: Path, images: int | None = None) -> list[dict]:
    """Reassemble a round, complete each card (device, iterations, wall time, samples seen come from
    the device; the round's manifest adds its date), measure every model on Kodak with the real
    codec on this CPU, and compare each rung with the shipped ladder at its rate."""
    from .. import zoo

    sys.path.insert(0, str(ROOT))  # the baselines are bench material (bench/ beside pqmim/)
    from bench.baselines import Baseline
    from ..codec import Codec
    from ..evaluate import evaluate_folder
    from ..models import PQMIM

    manifest = reassemble(files, dest)
    shipped = {c["name"]: c for c in zoo.list_models()}
    ladder = [(c["kodak"]["bpp"], c["kodak"]["psnr"]) for c in shipped.values() if c.get("kodak") and c["name"].startswith("pqmim-q")]
    rows = []
    for card_path in sorted((dest / "export").glob("*.json")):
        card = json.loads(card_path.read_text())
        weights = card_path.with_suffix(".safetensors")
        if card.get("kind") == zoo.PERCEPTUAL:  # no rate of its own: chosen among its snapshots by held-out FID
            snaps = sorted((dest / "export").glob(f"{card_path.stem}.it*.safetensors"))
            print(f"{card_path.stem:<36} perceptual decoder, {len(snaps)} snapshots: python -m bench perceptual-select {dest / 'export'}")
            continue
        is_baseline = "arch" in card
        model = Baseline.load(weights) if is_baseline else Codec(PQMIM.load(weights), name=card["name"])
        res = evaluate_folder(model, kodak, limit=images, progress=False)
        card["kodak"] = {k: res[k] for k in ("images", "bpp", "psnr", "ms_ssim", "all_exact") if k in res}
        card["round"] = {
            "device": manifest.get("device"),
            "minutes": manifest.get("minutes"),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(manifest.get("started", 0))),
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        row = {"name": card["name"], "bpp": res["bpp"], "psnr": res["psnr"], "baseline": is_baseline}
        old = shipped.get(card["name"], {}).get("kodak")
        if not is_baseline:
            row["shipped"] = (old["bpp"], old["psnr"]) if old else None
            at = ladder_psnr_at(res["bpp"], ladder)
            row["ladder_psnr_at_rate"] = at
            dominates = bool(old) and res["bpp"] <= old["bpp"] and res["psnr"] >= old["psnr"]  # at the ladder's ends
            row["beats"] = (at is not None and res["psnr"] > at) or dominates
        rows.append(row)
        print(
            f"{card['name']:<36} Kodak {res['bpp']:.4f} bpp {res['psnr']:.2f} dB"
            + (
                ""
                if is_baseline
                else f"; shipped {'%.4f bpp %.2f dB' % row['shipped'] if row['shipped'] else 'none of that name'}; "
                f"shipped ladder at this rate: {'%.2f dB' % at if at is not None else 'out of range'} -> {'BEATS' if row['beats'] else 'does not beat'}"
            ),
            flush=True,
        )
    (dest / "verdict.json").write_text(json.dumps(rows, indent=2))
    return rows


def ship(round_dir: Path, names: list[str], models: Path = ROOT / "models", retired_in: str | None = None, retire: list[str] = ()) -> None:
    """Copy the named models of a received round into models/ (baselines into models/baselines/:
    a round's baselines replace all shipped ones, the bench's yardstick being the same budget as
    the ladder's), keep every replaced rung's id known in retired.json, and refuse to exceed the
    models/ budget (it holds the ladder and one family of two baselines, not two).

    `retire` names shipped models to take out as well (their ids join retired.json): a rung that
    shipped as an entropy variant leaves its base behind when a standalone model replaces it,
    and the base only decodes older files. A base that a model still shipping needs is refused."""
    from .. import __version__

    export = round_dir / "export"
    retired_path = models / "retired.json"
    retired = read_json_or_empty(retired_path) or {"retired": []}
    plan = []
    for name in names:
        card = read_json_or_empty(export / f"{name}.json")
        if not card or not ("kodak" in card or "selection" in card):
            raise SystemExit(
                f"{name}: no measured card in {export} (run receive first; a perceptual decoder: bench perceptual-select --pick)"
            )
        plan.append((name, card, models / "baselines" if "arch" in card else models))
    for name in retire:
        if not (models / f"{name}.safetensors").is_file():
            raise SystemExit(f"{name}: not in {models}, nothing to retire")
        for p in models.glob("*.json"):
            if p.stem not in names and p.stem not in retire and read_json_or_empty(p).get("entropy_variant_of") == name:
                raise SystemExit(f"{name} is the base of {p.stem}, which still ships: retire or replace it too")
    replaced: list[Path] = [models / f"{name}.safetensors" for name in retire]
    if any("arch" in card for _, card, _ in plan):
        replaced += [p for p in (models / "baselines").glob("*.safetensors") if p.stem not in names]
    new_size = sum(p.stat().st_size for p in models.rglob("*.safetensors") if p not in replaced and p.stem not in names)
    new_size += sum((export / f"{n}.safetensors").stat().st_size for n, _, _ in plan)
    if new_size > MODELS_BUDGET:
        raise SystemExit(f"models/ would hold {new_size / 1e6:.1f} MB, over its {MODELS_BUDGET / 1e6:.0f} MB budget")
    commit = head_commit(short=True)  # this checkout, before the new models land, decodes the old ones
    decoded_by = f"pqmim {__version__}" + (f" (git commit {commit} of this repository)" if commit else "")

    def record(model_id: str | None, name: str) -> None:
        if model_id:
            retired["retired"].append(
                {
                    "model_id": model_id,
                    "name": name,
                    "retired_in": retired_in or f"pqmim after {__version__} (GPU round)",
                    "decoded_by": decoded_by,
                }
            )

    for name in retire:
        record(read_json_or_empty(models / f"{name}.json").get("model_id"), name)
    for name, card, folder in plan:
        old = read_json_or_empty(folder / f"{name}.json")
        if old.get("model_id") != card.get("model_id"):
            record(old.get("model_id"), name)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(export / f"{name}{suffix}", folder / f"{name}{suffix}")
        print(f"shipped {name} into {folder}")
    for p in replaced:
        p.unlink()
        p.with_suffix(".json").unlink(missing_ok=True)
        why = "retired" if p.stem in retire else "replaced by this round's baselines"
        print(f"removed {p.name} ({why})")
    retired_path.write_text(json.dumps(retired, indent=2) + "\n")
    print(f"now raise the version above {__version__} (pyproject.toml, pqmim/__init__.py): files of the replaced models need {__version__}")
