"""Train a pqmim model: stage 1 (autoencoder + product quantizer), stage 2 (MIM entropy model),
then export a release model (safetensors + JSON card).

    python -m pqmim.train --out runs/default --train ../shared/data/train --val ../shared/data/val

Rerunning the same command resumes from the checkpoints in --out. Runs unchanged on CPU and CUDA
(bf16 autocast, channels-last and TF32 on GPU, where the photos live in GPU memory and crops are
cut there), alone or as several processes under torchrun (see pqmim.distributed). --train and
--val take folders or a data pack (pqmim.pack). A plan with "minutes" is a wall-time budget
(the learning rate decays over the time, and the stage ends when it is spent), as for a lent
GPU's round (pqmim.gpu_round); otherwise it is a number of iterations.

    torchrun --standalone --nproc_per_node 2 -m pqmim.train --out runs/default ...

The package: run (the command line as a typed RunConfig, the one resume rule, the run), loop (the
one training loop: schedule, checkpoints with every RNG, train.log and metrics.jsonl), stage1,
stage2, export (the release model and its card). The CompressAI baselines train with the same
loop from the bench (bench/train_baselines.py).
"""

from .run import main

__all__ = ["main"]
