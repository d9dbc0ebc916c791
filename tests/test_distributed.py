"""Distributed training: torchrun with 2 CPU processes (gloo) keeps the ranks identical, and a
run stopped and resumed ends exactly where an uninterrupted one does."""

from conftest import TINY, assert_same_weights, flags, photo_crop, torchrun, write_photos

# plans in the names written before 0.5 ("steps" for iterations) are still read
PLAN1 = {"steps": 6, "warmup_ae_steps": 2, "small_crop_until": 3, "small_crop": 32, "small_batch": 4, "crop": 64, "batch": 4}


def train(tmp_path, out, *extra):
    common = flags(train=tmp_path / "train", val=tmp_path / "val", kodak="", config=TINY.to_dict(), stages="1,2", threads=1, log_every=1)
    return torchrun("pqmim.train", flags(out=out, stage1_plan=PLAN1, stage2_plan={"steps": 4, "batch": 4}) + common + list(extra), out)


def test_two_ranks_identical_and_resume_exact(tmp_path):
    write_photos(tmp_path, {"train": [photo_crop(0, 0, 288, 272, variant=v) for v in range(4)], "val": [photo_crop(240, 120, 288, 272)]})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a, b = train(tmp_path, straight)
    log = (straight / "train.log").read_text()
    assert "2 processes (torchrun, DDP)" in log and "k-means initialised" in log and "stage2 val iteration 4" in log
    assert_same_weights(a, b)

    train(tmp_path, resumed, "--stop-at", "4")  # stops during stage 1
    assert "stage2" not in (resumed / "train.log").read_text()
    c, d = train(tmp_path, resumed)
    assert "stage1: resumed at iteration 4" in (resumed / "train.log").read_text()
    assert_same_weights(c, d)
    assert_same_weights(c, a)


def test_index_stream_shards_epochs_and_resumes():
    from pqmim.distributed import Dist, index_stream

    def take(it, n):
        return [next(it) for _ in range(n)]

    r0, r1 = take(index_stream(10, Dist(0, 2), seed=3), 10), take(index_stream(10, Dist(1, 2), seed=3), 10)
    assert sorted(r0[:5] + r1[:5]) == list(range(10))  # one epoch: disjoint shards covering everything
    assert r0[:5] != r0[5:10]  # a new order each epoch
    assert take(index_stream(10, Dist(0, 2), seed=3, start=7), 3) == r0[7:10]  # resuming skips exactly
