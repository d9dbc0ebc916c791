"""Where a development checkout finds what it does not ship: the one home of these paths.

A clone of the repository (ROOT) may have a folder `shared/` beside it (SHARED) with the
training, validation and Kodak photos and the LPIPS and FID weights; CI has it, a user's
install does not. Training, the bench and the tests take their default paths from here, never
from the working directory; nothing in the codec itself (encode, decode) reads these paths.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout (meaningful for a clone or an editable install)
SHARED = ROOT.parent / "shared"  # data and weights beside the clone; absent in a user's install

TRAIN = SHARED / "data" / "train"
VAL = SHARED / "data" / "val"
KODAK = SHARED / "data" / "kodak"
LPIPS_BACKBONE = SHARED / "weights" / "lpips_alexnet_features.pth"
FID_WEIGHTS = SHARED / "weights" / "fid_inception_v3_2015-12-05.pth"


def head_commit(short: bool = False) -> str | None:
    """The checkout's HEAD commit (None outside a git clone, or without git)."""
    cmd = ["git", "-C", str(ROOT), "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None
