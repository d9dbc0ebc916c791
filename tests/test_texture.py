"""The latent-texture perceptual decoder (pqmim/models/texture.py): its file, its determinism, its
place beside the refiner in the codec, and what the shipped one does to a real photo."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pqmim import Codec, tiling, zoo
from pqmim.image import to_tensor, to_uint8
from pqmim.models import ModelFileError, banded
from pqmim.models.perceptual import Refiner, RefinerConfig, load_decoder
from pqmim.models.texture import LatentTexture, TextureConfig, TextureGate, TextureHead, seed_of
from pqmim.models.weights import read_tensors, save_tensors
from pqmim.threads import fixed_pieces

from conftest import PHOTO, ROOT, assert_same_pixels_any_threads_or_batch, flags, needs_shared, photo_crop, write_photos

SMALL = TextureConfig(channels=8)


def random_texture(seed: int = 0, cfg: TextureConfig = SMALL) -> LatentTexture:
    torch.manual_seed(seed)
    return LatentTexture(cfg).eval()


def head_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return TextureHead(SMALL.channels).state_dict()


def test_texture_file_holds_one_head_per_model(tmp_path):
    t = random_texture()
    path = tmp_path / "t.safetensors"
    serves = [{"name": "a", "model_id": "0000000a"}, {"name": "b", "model_id": "0000000b"}]
    t.save(path, {"0000000a": head_state(1), "0000000b": head_state(2)}, serves, storage="float32")
    a, b = LatentTexture.load(path, "0000000a"), LatentTexture.load(path, "0000000b")
    assert a.serves == b.serves == ["0000000a", "0000000b"] and a.cfg == SMALL
    assert all(torch.equal(v, head_state(1)[k]) for k, v in a.head.state_dict().items())
    assert all(torch.equal(v, head_state(2)[k]) for k, v in b.head.state_dict().items())
    assert torch.equal(a.encoder[0].weight, t.encoder[0].weight)  # taef2 itself is shared
    x = to_tensor(photo_crop(0, 0, 64, 48))
    assert not torch.equal(a.refine(x), b.refine(x))  # the head is what differs
    with pytest.raises(ValueError, match="no texture head for model id 0000000c"):
        LatentTexture.load(path, "0000000c")
    with pytest.raises(ValueError, match="exactly one head"):
        t.save(tmp_path / "u.safetensors", {"0000000a": head_state(1)}, serves)
    with pytest.raises(ModelFileError, match="not a pqmim texture decoder"):
        LatentTexture.load(ROOT / "models" / f"{zoo.DEFAULT_MODEL}.safetensors", "0000000a")
    Refiner(RefinerConfig(width=8, channels=16, blocks=1)).save(tmp_path / "r.safetensors", [])
    assert isinstance(load_decoder(tmp_path / "r.safetensors", "0000000a"), Refiner)
    assert isinstance(load_decoder(path, "0000000a"), LatentTexture)  # told apart by the format tag
    with pytest.raises(ValueError, match="invalid texture config"):
        TextureConfig(strength=-1)
    with pytest.raises(ValueError, match="sharpen must be a number from 0 to 1"):
        TextureConfig(sharpen=1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sharpen, decodes", [(0.0, 2), (0.5, 2), (0.5, 1)])
def test_texture_pixels_do_not_depend_on_threads_or_batch(dtype, sharpen, decodes):
    """136 rows: 17 at 1/8 resolution, a full row band and a band of one at every resolution
    taef2 computes (banded.BAND_ROWS 16)."""
    cfg = TextureConfig(channels=8, sharpen=sharpen, decodes=decodes)
    assert_same_pixels_any_threads_or_batch(random_texture(cfg=cfg), 96, 136, dtype)


def test_banded_taef2_computes_taef2():
    """taef2's passes in row bands (the texture decoder's CPU path) compute what its modules
    compute, to float rounding, at heights that leave a short last band at every resolution;
    the mid blocks' GroupNorm, which needs its whole input, included."""
    t = random_texture()
    x = to_tensor(photo_crop(0, 0, 48, 296)).clone(memory_format=torch.channels_last)  # 37 rows at 1/8
    with torch.no_grad(), fixed_pieces() as pool:
        z = banded.run(t.encoder, x, pool)
        assert z.shape == (1, 32, 37, 6) and torch.allclose(z, t.encoder(x), atol=1e-5)
        assert torch.allclose(banded.run(t.decoder, z, pool), t.decoder(z), atol=1e-5)
        with pytest.raises(NotImplementedError, match="cannot compute a Upsample"):
            banded.run(torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="bilinear")), z, pool)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_texture_pixels_do_not_depend_on_the_input_layout(dtype):
    """A decoded image comes as a channels-last view (image.to_tensor); its pixels are those of
    the same image in NCHW. (Before 0.10.4 such a view reached taef2's encoder as NCHW, another
    arithmetic path, and 2.7x slower.)"""
    t = random_texture()
    a = to_tensor(photo_crop(0, 0, 96, 64))
    assert not a.is_contiguous()
    assert torch.equal(t.refine(a, dtype), t.refine(a.contiguous(), dtype))


def test_texture_tiles_have_the_pixels_of_one_at_a_time():
    """refine_tiled hands a LatentTexture all its tiles, which it refines one after another, each
    on all its threads: the pixels are those of each tile refined alone, with 1, 2 or 3 threads."""
    t = random_texture()
    rgb = photo_crop(0, 0, 200, 136)  # tiles of 64 + a 32-pixel halo: 4 x 3 tiles of several sizes
    alone = np.empty_like(rgb)
    for y0, y1 in tiling.spans(136, 64):
        for x0, x1 in tiling.spans(200, 64):
            a, b, c, d = max(0, y0 - 32), min(136, y1 + 32), max(0, x0 - 32), min(200, x1 + 32)
            alone[y0:y1, x0:x1] = to_uint8(t.refine(to_tensor(rgb[a:b, c:d]), torch.bfloat16)[0, :, y0 - a : y1 - a, x0 - c : x1 - c])
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        assert np.array_equal(tiling.refine_tiled(t, rgb, 64, torch.bfloat16), alone), n


def test_texture_in_bfloat16_is_float32_rounded():
    """The bfloat16 passes (the codec's default where the CPU has bfloat16) move the image by a
    rounding, not more: the same noise, the same change to within a few levels."""
    t = random_texture()
    a = to_tensor(photo_crop(0, 0, 96, 64))
    full, low = t.refine(a), t.refine(a, torch.bfloat16)
    assert not torch.equal(full, low)
    assert 10 * torch.log10(1 / (full - low).pow(2).mean()) > 40


def test_flatten_removes_the_changes_local_mean():
    """`flatten` r subtracts the change's mean over a (2r + 1)-pixel box, twice (computed as row
    and column boxes): a constant change (a shift of colour) leaves the image as it was, and any
    change loses what the square box, applied twice, averages out of it."""
    t = random_texture(cfg=TextureConfig(channels=8, flatten=5))
    x = to_tensor(photo_crop(0, 0, 40, 24))
    assert torch.allclose(t.finish(x, torch.full_like(x, 0.1)), x, atol=1e-6)
    change = torch.randn(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    box = lambda v: F.avg_pool2d(v, 11, stride=1, padding=5, count_include_pad=False)  # noqa: E731
    assert torch.allclose(t.finish(x, change), x + change - box(box(change)), atol=1e-5)


def test_flatten_in_strips_on_a_pool_is_one_calls():
    """The decoding path's box runs in strips of rows and of columns on the pool: every mean sums
    the same window in the same order, so the result is one call's to the bit, with a short last
    strip each way and any thread count."""
    t = random_texture(cfg=TextureConfig(channels=8, flatten=32))
    x = to_tensor(photo_crop(0, 0, 150, 100))  # strips of 64: 64 + 36 rows, 64 + 64 + 22 columns
    change = torch.randn(1, 3, 100, 150, generator=torch.Generator().manual_seed(0)).contiguous(memory_format=torch.channels_last)
    one = t.finish(x, change)
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        with fixed_pieces() as pool:
            assert torch.equal(t.finish(x, change, pool), one), n


def test_sharpened_noise_is_blue_with_unit_variance():
    """`sharpen` a takes a of the noise's 3x3 local mean out: unit variance still, and neighbours
    anticorrelated by what that kernel gives (a = 0.5: -0.101), where white noise has none. With
    a = 0 the draw is the one files decoded to before `sharpen` existed: N(0, 1) of the seed."""
    piece = to_tensor(photo_crop(0, 0, 512, 512))
    white = random_texture()._noise(piece)
    assert torch.equal(white, torch.randn((1, 32, 64, 64), generator=torch.Generator().manual_seed(seed_of(piece[0]))))
    blue = random_texture(cfg=TextureConfig(channels=8, sharpen=0.5))._noise(piece)
    assert blue.shape == white.shape and not torch.equal(blue, white)
    c, e = 1 - 0.5 / 9, 0.5 / 9  # the kernel: c at the centre, -e around it
    expected = (-2 * c * e + 4 * e * e) / (c * c + 8 * e * e)
    for n, lag1 in ((white, 0.0), (blue, expected)):
        assert abs(n.var().item() - 1) < 0.02
        for a, b in ((n[..., 1:], n[..., :-1]), (n[..., 1:, :], n[..., :-1, :])):
            assert abs((a * b).mean().item() / n.var().item() - lag1) < 0.015


def test_power_shapes_the_draws_spread():
    """The draw is z + mu + strength * sigma^power * n: power 1 (the default) is the draw files
    decoded to before `power` existed, power 2 draws more where the head is unsure."""
    a, b = random_texture(), random_texture(cfg=TextureConfig(channels=8, strength=0.9, power=2))  # the same head
    gen = torch.Generator().manual_seed(1)
    z, n = torch.randn((1, 32, 4, 6), generator=gen), torch.randn((1, 32, 4, 6), generator=gen)
    mu, log_sigma = a.head(z)
    assert torch.equal(a.drawn(z, n), z + mu + 0.6 * log_sigma.exp() * n)
    assert torch.allclose(b.drawn(z, n), z + mu + 0.9 * log_sigma.exp() ** 2 * n, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="power must be a number from 0 to 4"):
        TextureConfig(power=5)


def test_mean_scales_the_predicted_mean(tmp_path):
    """The draw is z + mean * mu + strength * sigma^power * n: `mean` 1 (the default, and what a
    file without the field reads as) is the draw files decoded to before `mean` existed, bit for
    bit; `mean` 0 draws the noise about z itself."""
    a, none = random_texture(), random_texture(cfg=TextureConfig(channels=8, mean=0.0))  # the same head
    gen = torch.Generator().manual_seed(2)
    z, n = torch.randn((1, 32, 4, 6), generator=gen), torch.randn((1, 32, 4, 6), generator=gen)
    mu, log_sigma = a.head(z)
    assert mu.abs().min() > 0
    assert torch.equal(a.drawn(z, n), z + mu + 0.6 * log_sigma.exp() * n)
    assert torch.equal(none.drawn(z, n), z + 0.6 * log_sigma.exp() * n)
    assert TextureConfig.from_dict({k: v for k, v in asdict(SMALL).items() if k != "mean"}).mean == 1.0
    half = random_texture(cfg=TextureConfig(channels=8, mean=0.5))
    half.save(tmp_path / "t.safetensors", {"0000000a": half.head.state_dict()}, [{"name": "a", "model_id": "0000000a"}], "float32")
    assert LatentTexture.load(tmp_path / "t.safetensors", "0000000a").cfg.mean == 0.5
    with pytest.raises(ValueError, match="mean must be a number from 0 to 1"):
        TextureConfig(mean=1.5)


def test_the_gate_scales_the_mean_per_tile(tmp_path):
    """With `gate` the draw is z + mean * a * mu + ..., a = clamp(w . s + b, 0, 1) from the tile's
    own statistics s: as made (w 0, b 1) it is the ungated draw bit for bit; a gate at 0 is
    `mean` 0's draw; the statistics are each tile's own, so two tiles in a batch get their own
    a; the gate's tensors are stored with each head; a file without the field is ungated."""
    plain, gated = random_texture(), random_texture(cfg=TextureConfig(channels=8, gate=True))  # the same head and taef2
    assert TextureConfig.from_dict({k: v for k, v in asdict(SMALL).items() if k != "gate"}).gate is False
    assert plain.head.gate is None
    gen = torch.Generator().manual_seed(3)
    z, n = torch.randn((2, 32, 4, 6), generator=gen), torch.randn((2, 32, 4, 6), generator=gen)
    z[1] *= 2
    mu, log_sigma = plain.head(z)
    assert torch.equal(gated.drawn(z, n), plain.drawn(z, n))  # as made: a = 1
    with torch.no_grad():
        gated.head.gate.bias.fill_(-1)
    assert torch.equal(gated.drawn(z, n), z + 0.6 * log_sigma.exp() * n)  # a = 0
    s = TextureGate.statistics(z, mu, log_sigma)
    assert s.shape == (2, TextureGate.STATISTICS)
    assert torch.allclose(s[:, :32], z.flatten(2).mean(2)) and torch.allclose(s[:, 32:64], z.flatten(2).std(2))
    with torch.no_grad():  # a = 0.5 for the first tile; the second, of larger z spread, is clamped at 1
        gated.head.gate.weight.zero_()
        gated.head.gate.weight[32:64] = 0.5 / s[0, 32:64].sum()
        gated.head.gate.bias.zero_()
    a = gated.head.gate(z, mu, log_sigma).flatten()
    assert torch.allclose(a, torch.tensor([0.5, 1.0]))
    want = z + a[:, None, None, None] * mu + 0.6 * log_sigma.exp() * n
    assert torch.allclose(gated.drawn(z, n), want, atol=1e-6)
    assert torch.allclose(gated.drawn(z[1:], n[1:]), want[1:], atol=1e-6)  # a tile's a is its own, batched or not
    gated.save(tmp_path / "g.safetensors", {"0000000a": gated.head.state_dict()}, [{"name": "a", "model_id": "0000000a"}], "float32")
    back = LatentTexture.load(tmp_path / "g.safetensors", "0000000a")
    assert back.cfg.gate and torch.equal(back.head.gate.weight, gated.head.gate.weight)
    assert torch.equal(back.drawn(z, n), gated.drawn(z, n))
    # a file whose config says gated but whose heads have no gate is refused, not decoded ungated
    serves = [{"name": "a", "model_id": "0000000a"}]
    plain.save(tmp_path / "p.safetensors", {"0000000a": plain.head.state_dict()}, serves, "float32")
    meta, tensors = read_tensors(tmp_path / "p.safetensors", "pqmim-texture-1", "pqmim texture decoder")
    meta["config"] = json.dumps({**json.loads(meta["config"]), "gate": True})
    save_tensors(tmp_path / "p.safetensors", tensors, meta, "float32")
    with pytest.raises(ModelFileError):
        LatentTexture.load(tmp_path / "p.safetensors", "0000000a")
    with pytest.raises(ValueError, match="gate must be true or false"):
        TextureConfig(gate=1)


def test_one_decoding_takes_the_change_against_the_input():
    """decodes 1: the change is dec(z') - x, x the default decoder's image (one taef2 decoding a
    tile instead of two); decodes 2, the default, is dec(z') - dec(z), what files decoded to
    before `decodes` existed. The codec's path (refine: channels-last, single-threaded passes)
    computes the same as the module's forward, up to float32 rounding."""
    two, one = random_texture(), random_texture(cfg=TextureConfig(channels=8, decodes=1))  # the same weights
    x = to_tensor(photo_crop(0, 0, 96, 64)).contiguous()
    noise = one._noise(x)
    with torch.no_grad():
        z = one.encoder(x)
        drawn = one.decoder(one.drawn(z, noise))
        for t, change in ((one, drawn - x), (two, drawn - one.decoder(z))):
            assert torch.allclose(t(x, noise), t.finish(x, change), atol=1e-6)
            assert torch.allclose(t.refine(x), t.finish(x, change).clamp(0, 1), atol=1e-4)
    assert not torch.allclose(one.refine(x), two.refine(x), atol=1e-3)
    with pytest.raises(ValueError, match="decodes must be 1 or 2"):
        TextureConfig(decodes=3)


def test_the_noise_is_fixed_by_the_pixels():
    a, b = to_tensor(photo_crop(0, 0, 96, 64)), to_tensor(photo_crop(0, 0, 96, 64, variant=3))
    assert seed_of(a) == seed_of(a.clone()) != seed_of(b)
    nudged = a.clone()
    nudged[0, 0, 0, 0] += 1 / 255  # one level of one sub-pixel
    assert seed_of(nudged) != seed_of(a)


def test_texture_decoder_beside_the_refiner_in_the_codec(tiny_ladder):
    folder, ids = tiny_ladder
    serves = [{"name": "pqmim-q1", "model_id": ids["pqmim-q1"]}]
    random_texture().save(folder / "pqmim-texture.safetensors", {ids["pqmim-q1"]: head_state(1)}, serves)
    (folder / "pqmim-texture.json").write_text(
        '{"kind": "perceptual decoder", "serves": [{"name": "pqmim-q1", "model_id": "%s"}]}' % ids["pqmim-q1"]
    )
    codec = Codec.from_pretrained("pqmim-q1")
    rgb = photo_crop(0, 0, 100, 70)  # sides not multiples of 8: edge-padded, cropped back
    data = codec.compress(rgb)
    plain = np.asarray(codec.decompress(data))
    rich = np.asarray(codec.decompress(data, perceptual=True))
    assert isinstance(codec.perceptual_decoder(), LatentTexture)
    assert rich.shape == plain.shape and not np.array_equal(rich, plain)
    fresh = Codec.from_pretrained("pqmim-q1")
    assert np.array_equal(np.asarray(fresh.decompress(data)), plain)
    assert np.array_equal(np.asarray(fresh.decompress(data, perceptual=True)), rich)  # deterministic
    assert np.array_equal(rich, tiling.refine_tiled(codec.perceptual_decoder(), plain, codec.tile_pixels, codec.transform_dtype))


SHIPPED = (ROOT / "models" / "pqmim-texture.safetensors").is_file()


def high_frequency(rgb: np.ndarray) -> float:
    """Mean squared 4-neighbour Laplacian of the luma: how much fine detail an image holds."""
    y = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    lap = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float((lap**2).mean())


@pytest.mark.skipif(not SHIPPED, reason="no texture decoder in models/")
def test_shipped_texture_decoder_puts_back_detail_the_default_decoder_blurs():
    """On the low-rate reconstructions of a real photo the default decoder keeps well under half
    the original's fine detail; the texture decoder brings it closer to the original's (not over
    it by more than half again; 1 and 2 threads: test_perceptual.py's shipped test). It moves colour and shading too
    (the predicted mean): the PSNR of 8x8 block means drops, on this crop by 3.6 dB at q1 and 4.5
    at q2 when it shipped, on 24 val photos by 4.0 at q1; more than 6 dB would be a new fault."""
    from PIL import Image

    from pqmim.evaluate import block_psnr

    with Image.open(PHOTO) as im:
        rgb = np.asarray(im.convert("RGB"))[:256, :384]
    for card in zoo.perceptual_decoders():
        if card["path"].name != "pqmim-texture.safetensors":
            continue
        for s in card["serves"]:
            codec = Codec.from_pretrained(s["name"])
            data = codec.compress(rgb)
            plain, rich = (np.asarray(codec.decompress(data, perceptual=p)) for p in (False, True))
            texture = load_decoder(card["path"], s["model_id"])
            if texture.head.gate is not None:  # q1's gate shuts the mean on this photo (below): the head's own detail, gate open
                with torch.no_grad():
                    texture.head.gate.weight.zero_()
                    texture.head.gate.bias.fill_(1)
                rich = tiling.refine_tiled(texture, plain, codec.tile_pixels, codec.transform_dtype)
            original, before, after = high_frequency(rgb), high_frequency(plain), high_frequency(rich)
            assert before < 0.5 * original and abs(after - original) < abs(before - original) and after < 1.5 * original, s["name"]
            assert block_psnr(rgb, rich, 8) > block_psnr(rgb, plain, 8) - 6, s["name"]


@needs_shared
@pytest.mark.skipif(not SHIPPED, reason="no texture decoder in models/")
@pytest.mark.parametrize("name", ["pqmim-q1", "pqmim-q2"])
def test_shipped_gates_open_on_a_forest_and_shut_on_shops(name):
    """q1's and q2's gates (bench/texture_gate.py, fitted on training photos only) read a tile's
    latent statistics: on held-out val photos where the predicted mean measurably helped (a forest
    path) they give the whole mean, where it cost most (a fast-food restaurant, a candy store) none.
    On the repository's parrots (kodim23) q1's gives none, q2's the whole mean. Measured 1, 0, 0
    and 0 (q1, 0.13.0) or 1 (q2, 0.13.1) when they shipped."""
    from PIL import Image

    from bench.texture_gate import latents
    from pqmim.checkout import VAL

    codec = Codec.from_pretrained(name)
    texture = load_decoder(ROOT / "models" / "pqmim-texture.safetensors", codec.model.model_id().hex())

    def gate(path):  # the head's gate on the whole default-decoded image, float32, as it was fitted
        with Image.open(path) as im:
            plain = np.asarray(codec.decompress(codec.compress(np.asarray(im.convert("RGB")))))
        with torch.no_grad():
            return float(texture.head.gate(*latents(texture, plain)).flatten()[0])

    assert gate(next(VAL.glob("forest_path_sun_amolizervsrahv*"))) > 0.9
    shops = [next(VAL.glob(n + "*")) for n in ("fastfood_restaurant_sun_aubvtr", "candy_store_sun_aoqcvifuszwpcv")]
    assert max(gate(p) for p in shops) < 0.1
    parrots = gate(PHOTO)
    assert parrots < 0.1 if name == "pqmim-q1" else parrots > 0.9


def test_each_model_has_at_most_one_shipped_perceptual_decoder():
    """A card's `serves` routes `--perceptual` (zoo.perceptual_path): no model may be routed two
    ways, and a card may only route models its file was trained for."""
    from pqmim.models.perceptual import served_ids

    cards = [c for c in zoo.perceptual_decoders() if c["path"].parent == ROOT / "models"]
    routed = [s["model_id"] for c in cards for s in c["serves"]]
    assert len(routed) == len(set(routed))
    for c in cards:
        assert {s["model_id"] for s in c["serves"]} <= set(served_ids(c["path"])), c["name"]


@needs_shared
def test_heads_fitted_one_model_per_run_make_the_file_one_run_makes(tiny_ladder, tmp_path, monkeypatch):
    """train.texture keeps each model's fitted head in its run folder: one-model runs side by
    side, then the command with all the models, write the file one run for all of them writes,
    without fitting again."""
    from pqmim.models.texture import FORMAT_TAG
    from pqmim.train import texture as train_texture

    folder, ids = tiny_ladder
    write_photos(tmp_path / "data", {"train": [photo_crop(0, 0, 320, 256, v) for v in range(3)]})
    common = dict(train=tmp_path / "data" / "train", crops=4, steps=3, channels=8, threads=1)
    both = ["--models", "pqmim-q1", "pqmim-q2"]
    one_run = train_texture.main(both + flags(out=tmp_path / "one", export=tmp_path / "one" / "export", **common))
    for name in ("pqmim-q1", "pqmim-q2"):
        train_texture.main(["--models", name] + flags(out=tmp_path / "split", **common))
    monkeypatch.setattr(train_texture, "fit_head", lambda *a: pytest.fail("fitted again"))
    joined = train_texture.main(both + flags(out=tmp_path / "split", export=tmp_path / "split" / "export", **common))
    (meta_a, a), (meta_b, b) = read_tensors(one_run, FORMAT_TAG, "t"), read_tensors(joined, FORMAT_TAG, "t")
    assert meta_a["serves"] == meta_b["serves"] and ids["pqmim-q2"] in meta_b["serves"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = lambda p: json.loads(p.with_suffix(".json").read_text())  # noqa: E731
    assert card(joined)["training"]["heads_fitted_before"] == ["pqmim-q1", "pqmim-q2"]
    assert card(one_run)["fit"] == card(joined)["fit"] and set(card(joined)["fit"]) == {"pqmim-q1", "pqmim-q2"}
    # --heads-from: a file's heads under another config (how 0.12.0 was made from 0.11.0), every tensor as it was
    again = ["--strength", "0.9", "--power", "2", "--heads-from", str(joined)]
    redrawn = train_texture.main(both + again + flags(out=tmp_path / "re", export=tmp_path / "re" / "export", **common))
    meta_c, c = read_tensors(redrawn, FORMAT_TAG, "t")
    assert c.keys() == b.keys() and all(torch.equal(b[k], c[k]) for k in b) and meta_c["serves"] == meta_b["serves"]
    assert LatentTexture.load(redrawn, ids["pqmim-q1"]).cfg == TextureConfig(8, 0.9, power=2)
    assert card(redrawn)["fit"] == card(joined)["fit"] and card(redrawn)["plan"]["pqmim-q1"]["carried_from"] == str(joined)
    assert "gate" not in card(redrawn) and not LatentTexture.load(redrawn, ids["pqmim-q1"]).cfg.gate
    # a source card without a model's fit report (an older card): that report is missing, not an error
    older = card(joined)
    del older["fit"]["pqmim-q2"]
    joined.with_suffix(".json").write_text(json.dumps(older))
    redrawn = train_texture.main(both + again + flags(out=tmp_path / "re2", export=tmp_path / "re2" / "export", **common))
    assert card(redrawn)["fit"] == {"pqmim-q1": older["fit"]["pqmim-q1"], "pqmim-q2": None}
    # one file from several: q1's head and gate from a gated file that serves only it (its card in
    # 0.13.1's layout), q2's from the ungated one; every tensor carried as it was, q2 an open gate
    gated = LatentTexture(TextureConfig(8, 0.9, power=2, gate=True))
    gated.load_state_dict(LatentTexture.load(redrawn, ids["pqmim-q1"]).state_dict(), strict=False)
    torch.nn.init.normal_(gated.head.gate.weight, std=0.01)
    source = tmp_path / "gated" / "pqmim-texture.safetensors"
    source.parent.mkdir()
    gated.save(source, {ids["pqmim-q1"]: gated.head.state_dict()}, [{"name": "pqmim-q1", "model_id": ids["pqmim-q1"]}])
    fit = {"photos": 9, "cv_correlation": 0.2}
    source.with_suffix(".json").write_text(json.dumps({"gate": {"ridge": 100.0, "fitted": {"pqmim-q1": fit}}}))
    both_files = ["--heads-from", str(source), str(redrawn)]
    combined = train_texture.main(both + again[:-2] + both_files + flags(out=tmp_path / "c", export=tmp_path / "c" / "export", **common))
    (_, g), (meta_d, d) = read_tensors(source, FORMAT_TAG, "t"), read_tensors(combined, FORMAT_TAG, "t")
    assert all(torch.equal(g[k], d[k]) for k in g) and meta_d["serves"] == meta_b["serves"]
    q2 = f"heads.{ids['pqmim-q2']}."
    assert all(torch.equal(c[k], d[k]) for k in c if k.startswith(q2))
    open_gate = {q2 + k: v for k, v in TextureGate.open_state().items()}
    assert set(d) == set(c) | set(g) | set(open_gate) and all(torch.equal(d[k], v) for k, v in open_gate.items())
    assert LatentTexture.load(combined, ids["pqmim-q2"]).cfg == TextureConfig(8, 0.9, power=2, gate=True)
    assert card(combined)["gate"] == {"pqmim-q1": {"ridge": 100.0, "fitted": fit}}
    with pytest.raises(SystemExit, match="no texture head for any of pqmim-q2"):  # a file given that serves none of them
        train_texture.main(["--models", "pqmim-q2"] + again[:-2] + ["--heads-from", str(source)] + flags(out=tmp_path / "x", **common))
    # under another draw the gate (fitted for that draw) is dropped: an ungated file again
    other = train_texture.main(
        both
        + ["--strength", "0.8", "--power", "2"]
        + both_files
        + flags(out=tmp_path / "o", **common | {"export": tmp_path / "o" / "export"})
    )
    _, e = read_tensors(other, FORMAT_TAG, "t")
    assert set(e) == set(c) and all(torch.equal(c[k], e[k]) for k in c) and "gate" not in card(other)
