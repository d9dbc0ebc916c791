"""The quantizers' options (yardstick trials of issue 12): finite scalar quantization as a fixed
grid, and the rate estimate of a rate-aware stage 1."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import TINY, flags, photo_crop, write_photos
from pqmim import Codec
from pqmim.config import ModelConfig
from pqmim.models import PQMIM
from pqmim.models.quantizer import FiniteScalarQuantizer, ProductQuantizer

FSQ = dataclasses.replace(TINY, m=2, k=60, sub_dim=3, fsq=(5, 4, 3))


def test_fsq_config_is_validated():
    assert ModelConfig.from_dict(FSQ.to_dict()) == FSQ and "fsq" not in TINY.to_dict()  # old ids unchanged
    for bad in ({"fsq": (5, 4)}, {"fsq": (5, 4, 4)}, {"fsq": (5, 4, 1), "k": 20}):
        with pytest.raises(ValueError, match="fsq"):
            dataclasses.replace(FSQ, **bad)


def test_fsq_codes_are_the_grid_points_it_decodes():
    q = FiniteScalarQuantizer(2, (5, 4, 3))
    z = torch.randn(2, 6, 7, 5) * 2
    zq, codes, stats = q(z)
    assert codes.min() >= 0 and codes.max() < 60 and stats["commit"] == 0
    assert torch.equal(q.latents_for(codes), zq)  # what the decoder gets in training is the code word
    assert torch.equal(q.codes_for(z), codes)
    spread = torch.atanh(torch.rand(1, 6, 40, 40, generator=torch.Generator().manual_seed(0)) * 1.98 - 0.99)
    assert q.codes_for(spread).unique().numel() == 60  # every grid point is reachable
    assert zq.abs().max() == 1  # the grid spans [-1, 1] on each channel
    z.requires_grad_(True)
    q(z)[0].sum().backward()
    assert z.grad.abs().min() > 0  # straight-through: every latent gets a gradient


def test_fsq_model_files_and_exact_round_trip(tmp_path):
    torch.manual_seed(0)
    model = PQMIM(FSQ).eval()
    with torch.no_grad():
        model.encoder.net[-1].weight.mul_(30)  # latents spread over the grid, as trained ones are
    assert isinstance(model.quantizer, FiniteScalarQuantizer) and "quantizer.codebooks" not in model.state_dict()
    model.save(tmp_path / "fsq.safetensors", storage="int8")
    codec = Codec.from_file(tmp_path / "fsq.safetensors")
    rgb = photo_crop(200, 100, 96, 80)
    codes = codec.encode_codes([rgb])[0]
    assert codes.unique().numel() > 5
    data = codec.compress(rgb)
    assert torch.equal(Codec.from_file(tmp_path / "fsq.safetensors").read_codes(data)[1], codes)
    assert np.asarray(codec.decompress(data)).shape == (80, 96, 3)
    other = dataclasses.replace(FSQ, fsq=(3, 4, 5))  # same k and shapes, another grid: another model
    assert PQMIM(other).quantizer.codebooks.shape == model.quantizer.codebooks.shape
    assert not torch.equal(PQMIM(other).quantizer.codebooks, model.quantizer.codebooks)


def test_soft_bits_favour_often_used_code_words():
    q = ProductQuantizer(1, 4, 2)
    with torch.no_grad():
        q.codebooks[0] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        q.ema_count[0] = torch.tensor([97.0, 1.0, 1.0, 1.0])
    near_popular = torch.tensor([0.1, 0.05]).view(1, 2, 1, 1)
    near_rare = torch.tensor([0.9, 0.05]).view(1, 2, 1, 1)
    assert q.soft_bits(near_popular) < 1 < q.soft_bits(near_rare)  # -log2(0.97) vs -log2(0.01)
    z = near_rare.clone().requires_grad_(True)
    q.soft_bits(z).backward()
    assert z.grad[0, 0, 0, 0] > 0  # descending the rate moves the latent towards the popular word
    q.ema_count.fill_(1.0)
    assert q.soft_bits(near_rare).item() == pytest.approx(2.0)  # uniform usage: log2(k) bits


def test_rate_aware_fsq_stage1_trains(tmp_path):
    from pqmim.train import main

    write_photos(tmp_path, {"train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(2)]})
    plan = {"iterations": 3, "warmup_ae_iterations": 1, "small_crop_until": 0, "crop": 64, "batch": 2, "rate_weight": 0.01}
    for name, cfg in (("pq", TINY), ("fsq", FSQ)):
        main(
            flags(out=tmp_path / name, train=tmp_path / "train", val=tmp_path / "train", kodak="", stages=1)
            + flags(config=cfg.to_dict(), stage1_plan=plan, log_every=1, ckpt_every=3)
        )
        lines = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rates = [r["soft_bpp"] for r in lines if "soft_bpp" in r]
        assert len(rates) == 2 and all(0 < r <= cfg.m * np.log2(cfg.k) / cfg.f**2 + 1e-6 for r in rates)
