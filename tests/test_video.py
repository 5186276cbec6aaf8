"""musetalk.video: probing, 25 fps resampling, rotation, errors, streaming, mp4 writing."""

from __future__ import annotations

import gc
import inspect
import math
import os
import threading
import weakref
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import synth

from musetalk.audio import load_audio
from musetalk.errors import (
    CorruptMedia,
    EmptyFile,
    MediaError,
    MissingMedia,
    NotAMediaFile,
    NoVideoStream,
    TruncatedMedia,
)
from musetalk.video import VideoReader, VideoWriter, iter_frames, probe, set_decode_threads

VFR_PTS_MS = [0, 40, 50, 130, 200, 210, 220, 400, 410, 600]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video_media")


# ---------------------------------------------------------------- real data


def test_probe_real_files(shared_data: Path) -> None:
    info = probe(shared_data / "talking_demo1.mp4")
    assert (info.width, info.height, info.rotation) == (1080, 1920, 0)
    assert (info.codec, info.has_audio, info.num_frames) == ("hevc", True, 250)
    assert info.duration == pytest.approx(10.0) and info.fps == pytest.approx(25.0)
    assert not info.is_vfr

    info = probe(shared_data / "yongen_video_only.mp4")
    assert (info.width, info.height, info.codec) == (704, 1216, "h264")
    assert (info.has_audio, info.num_frames, info.source_frames) == (False, 268, 268)


def test_real_hevc_decodes_every_frame_unchanged(shared_data: Path) -> None:
    """A 25 fps source maps 1:1: every frame equals PyAV's own decode of that frame."""
    path = shared_data / "talking_demo1.mp4"
    with av.open(str(path)) as container:
        decoded = container.decode(video=0)
        raw = [next(decoded).to_ndarray(format="rgb24") for _ in range(3)]
    seen = []
    for i, frame in iter_frames(path):
        assert frame.shape == (1920, 1080, 3) and frame.dtype == np.uint8
        if i < 3:
            np.testing.assert_array_equal(frame, raw[i])
        seen.append(i)
    assert seen == list(range(250))


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize(("fps", "n"), [(30, 40), (60, 100), (10, 13), (25, 30)])
def test_constant_rate_resampled_to_25_by_nearest_previous(media: Path, fps: int, n: int) -> None:
    path = synth.write_video(media / f"cfr{fps}.mp4", n_frames=n, fps=fps)
    info = probe(path)
    assert info.fps == pytest.approx(fps) and info.duration == pytest.approx(n / fps)
    expected_count = math.floor(n / fps * 25)
    assert info.num_frames == expected_count
    got = [(i, synth.read_index(f)) for i, f in iter_frames(path)]
    # output i shows time i/25: the latest source frame k with k/fps <= i/25
    assert got == [(i, i * fps // 25) for i in range(expected_count)]


def test_variable_frame_rate_follows_timestamps(media: Path) -> None:
    path = synth.write_video(media / "vfr.mp4", pts_ms=VFR_PTS_MS, fps=30)
    info = probe(path)
    assert info.is_vfr
    assert info.num_frames == math.floor((600 + 1000 / 30) / 40)  # last frame lasts 1/30 s
    got = [synth.read_index(f) for _, f in iter_frames(path)]
    expected = [max(k for k, t in enumerate(VFR_PTS_MS) if t <= 40 * i) for i in range(15)]
    assert got == expected
    assert got[:8] == [0, 1, 2, 2, 3, 4, 6, 6]  # drops 5 (210 ms), repeats 6 (220 ms)
    assert not probe(synth.write_video(media / "cfr_check.mp4", 10, 30)).is_vfr


def test_video_start_offset_is_time_zero(media: Path) -> None:
    """Frame 0 is the first frame even when the video stream starts at 0.32 s."""
    path = synth.write_video(media / "late.mkv", n_frames=25, fps=25, video_start=0.32)
    got = [synth.read_index(f) for _, f in iter_frames(path)]
    assert got == list(range(25))


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize(("rotation", "corner"), [(0, "tl"), (90, "bl"), (-90, "tr"), (180, "br")])
def test_rotation_metadata_applied(media: Path, rotation: int, corner: str) -> None:
    """Stored 64x48 frames with a display matrix come out as displayed (FFmpeg autorotate)."""
    path = synth.write_video(media / f"rot{rotation}.mp4", n_frames=5, fps=25, rotation=rotation)
    info = probe(path)
    portrait = rotation in (90, -90)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((48, 64) if portrait else (64, 48))
    for i, frame in iter_frames(path):
        assert frame.shape == (info.height, info.width, 3)
        assert frame.flags.c_contiguous
        assert synth.marker_corner(frame) == corner
        upright = np.rot90(frame, -rotation // 90)
        assert synth.read_index(upright) == i


def test_phone_style_landscape_storage_comes_out_portrait(media: Path) -> None:
    """1920x1080-like storage with rotation -90 (a phone held upright) -> portrait output."""
    path = synth.write_video(media / "phone.mp4", n_frames=3, fps=30, size=(96, 54), rotation=-90)
    _, frame = next(iter_frames(path))
    assert frame.shape == (96, 54, 3)  # (H, W): taller than wide


# ---------------------------------------------------------------- ranges


@pytest.fixture(scope="module")
def gop_video(media: Path) -> Path:
    """12 s at 30 fps with a keyframe every 30 frames, so ranges exercise seeking."""
    return synth.write_video(media / "gop.mp4", n_frames=360, fps=30, gop=30)


def test_range_and_step_match_full_decode(gop_video: Path) -> None:
    reader = VideoReader(gop_video)
    assert len(reader) == 300
    full = dict(reader.frames())
    for start, end, step in [(100, 130, 3), (0, 10, 1), (283, None, 4), (299, 300, 1)]:
        part = list(reader.frames(start, end, step))
        stop = 300 if end is None else end
        assert [i for i, _ in part] == list(range(start, stop, step))
        for i, frame in part:
            np.testing.assert_array_equal(frame, full[i])
            assert synth.read_index(frame) == i * 30 // 25


def test_range_arguments_validated(gop_video: Path) -> None:
    reader = VideoReader(gop_video)
    with pytest.raises(ValueError, match="range"):
        reader.frames(-1)
    with pytest.raises(ValueError, match="range"):
        reader.frames(0, 10, 0)
    assert list(reader.frames(400, 500)) == []


# ---------------------------------------------------------------- streaming


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_reader_streams_with_bounded_memory(media: Path) -> None:
    """400 frames of 320x240 (92 MB as RGB) decode without the reader keeping them alive."""
    path = synth.write_video(media / "long.mp4", n_frames=400, fps=25, size=(320, 240))
    frames = iter_frames(path)
    assert inspect.isgenerator(frames)
    gc.collect()
    rss_before = _rss_bytes()
    refs, peak, alive = [], 0, 0
    for i, frame in frames:
        assert frame.shape == (240, 320, 3)
        refs.append(weakref.ref(frame))
        del frame
        if i % 50 == 49:  # measured mid-stream, while the reader is still open
            gc.collect()
            alive = max(alive, sum(r() is not None for r in refs))
            peak = max(peak, _rss_bytes() - rss_before)
    assert len(refs) == 400
    assert alive <= 2, f"the reader keeps {alive} yielded frames alive"
    assert peak < 30e6, f"RSS grew by {peak / 1e6:.0f} MB while decoding"


# ---------------------------------------------------------------- errors


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty.mp4") as e:
        probe(path)
    assert e.value.reason == "zero_bytes"


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(NotAMediaFile, match="notes.mp4") as e:
        iter_frames(path)
    assert e.value.reason == "not_a_video"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingMedia, match="nope.mp4") as e:
        probe(tmp_path / "nope.mp4")
    assert e.value.reason == "missing"


@pytest.mark.parametrize("image", [".jpg", ".png"])
def test_still_image_named_like_a_video_is_not_a_video(tmp_path: Path, image: str) -> None:
    """JPEG/PNG bytes in a .mp4 are a picture, not a one-frame video (a preprocessing skip
    reason `not_a_video`, not `too_short`)."""
    path = tmp_path / "photo.mp4"
    ok, data = cv2.imencode(image, np.full((64, 64, 3), 128, np.uint8))
    path.write_bytes(data.tobytes())
    with pytest.raises(NotAMediaFile, match="still image") as e:
        probe(path)
    assert e.value.reason == "not_a_video"


@pytest.mark.parametrize(
    ("name", "cover_art"),
    [("tone.m4a", False), ("tone.wav", False), ("tone.mp3", False), ("cover.mp3", True)],
)
def test_audio_only_file_has_no_video(tmp_path: Path, name: str, cover_art: bool) -> None:
    """Audio files, including music with a cover picture (a one-image "video" stream)."""
    path = synth.write_audio(tmp_path / name, synth.tone_burst(1.0, 0.5), cover_art=cover_art)
    with pytest.raises(NoVideoStream, match="expected a video stream") as e:
        probe(path)
    assert e.value.reason == "audio_only" and name in str(e.value)


@pytest.mark.parametrize("faststart", [False, True], ids=["moov_at_end", "moov_first"])
def test_truncated_mp4_detected_at_open(media: Path, tmp_path: Path, faststart: bool) -> None:
    src = synth.write_video(media / f"full_{faststart}.mp4", 100, 25, faststart=faststart)
    cut = synth.truncate(src, tmp_path / "cut.mp4", 0.5)
    with pytest.raises(TruncatedMedia, match="cut.mp4") as e:
        probe(cut)
    assert e.value.reason == "truncated"
    with pytest.raises(TruncatedMedia):
        load_audio(cut)
    assert probe(src).num_frames == 100  # the uncut file is fine


def test_truncated_mkv_yields_frames_then_raises(media: Path, tmp_path: Path) -> None:
    """Matroska has no box sizes: the decoded end is compared with the stored duration."""
    src = synth.write_video(media / "full.mkv", 250, 25, size=(128, 96))
    cut = synth.truncate(src, tmp_path / "cut.mkv", 0.5)
    assert probe(cut).num_frames == 250  # the header still claims 10 s
    got = []
    with pytest.raises(TruncatedMedia, match="decodes to"):
        for i, frame in iter_frames(cut):
            got.append((i, synth.read_index(frame)))
    assert 50 < len(got) < 200
    assert got == [(i, i) for i in range(len(got))]


def test_corrupt_mp4_header(media: Path, tmp_path: Path) -> None:
    src = synth.write_video(media / "to_garble.mp4", 30, 25).read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "garbled.mp4"
    path.write_bytes(src[:24] + rng.bytes(len(src) - 24))
    with pytest.raises(CorruptMedia, match="garbled.mp4") as e:
        probe(path)
    assert e.value.reason == "corrupt"


def test_no_raw_av_error_escapes(tmp_path: Path) -> None:
    path = tmp_path / "random.mkv"
    path.write_bytes(np.random.default_rng(1).bytes(4000))
    with pytest.raises(MediaError):
        list(iter_frames(path))


# ---------------------------------------------------------------- writing


def textured_frames(n: int, width: int, height: int) -> list[np.ndarray]:
    """Pattern frames with a smooth moving texture added (a less trivial encode)."""
    y, x = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        texture = 20 * np.sin(x / 7.0 + i / 5.0) * np.cos(y / 9.0)
        frame = synth.pattern_frame(i, width, height).astype(np.float64) + texture[..., None]
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def test_writer_round_trip_frames_and_audio(tmp_path: Path) -> None:
    frames = textured_frames(50, 128, 96)
    audio = synth.tone_burst(2.0, 0.7)  # burst at frame 17.5
    path = tmp_path / "out.mp4"
    with VideoWriter(path, fps=25, audio=audio) as writer:
        for frame in frames:
            writer.write(frame)
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.has_audio) == (128, 96, 50, True)
    assert info.duration == pytest.approx(2.0)
    back = [f for _, f in iter_frames(path)]
    assert [synth.read_index(f) for f in back] == list(range(50))
    assert min(psnr(a, b) for a, b in zip(frames, back, strict=True)) > 35
    decoded = load_audio(path)
    assert len(audio) <= len(decoded) <= len(audio) + 1024  # AAC pads its last frame
    assert abs(synth.onset(decoded) - synth.onset(audio)) <= 16  # 1 ms
    assert not list(tmp_path.glob(".*.part"))


def test_writer_pads_odd_sizes(tmp_path: Path) -> None:
    y, x = np.mgrid[0:47, 0:63]
    smooth = 128 + 60 * np.sin(x / 6.0) * np.cos(y / 8.0) + 30 * (x == 62)  # bright last column
    frames = [np.repeat(smooth[..., None], 3, axis=2).astype(np.uint8)] * 5
    path = tmp_path / "odd.mp4"
    with VideoWriter(path) as writer:
        for frame in frames:
            writer.write(frame)
    back = [f for _, f in iter_frames(path)]
    assert back[0].shape == (48, 64, 3)
    assert min(psnr(a, b[:47, :63]) for a, b in zip(frames, back, strict=True)) > 35
    # the added column/row replicate the edge
    assert np.abs(back[0][:47, 63].astype(int) - frames[0][:, 62]).mean() < 4
    assert np.abs(back[0][47, :63].astype(int) - frames[0][46, :]).mean() < 4


def test_writer_rejects_bad_frames_and_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "bad.mp4"
    with pytest.raises(ValueError, match="uint8"), VideoWriter(path) as writer:
        writer.write(np.zeros((48, 64, 3), np.float32))
    with pytest.raises(ValueError, match="differs"), VideoWriter(path) as writer:
        writer.write(np.zeros((48, 64, 3), np.uint8))
        writer.write(np.zeros((48, 66, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file
    with pytest.raises(ValueError, match="no frames"), VideoWriter(path):
        pass
    with pytest.raises(ValueError, match="mono"):
        VideoWriter(path, audio=np.zeros((100, 2), np.float32))


def test_decode_threads_give_the_same_frames(shared_data):
    """One FFmpeg thread (a worker among others) or FFmpeg's choice: the same pixels."""
    path = shared_data / "talking_demo1.mp4"  # HEVC 1080x1920: frame and slice threading
    frames = {}
    try:
        for threads in (1, 2, 0):
            set_decode_threads(threads)
            frames[threads] = np.stack([f for _, f in VideoReader(path).frames(0, 12)])
    finally:
        set_decode_threads(0)
    assert frames[1].shape == (12, 1920, 1080, 3)
    assert np.array_equal(frames[1], frames[0]) and np.array_equal(frames[2], frames[0])
    with pytest.raises(ValueError, match="threads"):
        set_decode_threads(-1)


def test_prefetch_gives_the_same_frames_and_forwards_errors(tmp_path):
    path = synth.write_video(tmp_path / "a.mp4", n_frames=40, fps=25)
    plain = [(i, synth.read_index(f)) for i, f in VideoReader(path).frames()]
    ahead = [(i, synth.read_index(f)) for i, f in VideoReader(path).frames(prefetch=3)]
    assert ahead == plain and len(plain) == 40
    # an early stop closes the producer (no thread left behind)
    frames = VideoReader(path).frames(prefetch=2)
    next(frames)
    frames.close()
    assert not any(t.name == "musetalk-decode" for t in threading.enumerate())
    broken = synth.truncate(synth.write_video(tmp_path / "b.mkv", n_frames=60), tmp_path / "c.mkv")
    with pytest.raises(TruncatedMedia):
        for _ in VideoReader(broken).frames(prefetch=2):
            pass
