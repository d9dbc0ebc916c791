"""`pqmim serve`: the JSON API (Starlette's test client) and the page in a real browser
(Playwright driving Debian's chromium, skipped where either is missing)."""

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_crop

from pqmim.checkout import LPIPS_BACKBONE
from PIL import Image

pytest.importorskip("starlette", reason="pqmim serve needs the web extra: pip install 'pqmim[web]'")
TestClient = pytest.importorskip("starlette.testclient", reason="Starlette's test client needs httpx2 (or httpx)").TestClient

from pqmim import classical  # noqa: E402
from pqmim.codec import shipped_codec  # noqa: E402
from pqmim.evaluate import psnr_uint8  # noqa: E402
from pqmim.web import jobs  # noqa: E402
from pqmim.web.app import Settings, create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def wait(client: TestClient, job_id: str, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = client.get(f"/api/jobs/{job_id}").json()
        if state["status"] in ("done", "error"):
            return state
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still running after {timeout} s")


@pytest.fixture()
def ladder_client(tiny_ladder):
    """The real comparison, on the tiny test ladder standing in for the shipped models (fast)."""
    with TestClient(create_app(Settings())) as client:
        yield client


def test_info_lists_levels_codecs_and_limits(ladder_client):
    info = ladder_client.get("/api/info").json()
    assert [(lv["quality"], lv["name"]) for lv in info["levels"][:3]] == [(1, "pqmim-q1"), (2, "pqmim-q2"), (3, "pqmim-q3")]
    assert info["levels"][0]["kodak_bpp"] == 0.5  # the tiny ladder's card
    assert [lv["name"] for lv in info["levels"] if lv["default"]] == ["pqmim-q3"]
    assert {"id": "jpeg420", "label": "JPEG 4:2:0"} in info["codecs"]
    assert info["max_pixels"] and info["lpips_note"] and "--lpips-weights" in info["lpips_note"]
    page = ladder_client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text


def test_a_job_reports_what_its_files_measure(ladder_client, tiny_ladder):
    rgb = photo_crop(300, 100, 160, 96)
    r = ladder_client.post("/api/jobs?codec=jpeg420&quality=2", content=png_bytes(rgb), headers={"X-Filename": "my%20photo.png"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    state = wait(ladder_client, job_id)
    assert state["status"] == "done", state
    pq, jp = state["result"]["rows"]
    assert (state["result"]["width"], state["result"]["height"]) == (160, 96)
    # the .pqm served is the Codec's file for the same pixels, byte for byte, and the bytes shown are its length
    data = ladder_client.get(f"/api/jobs/{job_id}/files/{pq['file']}").content
    codec = shipped_codec("pqmim-q2")
    assert data == codec.compress(rgb) and pq["bytes"] == len(data) and pq["setting"] == "pqmim-q2"
    decoded = np.asarray(Image.open(io.BytesIO(ladder_client.get(f"/api/jobs/{job_id}/files/{pq['image']}").content)))
    assert np.array_equal(decoded, np.asarray(codec.decompress(data)))
    assert pq["psnr"] == pytest.approx(psnr_uint8(rgb, decoded)) and pq["bpp"] == pytest.approx(len(data) * 8 / (160 * 96))
    # the classical file is the best JPEG within pqmim's size, and its PSNR is that file's
    jpeg = ladder_client.get(f"/api/jobs/{job_id}/files/{jp['file']}").content
    quality, expected = classical.encode_at_size("jpeg420", rgb, len(data))
    assert jpeg == expected and jp["bytes"] == len(jpeg) and jp["setting"] == f"q={quality}"
    assert jp["over_budget"] == (len(jpeg) > len(data)) and jp["psnr"] == pytest.approx(psnr_uint8(rgb, classical.decode(jpeg)))
    assert pq["lpips"] is None and jp["lpips"] is None and "--lpips-weights" in state["result"]["lpips_note"]
    # downloads: named after the upload, as attachments
    got = ladder_client.get(f"/api/jobs/{job_id}/files/{pq['file']}?download={pq['download']}")
    assert pq["download"] == "my_photo.pqm" and 'filename="my_photo.pqm"' in got.headers["content-disposition"]
    assert ladder_client.get(f"/api/jobs/{job_id}/files/../../etc/passwd").status_code == 404
    assert ladder_client.get(f"/api/jobs/{job_id}/files/nothing.png").status_code == 404


def test_target_size_mode_never_goes_over(ladder_client):
    from pqmim.sizing import best_within

    rgb = photo_crop(0, 0, 128, 128)
    budget = len(shipped_codec("pqmim-q2").compress(rgb)) + 10
    state = wait(ladder_client, ladder_client.post(f"/api/jobs?codec=webp&max_bytes={budget}", content=png_bytes(rgb)).json()["id"])
    pq = state["result"]["rows"][0]
    best = best_within(rgb, budget)
    assert pq["bytes"] == len(best.data) <= budget and pq["setting"].startswith(best.name)
    state = wait(ladder_client, ladder_client.post("/api/jobs?codec=webp&max_bytes=20", content=png_bytes(rgb)).json()["id"])
    assert state["status"] == "error" and "too small for this image" in state["error"]


@pytest.mark.parametrize(
    "query, body, status, says",
    [
        ("codec=webp&quality=3", b"not an image at all", 400, "is not an image"),
        ("codec=webp&quality=3", b"", 400, "empty"),
        ("codec=webp&quality=3", png_bytes(photo_crop(0, 0, 64, 64))[:200], 400, "cannot be read"),
        ("codec=webp&quality=3", png_bytes(np.dstack([photo_crop(0, 0, 64, 64), np.full((64, 64), 7, np.uint8)])), 400, "transparency"),
        ("codec=webp&quality=3", png_bytes(photo_crop(0, 0, 200, 150)), 400, "at most 10,000"),
        ("codec=webp&quality=3", b"x" * 5000, 413, "larger than"),
        ("codec=bmp&quality=3", png_bytes(photo_crop(0, 0, 64, 64)), 400, "codec"),
        ("codec=webp&quality=9", png_bytes(photo_crop(0, 0, 64, 64)), 400, "no quality level"),
        ("codec=webp&quality=3&max_bytes=100", png_bytes(photo_crop(0, 0, 64, 64)), 400, "not both"),
        ("codec=webp&max_bytes=-5", png_bytes(photo_crop(0, 0, 64, 64)), 400, "whole number"),
    ],
)
def test_bad_uploads_get_a_clear_error(tiny_ladder, query, body, status, says):
    with TestClient(create_app(Settings(max_upload_bytes=4096 if status == 413 else 1 << 20, max_pixels=10_000))) as client:
        r = client.post(f"/api/jobs?{query}", content=body, headers={"X-Filename": "upload.png"})
        assert r.status_code == status and says in r.json()["error"] and "Traceback" not in r.text
        assert not client.app.state.worker.jobs  # nothing was started


def test_one_job_at_a_time_and_errors_are_one_line(tmp_path):
    gate = threading.Event()

    def run(job, rgb):
        gate.wait(10)
        if rgb[0, 0, 0] == 1:
            raise RuntimeError("a bug with internals in it")
        if rgb[0, 0, 0] == 2:
            raise ValueError("a clear reason")
        (job.folder / "x.png").write_bytes(b"made")
        job.files["x.png"] = "x.png"

    image = lambda v: png_bytes(np.full((8, 8, 3), v, np.uint8))  # noqa: E731
    with TestClient(create_app(Settings(), run=run)) as client:
        scratch = client.app.state.scratch
        first = client.post("/api/jobs?codec=jpeg420&quality=1", content=image(0))
        assert first.status_code == 202
        busy = client.post("/api/jobs?codec=jpeg420&quality=1", content=image(0))
        assert busy.status_code == 409 and "busy" in busy.json()["error"]
        gate.set()
        assert wait(client, first.json()["id"])["status"] == "done"
        assert (scratch / first.json()["id"] / "x.png").read_bytes() == b"made"
        for value, says in ((1, "internal error (RuntimeError)"), (2, "a clear reason")):
            state = wait(client, client.post("/api/jobs?codec=jpeg420&quality=1", content=image(value)).json()["id"])
            assert state["status"] == "error" and state["error"].startswith(says) and "internals" not in state["error"]
        ids = [
            wait(client, client.post("/api/jobs?codec=jpeg420&quality=1", content=image(0)).json()["id"])["id"]
            for _ in range(jobs.KEEP_JOBS)
        ]
        # only the last KEEP_JOBS jobs keep their folders, all inside the scratch folder
        assert sorted(p.name for p in scratch.iterdir()) == sorted(ids)
        assert client.get(f"/api/jobs/{first.json()['id']}").status_code == 404
    assert not scratch.exists()  # the server's scratch folder goes when it stops


def test_cli_serve_defaults_to_loopback_and_needs_real_weights(capsys):
    from pqmim.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.lpips_weights) == ("127.0.0.1", 8000, None)
    assert main(["serve", "--lpips-weights", "/no/such/file.pth"]) == 1
    assert "no such file" in capsys.readouterr().err


# -- in a real browser


def free_port_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


def browser_or_skip():
    """Playwright's sync API, or a skip saying what is missing (a failure where CI sets
    PQMIM_REQUIRE_BROWSER, so the browser test cannot silently stop running there)."""
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, missing = None, "needs Playwright (pip install playwright)"
    else:
        missing = None if CHROMIUM else "needs Debian's chromium (apt-get install chromium); .ci/run installs it"
    if missing:
        (pytest.fail if os.environ.get("PQMIM_REQUIRE_BROWSER") else pytest.skip)(missing)
    return sync_api


def test_the_page_in_a_real_browser(tmp_path):
    playwright = browser_or_skip()
    rgb = photo_crop(128, 64, 512, 384)  # a Kodak crop (kodim23, shipped in examples/)
    upload = tmp_path / "kodim23_crop.png"
    upload.write_bytes(png_bytes(rgb))
    (tmp_path / "notes.png").write_bytes(b"these are my notes, not a picture")
    lpips = LPIPS_BACKBONE if LPIPS_BACKBONE.is_file() else None
    app = create_app(Settings(lpips_weights=lpips))
    server, thread, port = free_port_server(app)
    try:
        with playwright.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 720}, accept_downloads=True)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#quality option", state="attached")
            assert page.eval_on_selector("#quality", "s => s.value") == "3"  # the default model is preselected
            page.select_option("#codec", "webp")
            page.set_input_files("#file", str(upload))
            page.wait_for_selector("#results:not([hidden])", timeout=120_000)
            assert page.is_hidden("#error")

            def shown(codec: str, field: str) -> tuple[str, str]:
                cell = page.locator(f'#rows tr[data-codec="{codec}"] td[data-field="{field}"]')
                return cell.inner_text(), cell.get_attribute("data-value")

            # the numbers on the page are the Codec's, for the same pixels
            codec = shipped_codec()
            data = codec.compress(rgb)
            decoded = np.asarray(codec.decompress(data))
            text, value = shown("pqmim", "bytes")
            assert text == f"{len(data):,}" and int(value) == len(data)
            assert shown("pqmim", "psnr")[0] == f"{psnr_uint8(rgb, decoded):.2f}"
            assert shown("pqmim", "bpp")[0] == f"{len(data) * 8 / rgb[..., 0].size:.4f}"
            _, webp = classical.encode_at_size("webp", rgb, len(data))
            assert (
                int(shown("webp", "bytes")[1]) == len(webp) and shown("webp", "psnr")[0] == f"{psnr_uint8(rgb, classical.decode(webp)):.2f}"
            )
            if lpips:
                from pqmim.evaluate import LPIPSAlex

                assert shown("pqmim", "lpips")[0] == f"{LPIPSAlex(lpips)(rgb, decoded):.4f}"
            else:
                assert shown("pqmim", "lpips")[0] == "n/a"
            # the .pqm download is that file
            with page.expect_download() as dl:
                page.click("#dl-pqm")
            assert dl.value.suggested_filename == "kodim23_crop.pqm" and Path(dl.value.path()).read_bytes() == data
            # both images are drawn (decoded by the browser), at the split
            page.wait_for_function(
                "document.getElementById('img-left').complete && document.getElementById('img-left').naturalWidth === 512"
            )
            page.wait_for_function(
                "document.getElementById('img-right').complete && document.getElementById('img-right').naturalWidth === 512"
            )
            page.fill("#split", "40")
            page.dispatch_event("#split", "input")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot))
            if os.environ.get("PQMIM_SCREENSHOT"):  # how README's picture is made
                shutil.copy(shot, os.environ["PQMIM_SCREENSHOT"])
            assert Image.open(shot).size == (1280, 720)

            # a file that is not an image: a clear line on the page, no stack trace
            page.set_input_files("#file", str(tmp_path / "notes.png"))
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            message = page.inner_text("#error")
            assert "notes.png is not an image" in message and "Traceback" not in page.content()
            browser.close()
    finally:
        server.should_exit = True
        thread.join(30)
    assert not app.state.scratch.exists()


def test_cli_serve_without_the_web_extra_says_how_to_get_it(monkeypatch, capsys):
    import sys

    from pqmim.cli import main

    monkeypatch.delitem(sys.modules, "pqmim.web.app", raising=False)
    monkeypatch.setitem(sys.modules, "starlette.applications", None)  # as if Starlette were not installed
    assert main(["serve"]) == 1
    assert 'pip install "pqmim[web]"' in capsys.readouterr().err
