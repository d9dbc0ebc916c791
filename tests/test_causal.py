"""Block-causal entropy models (ModelConfig.causal): the coder's cached path computes what
training optimises, files round-trip exactly, and entropy variants load only with their base."""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import TINY, make_tiny_model, photo_crop
from pqmim.codec import Codec
from pqmim.entropy.schedule import cumulative_counts, reveal_groups
from pqmim.models import PQMIM, ModelFileError
from pqmim.models.transformer import KVCache

CAUSAL = dataclasses.replace(TINY, causal=True)


@pytest.fixture(scope="module")
def causal_codec() -> Codec:
    return Codec(make_tiny_model(seed=3, cfg=CAUSAL), name="tiny-causal")


def schedule_steps(hh: int, ww: int, cfg) -> torch.Tensor:
    """The coding step of each position of one window (padding: cfg.steps), as (1, W, W)."""
    W = cfg.window
    step = torch.full((W * W,), cfg.steps)
    for s, g in enumerate(reveal_groups(hh, ww, W, cfg.steps, cfg.alpha)):
        step[torch.from_numpy(g)] = s
    return step.view(1, W, W)


@pytest.mark.parametrize("hh,ww", [(8, 8), (5, 7), (1, 3)])
def test_cached_path_equals_the_training_path(causal_codec, hh, ww):
    """predict/reveal with a KV cache give the logits of two_stream (both streams at once under a
    mask) to float64 rounding: the coder codes with the function training optimised."""
    ent = causal_codec.coder.entropy  # float64
    W, m = CAUSAL.window, CAUSAL.m
    codes = torch.randint(0, CAUSAL.k, (1, m, W, W), generator=torch.Generator().manual_seed(hh * ww))
    valid = torch.zeros(1, W, W, dtype=torch.bool)
    valid[0, :hh, :ww] = True
    with torch.no_grad():
        full = ent.two_stream(codes, schedule_steps(hh, ww, CAUSAL), valid)
        cache, worst, last = KVCache(CAUSAL.n_layers), 0.0, None
        for g in reveal_groups(hh, ww, W, CAUSAL.steps, CAUSAL.alpha):
            if not len(g):
                continue
            g = torch.from_numpy(g)
            h = ent.advance(cache, None if last is None else codes.view(1, m, -1)[:, :, last], last, g, 1)
            worst = max(worst, float((ent.logits(h) - full[:, g]).abs().max()))
            last = g
    assert worst < 1e-12
    assert cache.size == hh * ww - len(last)  # the last group is never needed as context


def test_training_loss_is_the_coding_cost(causal_codec):
    """Stage 2's loss on a window with the coder's schedule is the information the coder spends
    on it: the model is trained on exactly what a file costs (up to the 1/16-nat grid)."""
    from pqmim.train.stage2 import CausalCodeLoss

    rgb = photo_crop(300, 200, 128, 128)  # 8x8 latent positions: one full window
    codes = causal_codec.encode_codes([rgb])[0]
    bits = causal_codec.coder.information_bits(codes)
    loss = CausalCodeLoss(causal_codec.coder.entropy, CAUSAL.k)
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    with torch.no_grad():
        per_code = float(loss(codes[None], schedule_steps(8, 8, CAUSAL), valid))
    assert per_code * codes.numel() == pytest.approx(bits, rel=0.01)


def test_random_groups_follow_the_schedule_sizes():
    from pqmim.train.stage2 import random_groups

    valid = torch.zeros(3, 8, 8, dtype=torch.bool)
    valid[0], valid[1, :5, :3], valid[2, :1, :1] = True, True, True
    groups = random_groups(valid, np.random.default_rng(0), CAUSAL.steps, CAUSAL.alpha)
    for i in range(3):
        n = int(valid[i].sum())
        counts = torch.bincount(groups[i][valid[i]], minlength=CAUSAL.steps).tolist()
        assert list(np.cumsum(counts)) == cumulative_counts(n, CAUSAL.steps, CAUSAL.alpha)
        assert (groups[i][~valid[i]] == CAUSAL.steps).all()


@pytest.mark.parametrize("w,h", [(200, 136), (33, 300), (1, 1)])
def test_causal_files_roundtrip_exactly_with_any_thread_count(causal_codec, w, h):
    rgb = photo_crop(100, 50, w, h, variant=5)
    torch.set_num_threads(2)
    data = causal_codec.compress(rgb)
    chosen = causal_codec.encode_codes([rgb])[0]
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        assert torch.equal(causal_codec.read_codes(data)[1], chosen)
    assert data == causal_codec.compress(rgb)


def test_a_causal_model_differs_from_its_full_attention_twin():
    """The attention pattern is part of the model: same weights, other id, other files."""
    full, causal = make_tiny_model(seed=3), make_tiny_model(seed=3, cfg=CAUSAL)
    assert full.model_id() != causal.model_id()
    assert "causal" not in full.cfg.to_dict()  # ids of models made before the field are unchanged


def _variant(tmp_path, seed=5):
    base = make_tiny_model(seed=1)
    base.save(tmp_path / "base.safetensors", storage="int8")
    base = PQMIM.load(tmp_path / "base.safetensors")
    variant = make_tiny_model(seed=seed, cfg=CAUSAL)
    variant.load_state_dict({**variant.state_dict(), **{k: v for k, v in base.state_dict().items() if not k.startswith("entropy.")}})
    variant.save(tmp_path / "fast.safetensors", storage="int8", base=tmp_path / "base.safetensors")
    return base, variant


def test_entropy_variant_shares_its_base_autoencoder(tmp_path):
    base, variant = _variant(tmp_path)
    loaded = PQMIM.load(tmp_path / "fast.safetensors")
    assert loaded.cfg.causal and loaded.model_id() != base.model_id()
    assert (tmp_path / "fast.safetensors").stat().st_size < (tmp_path / "base.safetensors").stat().st_size / 2
    rgb = photo_crop(0, 0, 96, 80)
    a, b = Codec(base), Codec(loaded)
    assert torch.equal(a.encode_codes([rgb])[0], b.encode_codes([rgb])[0])  # same codes, other entropy model
    assert np.array_equal(np.asarray(a.decompress(a.compress(rgb))), np.asarray(b.decompress(b.compress(rgb))))


def test_entropy_variant_refuses_a_foreign_base(tmp_path):
    _variant(tmp_path)
    make_tiny_model(seed=2).save(tmp_path / "base.safetensors", storage="int8")  # another model under the base's name
    with pytest.raises(ModelFileError, match="not the model it was made from"):
        PQMIM.load(tmp_path / "fast.safetensors")
    (tmp_path / "base.safetensors").unlink()
    with pytest.raises(ModelFileError, match="not found"):
        PQMIM.load(tmp_path / "fast.safetensors")


def test_entropy_variant_needs_the_same_autoencoder(tmp_path):
    base = make_tiny_model(seed=1)
    base.save(tmp_path / "base.safetensors")
    other = make_tiny_model(seed=4, cfg=CAUSAL)  # its own autoencoder: not a variant of base
    with pytest.raises(ValueError, match="differs"):
        other.save(tmp_path / "fast.safetensors", base=tmp_path / "base.safetensors")
    assert not (tmp_path / "fast.safetensors").exists()
