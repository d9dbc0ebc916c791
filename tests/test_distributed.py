"""Distributed training: torchrun with 2 CPU processes (gloo) keeps the ranks identical, and a
run stopped and resumed ends exactly where an uninterrupted one does."""

import json
import os
import subprocess
import sys

import torch
from PIL import Image

from conftest import TINY, photo_crop

LAUNCH = """
import os, sys, torch
from pqmim.train import main
model = main(sys.argv[1:])
torch.save(model.state_dict(), os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank{os.environ['RANK']}.pt"))
"""


def torchrun(tmp_path, out, *extra):
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    args = [
        "--out",
        str(out),
        "--train",
        str(tmp_path / "train"),
        "--val",
        str(tmp_path / "val"),
        "--kodak",
        "",
        "--config",
        json.dumps(TINY.to_dict()),
        "--stages",
        "1,2",
        "--threads",
        "1",
        "--log-every",
        "1",
        # plans in the names written before 0.5 ("steps" for iterations) are still read
        "--stage1-plan",
        json.dumps({"steps": 6, "warmup_ae_steps": 2, "small_crop_until": 3, "small_crop": 32, "small_batch": 4, "crop": 64, "batch": 4}),
        "--stage2-plan",
        json.dumps({"steps": 4, "batch": 4}),
        *extra,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]


def weights(out, rank):
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_two_ranks_identical_and_resume_exact(tmp_path):
    folders = {"train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(4)], "val": [photo_crop(240, 120, 288, 272)]}
    for name, images in folders.items():
        (tmp_path / name).mkdir()
        for i, rgb in enumerate(images):
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(tmp_path, straight)
    log = (straight / "train.log").read_text()
    assert "2 processes (torchrun, DDP)" in log and "k-means initialised" in log and "stage2 val iteration 4" in log
    assert_same(weights(straight, 0), weights(straight, 1))

    torchrun(tmp_path, resumed, "--stop-at", "4")  # stops during stage 1
    assert "stage2" not in (resumed / "train.log").read_text()
    torchrun(tmp_path, resumed)
    assert "stage1: resumed at iteration 4" in (resumed / "train.log").read_text()
    assert_same(weights(resumed, 0), weights(resumed, 1))
    assert_same(weights(resumed, 0), weights(straight, 0))


def test_index_stream_shards_epochs_and_resumes():
    from pqmim.distributed import Dist, index_stream

    def take(it, n):
        return [next(it) for _ in range(n)]

    r0, r1 = take(index_stream(10, Dist(0, 2), seed=3), 10), take(index_stream(10, Dist(1, 2), seed=3), 10)
    assert sorted(r0[:5] + r1[:5]) == list(range(10))  # one epoch: disjoint shards covering everything
    assert r0[:5] != r0[5:10]  # a new order each epoch
    assert take(index_stream(10, Dist(0, 2), seed=3, start=7), 3) == r0[7:10]  # resuming skips exactly
