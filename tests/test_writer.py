"""VideoWriter's speed-ups keep the output: frames handed to FFmpeg without a copy, encoding in
its own thread (same decoded frames, errors raised in the caller, no partial file, no thread
left), and the H.264 encoder choice (NVENC only when it opens, libx264 otherwise)."""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from musetalk.video import VideoWriter, iter_frames
from musetalk.video.writer import nvenc_problem, select_encoder


def textured(n: int, width: int = 160, height: int = 96) -> list[np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = 128 + 60 * np.sin(x / 7.0 + i / 3.0) * np.cos(y / 9.0 - i / 5.0)
        noise = rng.normal(0, 6, (height, width, 3))
        out.append(np.clip(base[..., None] + noise, 0, 255).astype(np.uint8))
    return out


def reference_encode(path: Path, frames: list[np.ndarray]) -> None:
    """The straightforward PyAV encode the writer replaced: a copied rgb24 frame per write,
    converted to yuv420p by the encoder. Lossless (crf 0): libx264's bitstream is not
    reproducible from run to run (measured: same frames, several file sizes), but its lossless
    decode is exactly the yuv420p frames it was given, so equal decodes = equal encoder input."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264", rate=25, options={"crf": "0", "preset": "veryfast"}
        )
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 25)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))


def decoded(path: Path) -> list[np.ndarray]:
    return [f for _, f in iter_frames(path)]


def encoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "musetalk-encode"]


def test_zero_copy_and_threaded_writers_decode_to_the_reference_frames(tmp_path):
    frames = textured(30)
    reference_encode(tmp_path / "reference.mp4", frames)
    expected = decoded(tmp_path / "reference.mp4")
    read_only = [f.copy() for f in frames]
    for f in read_only:
        f.flags.writeable = False  # as the avatar's (memory-mapped) frames are
    for name, queue_size, source in (("direct", 0, frames), ("threaded", 3, read_only)):
        path = tmp_path / f"{name}.mp4"
        with VideoWriter(path, fps=25, crf=0, queue_size=queue_size) as writer:
            for frame in source:
                writer.write(frame)
        assert writer.num_frames == 30
        back = decoded(path)
        assert len(back) == len(expected) == 30
        for a, b in zip(back, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not encoder_threads()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "direct.mp4",
        "reference.mp4",
        "threaded.mp4",
    ]


def test_threaded_writer_raises_encoder_errors_and_leaves_no_file(tmp_path):
    path = tmp_path / "bad.mp4"
    # a preset libx264 does not know: the encoder fails to open in the encoder thread
    with (
        pytest.raises(av.error.FFmpegError),
        VideoWriter(path, preset="no-such-preset", queue_size=2) as writer,
    ):
        for frame in textured(40):
            writer.write(frame)
    assert list(tmp_path.iterdir()) == []
    assert not encoder_threads()
    # the error also surfaces from close() when every frame fit in the queue
    writer = VideoWriter(path, preset="no-such-preset", queue_size=8)
    writer.write(textured(1)[0])
    with pytest.raises(av.error.FFmpegError):
        writer.close()
    assert list(tmp_path.iterdir()) == []
    assert not encoder_threads()


def test_threaded_writer_removes_its_file_when_the_caller_fails(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model failed"), VideoWriter(path, queue_size=2) as w:
        for k, frame in enumerate(textured(20)):
            w.write(frame)
            if k == 12:
                raise RuntimeError("model failed")
    assert list(tmp_path.iterdir()) == []
    assert not encoder_threads()
    with pytest.raises(ValueError, match="differs"), VideoWriter(path, queue_size=2) as w:
        w.write(np.zeros((48, 64, 3), np.uint8))
        w.write(np.zeros((48, 66, 3), np.uint8))  # checked in the caller's thread
    assert list(tmp_path.iterdir()) == []
    assert not encoder_threads()


def test_encoder_selection_falls_back_to_libx264(tmp_path):
    assert select_encoder("libx264") == "libx264"
    assert select_encoder("auto", cuda=False) == "libx264"
    assert nvenc_problem(cuda=False) == "no CUDA device"
    problem = nvenc_problem(cuda=True)  # really tries to open h264_nvenc
    if problem is None:
        pytest.skip("h264_nvenc opens on this machine")
    assert select_encoder("auto", cuda=True) == "libx264"
    with pytest.raises(ValueError, match="encoder=h264_nvenc: not usable here"):
        select_encoder("h264_nvenc", cuda=True)
    with pytest.raises(ValueError, match="encoder=x265: expected one of auto, libx264"):
        select_encoder("x265")
    with VideoWriter(tmp_path / "a.mp4", encoder="auto") as writer:
        writer.write(textured(1)[0])
    assert writer.encoder == select_encoder("auto")
    with av.open(str(tmp_path / "a.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "h264"
