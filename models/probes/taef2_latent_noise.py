"""One-off probe: taef2 latent noise as a texture synthesiser on the default decoder's image.
r = enc(original) - enc(default recon) on training crops -> per-channel std (and mean) per model.
Held-out (perceptual-select's 24 photos): candidates
  rt      : dec(enc(base))
  rt+s    : dec(enc(base) + s*std*n)
  det+s   : base + dec(enc(base)+s*std*n) - dec(enc(base))     (keeps base's colours)
"""
import sys, time, json
from pathlib import Path
import numpy as np, torch
from pqmim import Codec, zoo
from pqmim.checkout import FID_WEIGHTS, LPIPS_BACKBONE, VAL, TRAIN, SHARED
from pqmim.data import list_images, load_rgb
from pqmim.image import load_image, to_tensor, to_uint8
from pqmim.evaluate import LPIPSAlex
from pqmim.train.taef2 import load_taef2
from pqmim.train.perceptual import reconstruct
from bench.perceptual_select import held_out, default_images, score, _fmt
from bench.fid import fid_differences, inception_features, patches

torch.set_num_threads(2)
models = sys.argv[1].split(",")
scales = [float(s) for s in sys.argv[2].split(",")]
enc, dec = load_taef2(SHARED / "weights")
enc.eval(); dec.eval()
cache = Path("bench/results/cache/perceptual-select")

def stats(codec, n_photos=48, seed=0):
    rng = np.random.default_rng(seed)
    files = list_images(TRAIN)
    files = [files[i] for i in rng.choice(len(files), n_photos, replace=False)]
    rs = []
    for f in files:
        im = load_rgb(f)
        if min(im.shape[:2]) < 256: continue
        y, x = rng.integers(0, im.shape[0] - 255), rng.integers(0, im.shape[1] - 255)
        c = to_tensor(im[y:y+256, x:x+256])
        with torch.no_grad():
            rec = reconstruct(codec.model, c).float()
            rs.append((enc(c) - enc(rec)))
    r = torch.cat(rs)  # (N, 32, 32, 32)
    return r.mean((0, 2, 3)), r.std((0, 2, 3)), r

def run(base, std, mean, s, mode, seed):
    out = []
    for i, im in enumerate(base):
        x = to_tensor(im)
        H, W = im.shape[:2]
        Hp, Wp = -(-H // 8) * 8, -(-W // 8) * 8
        x = torch.nn.functional.pad(x, (0, Wp - W, 0, Hp - H), mode="replicate")
        with torch.no_grad():
            z = enc(x)
            g = torch.Generator().manual_seed(seed + i)
            n = torch.randn(z.shape, generator=g)
            zn = z + s * std.view(1, -1, 1, 1) * n
            y = dec(zn)
            if mode == "det":
                y = x + y - dec(z)
        out.append(to_uint8(y[0, :, :H, :W]))
    return out

images = held_out(VAL, 24)
originals = [load_image(p) for p in images]
groups = [len(patches(im)) for im in originals]
feats = lambda ims, c=False: inception_features([p for im in ims for p in patches(im)], FID_WEIGHTS, cache_dir=cache if c else None)
reference = feats(originals, True)
lpips = LPIPSAlex(LPIPS_BACKBONE)
res = {}
for name in models:
    codec = Codec.from_pretrained(name)
    t = time.time()
    mean, std, r = stats(codec)
    print(name, "residual std", std.numpy().round(3).tolist(), "mean", mean.abs().mean().item(), f"({time.time()-t:.0f}s)", flush=True)
    base, bpp = default_images(codec, originals, cache)
    bf = feats(base, True)
    print(name, bpp, "default", _fmt(score(originals, base, reference, bf, lpips)), flush=True)
    cands, fs = [], []
    for mode in ("rt", "det"):
        for s in scales:
            if mode == "det" and s == 0: continue
            t = time.time()
            out = run(base, std, mean, s, mode, 1234)
            f = feats(out)
            sc = score(originals, out, reference, f, lpips)
            cands.append((f"{mode}{s}", sc)); fs.append(f)
            print(name, f"{mode} s={s}", _fmt(sc), f"({time.time()-t:.0f}s)", flush=True)
            Path(f"runs/probe/ln-{name}-{mode}{s}-0.png").parent.mkdir(exist_ok=True, parents=True)
            from PIL import Image; Image.fromarray(out[0]).save(f"runs/probe/ln-{name}-{mode}{s}-0.png")
    iv = fid_differences(reference, bf, fs, groups)
    for (c, sc), v in zip(cands, iv):
        print(name, c, "FID %.1f  delta90 [%+.1f, %+.1f]" % (sc["fid"], *v), flush=True)
