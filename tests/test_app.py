"""The web app as its users meet it: `python app.py infer_model=tiny` on a free port of 127.0.0.1,
driven by headless Chromium (Debian's package, through Playwright with the system browser) and by
`gradio_client` calling `/preview` and `/generate` directly."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

from musetalk.audio import load_audio, write_wav
from musetalk.video import VideoReader, VideoWriter

pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CHROMIUM = Path("/usr/bin/chromium")
# Chromium as root in a container, without its calls home (they fail offline and slow it down).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_UPLOAD_MB = 2  # the test server's upload limit (the media here are far smaller)
CLIP_FRAMES = 20  # 0.8 s of yongen_video_only.mp4 (704 x 1216)
AUDIO_SECONDS = (0.84, 0.6)  # -> 21 and 15 output frames at 25 fps

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A short clip, two short audios and bad uploads, made from ../shared/data."""
    root = tmp_path_factory.mktemp("app_media")
    clip = root / "clip.mp4"
    reader = VideoReader(DATA / "yongen_video_only.mp4")
    with VideoWriter(clip, fps=25) as writer:
        for _, frame in reader.frames(0, CLIP_FRAMES):
            writer.write(frame)
    speech = load_audio(DATA / "speech_en_16k.wav")
    files = {"clip": clip}
    for name, seconds, start in (("a", AUDIO_SECONDS[0], 0), ("b", AUDIO_SECONDS[1], 2)):
        files[name] = root / f"{name}.wav"
        write_wav(files[name], speech[start * 16000 : start * 16000 + round(seconds * 16000)])
    files["no_face"] = root / "wall.png"
    import cv2

    cv2.imwrite(str(files["no_face"]), np.full((240, 320, 3), 128, np.uint8))
    files["audio_only"] = root / "audio_only.mp4"
    shutil.copy(files["a"], files["audio_only"])
    files["not_media"] = root / "notes.mp4"
    files["not_media"].write_text("this is not a video\n")
    files["too_big"] = root / "too_big.mp4"
    files["too_big"].write_bytes(b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1))
    return files


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python app.py infer_model=tiny` on a free port of 127.0.0.1; its URL."""
    root = tmp_path_factory.mktemp("app_server")
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(root / "gradio"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "app.py", "infer_model=tiny", f"server_port={port}"]
    command += [f"workdir={root / 'work'}", f"max_file_size={MAX_UPLOAD_MB}mb"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer at {url}:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def check_video(path: Path, audio_seconds: float) -> None:
    """floor(audio seconds x 25) frames and an audio stream."""
    with av.open(str(path)) as container:
        assert container.streams.audio, "the result has no audio stream"
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == int(np.floor(audio_seconds * 25)), frames


def landmark_y(text: str) -> tuple[float, float, float]:
    found = re.search(r"landmark y 28/29/30: ([\d.]+) / ([\d.]+) / ([\d.]+)", text)
    assert found, text
    return tuple(float(v) for v in found.groups())


def shift_range(text: str) -> tuple[int, int]:
    found = re.search(r"Manually adjust range: \[(-?\d+) ~ (-?\d+)\]", text)
    assert found, text
    return int(found.group(1)), int(found.group(2))


def band_difference(a: np.ndarray, b: np.ndarray, rows: tuple[int, int]) -> float:
    """Mean absolute difference of two previews' rows [lo, hi) (the mouth band)."""
    assert a.shape == b.shape
    lo, hi = rows
    return float(np.abs(a[lo:hi].astype(int) - b[lo:hi].astype(int)).mean())


def mouth_rows(text: str, lo: int, hi: int, frame_height: int) -> tuple[int, int]:
    """Rows of the preview's left (whole-frame) image between the two boundaries."""
    from musetalk.app.preview import HEIGHT

    y29 = landmark_y(text)[1]
    scale = HEIGHT / frame_height
    return int((y29 + lo) * scale) - 4, int(np.ceil((y29 + hi) * scale)) + 5


def read_png(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


# -------------------------------------------------------------------------------------------
# gradio_client


def test_client_preview_and_generate(server, media, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import Status

    RUNNING = {Status.PROCESSING, Status.PROGRESS, Status.ITERATING}

    client = Client(server, verbose=False, download_files=str(tmp_path))
    assert {"/preview", "/generate", "/statistics"} <= set(
        client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    )
    clip = handle_file(str(media["clip"]))
    first = client.predict(clip, 0, 0, False, 10, "cpu", api_name="/preview")
    image, crop, text = first[0], first[1], first[2]
    lo, hi = shift_range(text)
    assert lo < 0 < hi and "bbox_shift=0 as given" in text
    assert "auto: bbox_shift=auto -> " in text
    assert first[4]["minimum"] == lo and first[4]["maximum"] == hi  # the slider's new bounds
    crop_pixels = read_png(Path(crop).read_bytes())
    assert crop_pixels.shape == (256, 256, 3)
    assert crop_pixels[128:].max() == 0 and crop_pixels[:128].std() > 5  # lower half masked
    moved = client.predict(clip, 0, hi, False, 10, "cpu", api_name="/preview")
    assert f"the current value: {hi}" in moved[2]
    a, b = read_png(Path(image).read_bytes()), read_png(Path(moved[0]).read_bytes())
    assert band_difference(a, b, mouth_rows(text, lo, hi, 1216)) > 0.5

    for bad, expected in (
        (media["no_face"], "no face"),
        (media["audio_only"], "video"),
        (media["not_media"], "not"),
    ):
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(bad)), 0, 0, False, 10, "cpu", api_name="/preview")
        message = str(info.value)
        assert expected in message.lower() and "Traceback" not in message, message

    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(
            handle_file(str(media["too_big"])), 0, 0, False, 10, "cpu", api_name="/preview"
        )

    # two generations at once on one device: the second waits in the queue until the first ends
    audio_a, audio_b = handle_file(str(media["a"])), handle_file(str(media["b"]))
    first_job = client.submit(clip, audio_a, 0, False, 10, "cpu", api_name="/generate")
    while first_job.status().code not in RUNNING and not first_job.done():
        time.sleep(0.05)
    second_job = client.submit(clip, audio_b, 0, False, 10, "cpu", api_name="/generate")
    while not first_job.done() and first_job.status().code != Status.FINISHED:
        assert second_job.status().code not in RUNNING, "two generations ran at once"
        time.sleep(0.05)
    out, again = first_job.result(timeout=300), second_job.result(timeout=300)
    check_video(Path(out[0]), AUDIO_SECONDS[0])
    assert out[1]["result"]["num_frames"] == int(AUDIO_SECONDS[0] * 25)
    assert out[1]["config"]["infer_model"]["layout"] == "tiny"
    # another audio on the same video: the prepared avatar comes from the avatar cache
    check_video(Path(again[0]), AUDIO_SECONDS[1])
    assert "reused from the avatar cache" in again[2], again[2]
    assert again[1]["config"]["avatar_cache"] == out[1]["config"]["avatar_cache"]


# -------------------------------------------------------------------------------------------
# A real browser


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def test_browser_preview_slider_and_generate(server, media, chromium, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[app]'")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_ARGS,  # Playwright gives every launch a fresh profile directory
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(60_000)
            sync_api.expect.set_options(timeout=60_000)  # its 5 s default: too short under load
            page.goto(server)
            page.get_by_text("MuseTalk lip-sync: choose bbox_shift").wait_for()
            assert page.locator("#tiny-note").get_by_text("random weights").is_visible()
            assert page.get_by_text("infer_model=tiny infer_model.seed=0").is_visible()
            page.locator("#video input[type=file]").set_input_files(str(media["clip"]))
            page.locator("#audio input[type=file]").set_input_files(str(media["a"]))
            page.locator("#video").get_by_text(".mp4", exact=True).wait_for()  # uploaded
            page.locator("#audio").get_by_text(".wav", exact=True).wait_for()

            page.get_by_role("button", name="1. Preview (test inpainting)").click()
            info = page.locator("#preview-info textarea")
            sync_api.expect(info).to_have_value(re.compile("Manually adjust range"))
            text = info.input_value()
            lo, hi = shift_range(text)
            first_src = _image_src(page, "#preview-image")
            page.screenshot(path=shots / "preview.png", full_page=True)
            first = read_png(page.request.get(first_src).body())

            # move the slider to the top of the range: the boundary moves, without re-tracking
            number = page.locator("#shift input[type=number]")
            number.fill(str(hi))
            number.press("Tab")  # blur = the slider's release event
            sync_api.expect(info).to_have_value(re.compile(f"the current value: {hi}\\b"))
            second_src = _image_src(page, "#preview-image", not_src=first_src)
            second = read_png(page.request.get(second_src).body())
            assert band_difference(first, second, mouth_rows(text, lo, hi, 1216)) > 0.5
            page.screenshot(path=shots / "preview-moved.png")  # the viewport: controls, preview

            auto = page.get_by_label("auto bbox_shift")
            auto.check()  # the training data's boundary (random weights: 0), then by hand again
            sync_api.expect(info).to_have_value(re.compile("current: bbox_shift=auto -> "))
            number.fill(str(hi))
            number.press("Tab")
            sync_api.expect(info).to_have_value(re.compile("current: bbox_shift=\\S+ as given"))
            assert not auto.is_checked()  # a value chosen by hand turns auto off

            page.get_by_role("button", name="2. Generate").click()
            video = page.locator("#result video")
            video.wait_for(timeout=180_000)
            src = video.get_attribute("src")
            result = tmp_path / "result.mp4"
            result.write_bytes(page.request.get(src).body())
            check_video(result, AUDIO_SECONDS[0])
            sync_api.expect(page.locator("#generation textarea")).to_have_value(
                re.compile(f"{int(AUDIO_SECONDS[0] * 25)} frames")
            )
            page.screenshot(path=shots / "generated.png", full_page=True)
            if os.environ.get("MUSETALK_APP_SCREENSHOT"):  # README picture: see docs/app.png
                _save_small(
                    shots / "preview-moved.png", Path(os.environ["MUSETALK_APP_SCREENSHOT"])
                )
        finally:
            browser.close()
    names = ("preview.png", "preview-moved.png", "generated.png")
    assert all((shots / n).stat().st_size > 10_000 for n in names)


def _image_src(page, selector: str, not_src: str | None = None) -> str:
    """The src of an image component once it shows one (other than `not_src`)."""
    img = page.locator(f"{selector} img")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if img.count():
            src = img.first.get_attribute("src")
            if src and src != not_src:
                return src
        time.sleep(0.2)
    raise AssertionError(f"{selector}: no new image")


def _save_small(source: Path, target: Path, width: int = 900) -> None:
    """A palette PNG of the screenshot, `width` px wide (small enough to commit)."""
    from PIL import Image

    with Image.open(source) as image:
        height = round(image.height * width / image.width)
        small = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)


# -------------------------------------------------------------------------------------------
# Statistics tab


def test_statistics_from_shards_and_from_stats_json_alone(both_videos_shards, tmp_path):
    from musetalk.app.statistics import statistics
    from musetalk.errors import InputNotFoundError

    full = statistics(both_videos_shards)  # the shards are read: per-frame values
    alone = tmp_path / "stats.json"
    shutil.copy(both_videos_shards / "stats.json", alone)
    summary = statistics(alone)  # only the summary: its shares, quantiles and source ranges
    for view in (full, summary):
        assert "(MuseTalk: 15% / 63% / 22%)" in view.text
        assert len(re.findall(r": range \[-?\d+ ~ -?\d+\], training boundary", view.text)) == 2
        bars = view.shares.axes[0].patches
        assert len(bars) == 6  # MuseTalk's three shares beside this dataset's
        assert [round(b.get_height()) for b in bars[:3]] == [15, 63, 22]
        assert len(view.ranges.axes[0].get_yticklabels()) == 2  # one row per source
        assert len(view.distribution.axes) == 2  # px and nose lengths
    shares_full = [b.get_height() for b in full.shares.axes[0].patches[3:]]
    shares_alone = [b.get_height() for b in summary.shares.axes[0].patches[3:]]
    assert np.allclose(shares_full, shares_alone, atol=0.05)  # stats.json rounds to 4 digits
    with pytest.raises(InputNotFoundError):
        statistics(tmp_path / "missing")


# -------------------------------------------------------------------------------------------
# Housekeeping


def test_old_outputs_and_avatars_are_deleted(tmp_path):
    from musetalk.app.backend import AppBackend
    from musetalk.app.settings import AppConfig
    from musetalk.config import parse

    config = parse(AppConfig, {"infer_model": {"layout": "tiny"}, "keep_outputs": 2})
    backend = AppBackend(config, tmp_path)
    for parent, count in ((backend.outputs, 4), (backend.avatars, config.keep_avatars + 1)):
        for i in range(count):
            entry = parent / f"entry-{i}"
            entry.mkdir(parents=True)
            (entry / "file").write_text("x")
            os.utime(entry, (1_000_000 + i, 1_000_000 + i))
    backend.prune()
    assert sorted(p.name for p in backend.outputs.iterdir()) == ["entry-2", "entry-3"]
    kept = sorted(p.name for p in backend.avatars.iterdir())
    assert kept == [f"entry-{i}" for i in range(1, config.keep_avatars + 1)]


def test_without_gradio_the_message_names_the_extra(monkeypatch):
    from musetalk.app import require_gradio
    from musetalk.errors import ConfigError

    monkeypatch.setitem(sys.modules, "gradio", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[app\]'"):
        require_gradio()
