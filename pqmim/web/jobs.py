"""The work behind `pqmim serve`: one comparison at a time, off the request thread.

A job takes an uploaded image, codes it with pqmim (a quality level, or the best file within
a byte budget), decodes the .pqm it made, codes the same pixels with one classical codec at the
highest setting whose file is no larger (pqmim.compare.classical_at_size), and measures both
against the original (PSNR; LPIPS-Alex where its backbone weights are given).

Invariants:
- Every figure a job reports is measured on real files: the bytes are the length of the file
  the job serves for download, and the pqmim image is what that file decodes to.
- One job runs at a time (`Worker.submit` refuses a second while one is queued or running:
  a 2-core machine gains nothing from two, and a user waits less for a clear "busy").
- A job writes only inside its own folder of the worker's scratch folder, and the worker
  keeps the last KEEP_JOBS jobs' folders, deleting older ones; the server deletes the scratch
  folder when it stops.
- What reaches the page is a job's state: a stage, a fraction done, the results, or one line
  saying what went wrong; never a stack trace (unexpected errors are logged on the server).
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .. import format as fmt
from ..image import UnsupportedImageError, load_image

log = logging.getLogger("pqmim.serve")
KEEP_JOBS = 4  # finished jobs whose images stay downloadable
LPIPS_MAX_PIXELS = 16_000_000  # LPIPS (AlexNet on the full image) is skipped above this
EXTENSIONS = {"jpeg420": "jpg", "jpeg444": "jpg", "webp": "webp", "avif": "avif"}


class UploadError(ValueError):
    """An upload that cannot be compared: the message is shown on the page as it is."""


@dataclass(frozen=True)
class Request:
    """What the page asks for: a quality level or a byte budget, and the classical codec."""

    codec: str  # a key of pqmim.classical.CODECS
    quality: int | None = None  # pqmim quality level (zoo.quality_levels)
    max_bytes: int | None = None  # or: the best file of at most this many bytes (rung and steps sent)
    name: str = "image"  # the upload's file name, for download names only


@dataclass
class Job:
    id: str
    request: Request
    folder: Path
    status: str = "queued"  # queued | running | done | error
    stage: str = "waiting"
    fraction: float = 0.0  # of the current stage
    error: str | None = None
    result: dict | None = None
    files: dict[str, str] = field(default_factory=dict)  # served name -> file in `folder`

    def state(self) -> dict:
        return {
            "id": self.id,
            "status": self.status,
            "stage": self.stage,
            "fraction": self.fraction,
            "error": self.error,
            "result": self.result,
        }

    def progress(self, stage: str) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            self.stage, self.fraction = stage, done / total if total else 1.0

        return report


def safe_stem(filename: str) -> str:
    """A download name's stem from an uploaded file's name: letters, digits, '.', '_', '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "image").stem).strip("._") or "image"
    return stem[:64]


def read_upload(data: bytes, max_pixels: int | None, filename: str = "upload") -> np.ndarray:
    """The RGB pixels of an uploaded file, with the codec's image policy (pqmim/image.py);
    UploadError for anything else: not an image, too many pixels, transparent."""
    if not data:
        raise UploadError("the upload is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.UnidentifiedImageError, OSError):
        raise UploadError(f"{filename} is not an image this server can read (PNG, JPEG, WebP, AVIF, TIFF, BMP, GIF, ...)") from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise UploadError(f"{filename} is {w}x{h} = {w * h:,} pixels; this server takes at most {max_pixels:,}")
        try:
            fmt.check_dimensions(w, h)
            im.load()
            return load_image(im)  # the codec's policy; refuses transparency (the comparison is of colour)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # truncated data, odd modes, alpha
            raise UploadError(
                f"{filename}: {e}" if isinstance(e, UnsupportedImageError) else f"{filename} cannot be read as an image: {e}"
            ) from None


def finite(psnr: float) -> float | None:
    """PSNR for JSON: None for identical images (infinite PSNR), which the page shows as such."""
    return psnr if np.isfinite(psnr) else None


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)  # fast: these are previews
    return buf.getvalue()


class Worker:
    """Runs jobs one at a time on its own thread; see the module docstring."""

    def __init__(self, scratch: Path, run: Callable[[Job, np.ndarray], None]) -> None:
        self.scratch = scratch
        self.run = run  # fills job.result and job.files (compare_job, or a test's stand-in)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._busy = False

    def submit(self, rgb: np.ndarray, request: Request) -> Job | None:
        """Start a job on its own thread; None while another is queued or running."""
        with self._lock:
            if self._busy:
                return None
            self._busy = True
            job_id = secrets.token_hex(8)
            job = Job(job_id, request, self.scratch / job_id)
            job.folder.mkdir()
            self.jobs[job.id] = job
            while len(self.jobs) > KEEP_JOBS:
                _, old = self.jobs.popitem(last=False)
                shutil.rmtree(old.folder, ignore_errors=True)
        threading.Thread(target=self._work, args=(job, rgb), name=f"pqmim-job-{job.id}", daemon=True).start()
        return job

    @property
    def busy(self) -> bool:
        return self._busy

    def _work(self, job: Job, rgb: np.ndarray) -> None:
        job.status = "running"
        try:
            self.run(job, rgb)
            job.status = "done"
        except (ValueError, OSError) as e:  # TargetSizeError, BitstreamError, a full disk: say it as it is
            job.error, job.status = str(e) or type(e).__name__, "error"
        except Exception as e:  # a bug: one line on the page, the traceback on the server's console
            log.exception("job %s failed", job.id)
            job.error, job.status = f"internal error ({type(e).__name__}); the server's console has the details", "error"
        finally:
            with self._lock:
                self._busy = False

    def file(self, job_id: str, name: str) -> Path | None:
        job = self.jobs.get(job_id)
        if job is None or name not in job.files:
            return None
        return job.folder / job.files[name]


class Comparison:
    """compare_job's setting: the device the networks run on, and LPIPS (loaded on first use)."""

    def __init__(self, device: str = "cpu", lpips_weights: Path | None = None) -> None:
        self.device = device
        self.lpips_weights = lpips_weights
        self._lpips = None
        self.lpips_missing = (
            None if lpips_weights else "LPIPS needs the AlexNet backbone weights: start the server with --lpips-weights PATH"
        )

    def lpips(self):
        if self._lpips is None and self.lpips_missing is None:
            try:
                from ..evaluate import LPIPSAlex

                self._lpips = LPIPSAlex(self.lpips_weights)
            except (ImportError, OSError, ValueError, RuntimeError) as e:
                self.lpips_missing = f"LPIPS is not available: {type(e).__name__}: {e}"
                log.warning(self.lpips_missing)
        return self._lpips

    def __call__(self, job: Job, rgb: np.ndarray) -> None:
        """pqmim, then the classical codec at pqmim's size, measured; see the module docstring."""
        from ..codec import shipped_codec
        from ..compare import classical_at_size
        from ..evaluate import psnr_uint8
        from ..sizing import best_within
        from ..zoo import model_for_quality

        req, (h, w) = job.request, rgb.shape[:2]
        if req.quality is not None:
            name = setting = model_for_quality(req.quality)
            data = shipped_codec(name, self.device).compress(rgb, progress=job.progress(f"encoding with {name}"))
        else:

            def trying(level: str, done: int, total: int) -> None:
                job.progress(f"encoding with {level}, looking for the best file within {req.max_bytes:,} bytes")(done, total)

            best = best_within(rgb, req.max_bytes, device=self.device, progress=trying)
            data, name, steps = best.data, best.name, shipped_codec(best.name, self.device).cfg.steps
            setting = name if best.sent == steps else f"{name}, {best.sent} of {steps} steps sent"
        decoded = np.asarray(shipped_codec(name, self.device).decompress(data, progress=job.progress("decoding the .pqm file")))
        job.stage, job.fraction = f"encoding {req.codec} at the same size", 0.0
        row, classical = classical_at_size(req.codec, rgb, len(data))
        if classical is None:
            raise UploadError(row["skipped"])
        job.stage = "measuring"
        lpips = self.lpips() if w * h <= LPIPS_MAX_PIXELS else None
        note = self.lpips_missing if w * h <= LPIPS_MAX_PIXELS else f"LPIPS is skipped above {LPIPS_MAX_PIXELS:,} pixels"
        stem, ext = safe_stem(req.name), EXTENSIONS[req.codec]
        files = {
            "original.png": png(rgb),
            "pqmim.png": png(decoded),
            "pqmim.pqm": data,
            f"{req.codec}.png": png(classical),
            f"{req.codec}.{ext}": row["file"],
        }
        for served, content in files.items():
            (job.folder / served).write_bytes(content)
            job.files[served] = served
        bpp = lambda n: n * 8 / (w * h)  # noqa: E731
        job.result = {
            "width": w,
            "height": h,
            "name": req.name,
            "lpips_note": None if lpips else note,
            "rows": [
                {
                    "codec": "pqmim",
                    "label": "pqmim",
                    "setting": setting,
                    "bytes": len(data),
                    "bpp": bpp(len(data)),
                    "psnr": finite(psnr_uint8(rgb, decoded)),
                    "lpips": lpips(rgb, decoded) if lpips else None,
                    "over_budget": False,
                    "image": "pqmim.png",
                    "file": "pqmim.pqm",
                    "download": f"{stem}.pqm",
                    "download_png": f"{stem}.pqmim.png",
                },
                {
                    "codec": req.codec,
                    "label": row["label"],
                    "setting": row["setting"],
                    "bytes": row["bytes"],
                    "bpp": row["bpp"],
                    "psnr": finite(row["psnr"]),
                    "lpips": lpips(rgb, classical) if lpips else None,
                    "over_budget": row["over_budget"],
                    "image": f"{req.codec}.png",
                    "file": f"{req.codec}.{ext}",
                    "download": f"{stem}.{ext}",
                    "download_png": f"{stem}.{req.codec}.png",
                },
            ],
        }
        job.stage, job.fraction = "done", 1.0
