"""Probe 2: heteroscedastic latent noise. A small net on enc(base) predicts mu, log sigma of
r = enc(orig) - enc(base) (Gaussian NLL), fitted on training crops per model. Output: base + dec(z') - dec(enc(base)).
Candidates: "sS" z' = z + S*sigma*n; "mS" z' = z + mu + S*sigma*n; "cS" z' = z + S*(per-channel std of r)*n;
"r0" the round trip dec(enc(base)) alone. Writes its data, heads and sample pictures to runs/probe/."""
import sys, time
from pathlib import Path
import numpy as np, torch
from torch import nn
from pqmim import Codec
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
cands = sys.argv[2].split(",")  # e.g. s0.5,s1.0,m1.0,m0
enc, dec = load_taef2(SHARED / "weights"); enc.eval(); dec.eval()
for p in list(enc.parameters()) + list(dec.parameters()): p.requires_grad_(False)
cache = Path("bench/results/cache/perceptual-select")
Path("runs/probe").mkdir(parents=True, exist_ok=True)

def data(codec, n=360, seed=0):
    path = Path(f"runs/probe/r-{codec.model.model_id().hex()[:12]}.pt")
    if path.exists(): return torch.load(path)
    rng = np.random.default_rng(seed)
    files = list_images(TRAIN)
    zs, rs = [], []
    for f in [files[i] for i in rng.choice(len(files), n, replace=False)]:
        im = load_rgb(f)
        if min(im.shape[:2]) < 256: continue
        y, x = rng.integers(0, im.shape[0] - 255), rng.integers(0, im.shape[1] - 255)
        c = to_tensor(im[y:y+256, x:x+256])
        with torch.no_grad():
            rec = reconstruct(codec.model, c).float()
            zr = enc(rec); zs.append(zr); rs.append(enc(c) - zr)
    d = (torch.cat(zs), torch.cat(rs)); torch.save(d, path); return d

class Head(nn.Module):
    def __init__(s, c=64):
        super().__init__()
        s.net = nn.Sequential(nn.Conv2d(32, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, 64, 3, 1, 1))
    def forward(s, z):
        o = s.net(z); return o[:, :32], o[:, 32:].clamp(-6, 3)

def fit(z, r, steps=2500, seed=0):
    torch.manual_seed(seed)
    h = Head(); opt = torch.optim.Adam(h.parameters(), 1e-3)
    n = len(z); nv = n // 8
    zt, rt, zv, rv = z[nv:], r[nv:], z[:nv], r[:nv]
    nll = lambda mu, ls, r: (ls + 0.5 * ((r - mu) * torch.exp(-ls)) ** 2).mean()
    base = nll(torch.zeros_like(rv), torch.log(rt.std((0, 2, 3))).view(1, -1, 1, 1).expand_as(rv), rv).item()
    for i in range(steps):
        idx = torch.randint(0, len(zt), (16,))
        mu, ls = h(zt[idx]); loss = nll(mu, ls, rt[idx])
        opt.zero_grad(); loss.backward(); opt.step()
        if i % 500 == 0 or i == steps - 1:
            with torch.no_grad():
                mu, ls = h(zv); v = nll(mu, ls, rv).item(); vs = nll(torch.zeros_like(mu), ls, rv).item()
                mse0, mse1 = (rv ** 2).mean().item(), ((rv - mu) ** 2).mean().item()
            print(f"  it {i} train {loss.item():.3f} val nll {v:.3f} (sigma only {vs:.3f}, homoscedastic {base:.3f}) mse {mse0:.3f}->{mse1:.3f}", flush=True)
    return h.eval()

def run(base, h, s, kind, cstd, seed=1234):
    out = []
    for i, im in enumerate(base):
        x = to_tensor(im); H, W = im.shape[:2]
        x = torch.nn.functional.pad(x, (0, -(-W // 8) * 8 - W, 0, -(-H // 8) * 8 - H), mode="replicate")
        with torch.no_grad():
            z = enc(x); mu, ls = h(z)
            if kind == "c": ls = cstd.log().view(1, -1, 1, 1).expand_as(z)
            n = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed + i))
            y = dec(z) if kind == "r" else x + dec(z + (mu if kind == "m" else 0) + s * ls.exp() * n) - dec(z)
        out.append(to_uint8(y[0, :, :H, :W]))
    return out

images = held_out(VAL, 24)
originals = [load_image(p) for p in images]
groups = [len(patches(im)) for im in originals]
feats = lambda ims, c=False: inception_features([p for im in ims for p in patches(im)], FID_WEIGHTS, cache_dir=cache if c else None)
reference = feats(originals, True)
lpips = LPIPSAlex(LPIPS_BACKBONE)
for name in models:
    codec = Codec.from_pretrained(name)
    t = time.time(); z, r = data(codec); print(name, "data", z.shape, f"{time.time()-t:.0f}s", flush=True)
    h = fit(z, r); torch.save(h.state_dict(), f"runs/probe/head-{name}.pt")
    base, bpp = default_images(codec, originals, cache)
    bf = feats(base, True)
    print(name, bpp, "default", _fmt(score(originals, base, reference, bf, lpips)), flush=True)
    res, fs = [], []
    for c in cands:
        t = time.time()
        out = run(base, h, float(c[1:]), c[0], r.std((0, 2, 3)))
        f = feats(out); sc = score(originals, out, reference, f, lpips); res.append((c, sc)); fs.append(f)
        print(name, c, _fmt(sc), f"({time.time()-t:.0f}s)", flush=True)
        from PIL import Image; Image.fromarray(out[0]).save(f"runs/probe/h-{name}-{c}-0.png")
    for (c, sc), v in zip(res, fid_differences(reference, bf, fs, groups)):
        print(name, c, "FID %.1f delta90 [%+.1f, %+.1f]" % (sc["fid"], *v), flush=True)
