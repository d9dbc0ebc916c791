"""A training round on a lent GPU, prepared so that none of its 30 minutes goes to set-up.

A session that is lent a device (the `status` tool says can_start_another) runs, in order (the
README's "A training round on a lent GPU" gives each device call's carry):

    here:    python -m pqmim.gpu_round prepare                # pack, wheels, weights out of the index
    here:    python -m pqmim.gpu_round xcheck-prepare         # Kodak, default model, this CPU's files
    device:  python3 -m pqmim.gpu_round launch --minutes 19  # carry .round/pack.tar, .round/whl
    device:  python3 -m pqmim.gpu_round xcheck --out $OUT; python3 -m pqmim.gpu_round poll --seconds 420
    device:  python3 -m pqmim.gpu_round poll --seconds 570   # back to back, until every job is done
    device:  python3 -m pqmim.gpu_round collect --out $OUT   # (then --from-part N if it says so)
    here:    ../shared/tools/device-tree restore
    here:    python -m pqmim.gpu_round xcheck-receive FILES  # GPU<->CPU exact round trips
    here:    python -m pqmim.gpu_round receive FILES...      # join, cards, Kodak with the real codec
    here:    python -m pqmim.gpu_round ship runs/round-... NAME...  # models that beat the shipped ones

`launch` starts one detached process (setsid) per job: every rung of the ladder and the
same-budget baselines, all on the one GPU at once, each a plain `python -m pqmim.train` run (the
baselines: `python -m bench.train_baselines`; the perceptual decoder's trials, named with
`--only` and prepared with `prepare --perceptual`: `python -m pqmim.train.perceptual`, whose
snapshots are chosen among here by `python -m bench perceptual-select`) with
time-budgeted plans (so a job ends on time however fast the GPU is), checkpoints on the
machine's local disk every few minutes and an export (int8 weights, card without Kodak) at the
end. `collect` exports any job that has not finished from its last checkpoint, so a round that
runs short still brings back what it learned. `dry-run` does all of it on this CPU with tiny
models, as the tests do.

Invariants: nothing the device runs needs the network or ../shared (the pack holds the photos
and validation crops, .round/whl the missing packages); what comes back is parts of at most
PART_BYTES, at most CALL_BYTES per command, checked here by a SHA-256 in the round's manifest.
"""

from .plan import CALL_BYTES, MODELS_BUDGET, OVERHEAD_MIN, PART_BYTES, TRIP, WORK, Job, RoundPlan, default_plan, tiny_plan  # noqa: F401
from .device import collect, launch, poll  # noqa: F401
from .here import ladder_psnr_at, prepare, reassemble, receive, ship  # noqa: F401
from .xcheck import xcheck_device, xcheck_prepare, xcheck_receive  # noqa: F401
from .cli import dry_run, main  # noqa: F401
from ..checkout import ROOT  # noqa: F401
