"""`pqmim serve`: a local page that shows pqmim beside JPEG, WebP or AVIF at the same file size.

The page (static/index.html, plain HTML and JavaScript, no build step) talks to this JSON API:

    GET  /api/info                  quality levels, classical codecs, limits, whether LPIPS is on
    POST /api/jobs?codec=C&quality=Q   (or &max_bytes=N)   the image file is the request body
                                    -> 202 {"id"}; 400 bad image or parameters; 409 busy;
                                       413 upload too large
    GET  /api/jobs/ID               the job's state (pqmim/web/jobs.py)
    GET  /api/jobs/ID/files/NAME    a file the job made (.pqm, the classical file, PNGs);
                                    ?download=NAME2 sends it as an attachment named NAME2

Invariants: the server listens on loopback unless told otherwise; an upload is read up to
max_upload_bytes and no further; everything a job writes lives in one temporary folder that
is deleted when the server stops (pqmim/web/jobs.py for the rest).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import classical, zoo
from .. import format as fmt
from .jobs import Comparison, Job, UploadError, Worker, read_upload, safe_stem
from .jobs import Request as JobRequest

MAX_UPLOAD_BYTES = 50 << 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")
BUSY = "busy: another image is being compressed (in this or another tab); try again when it is done"


@dataclass(frozen=True)
class Settings:
    device: str = "cpu"
    lpips_weights: Path | None = None  # the LPIPS-Alex backbone (../shared/weights/lpips_alexnet_features.pth)
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_pixels: int | None = fmt.MAX_IMAGE_PIXELS


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(settings: Settings = Settings(), run=None) -> Starlette:
    """The app; `run(job, rgb)` does a job's work (default: jobs.Comparison with `settings`)."""
    comparison = run or Comparison(settings.device, settings.lpips_weights)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        with tempfile.TemporaryDirectory(prefix="pqmim-serve-") as scratch:
            app.state.scratch = Path(scratch)
            app.state.worker = Worker(Path(scratch), comparison)
            yield

    async def page(request: Request) -> Response:
        return HTMLResponse(resources.files("pqmim.web").joinpath("static/index.html").read_text(encoding="utf-8"))

    async def info(request: Request) -> Response:
        from .. import __version__

        cards = {c["name"]: c for c in zoo.list_models()}
        levels = [
            {
                "quality": q,
                "name": name,
                "default": name == zoo.DEFAULT_MODEL,
                "kodak_bpp": (cards.get(name, {}).get("kodak") or {}).get("bpp"),
            }
            for q, name in zoo.quality_levels().items()
        ]
        codecs = [{"id": c, "label": classical.LABELS[c]} for c in ("jpeg420", "webp", "avif") if classical.available(c)]
        lpips = getattr(comparison, "lpips_missing", None)
        return JSONResponse(
            {
                "version": __version__,
                "levels": levels,
                "codecs": codecs,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_pixels": settings.max_pixels,
                "lpips_note": lpips,
            }
        )

    async def submit(request: Request) -> Response:
        q = request.query_params
        try:
            job_request = parse_request(
                q.get("codec"), q.get("quality"), q.get("max_bytes"), unquote(request.headers.get("x-filename", "image"))
            )
        except UploadError as e:
            return error(400, str(e))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            return error(413, too_large(settings.max_upload_bytes))
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_upload_bytes:
                return error(413, too_large(settings.max_upload_bytes))
        worker: Worker = request.app.state.worker
        if worker.busy:
            return error(409, BUSY)
        try:
            rgb = await run_in_threadpool(read_upload, bytes(body), settings.max_pixels, job_request.name)
        except UploadError as e:
            return error(400, str(e))
        job = worker.submit(rgb, job_request)
        if job is None:
            return error(409, BUSY)
        return JSONResponse({"id": job.id}, status_code=202)

    async def state(request: Request) -> Response:
        job: Job | None = request.app.state.worker.jobs.get(request.path_params["id"])
        if job is None:
            return error(404, "no such job (the server keeps the last few only)")
        return JSONResponse(job.state())

    async def file(request: Request) -> Response:
        path = request.app.state.worker.file(request.path_params["id"], request.path_params["name"])
        if path is None or not path.is_file():
            return error(404, "no such file")
        download = request.query_params.get("download")
        media = {
            ".png": "image/png",
            ".pqm": "application/octet-stream",
            ".jpg": "image/jpeg",
            ".webp": "image/webp",
            ".avif": "image/avif",
        }
        return FileResponse(
            path,
            media_type=media.get(path.suffix, "application/octet-stream"),
            filename=safe_download(download) if download else None,
            headers={"Cache-Control": "no-store"},
        )

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/jobs", submit, methods=["POST"]),
        Route("/api/jobs/{id}", state),
        Route("/api/jobs/{id}/files/{name}", file),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def too_large(limit: int) -> str:
    return f"the upload is larger than this server takes ({limit / 2**20:.0f} MiB)"


def safe_download(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return f"{safe_stem(stem or ext)}.{re.sub(r'[^a-z0-9]', '', ext.lower())[:8]}" if dot else safe_stem(name)


def parse_request(codec: str | None, quality: str | None, max_bytes: str | None, name: str) -> JobRequest:
    """The page's query parameters, checked: UploadError says what is wrong."""
    if codec not in classical.CODECS or not classical.available(codec):
        raise UploadError(f"unknown or unavailable codec {codec!r}")
    if (quality is None) == (max_bytes is None):
        raise UploadError("give a quality level or a size in bytes, not both")
    if quality is not None:
        levels = zoo.quality_levels()
        if not quality.isdigit() or int(quality) not in levels:
            raise UploadError(f"no quality level {quality!r} (levels: {', '.join(map(str, levels))})")
        return JobRequest(codec, quality=int(quality), name=name)
    if not max_bytes.isdigit() or not 0 < int(max_bytes) <= 1 << 40:
        raise UploadError(f"the size must be a whole number of bytes, got {max_bytes!r}")
    return JobRequest(codec, max_bytes=int(max_bytes), name=name)


def serve(host: str = "127.0.0.1", port: int = 8000, settings: Settings = Settings()) -> None:
    import uvicorn

    if host not in LOOPBACK:
        print(f"pqmim serve: listening on {host}: anyone who can reach this machine can upload images to it")
    print(f"pqmim serve: open http://{'localhost' if host in LOOPBACK else host}:{port}/ (Ctrl+C stops the server)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
