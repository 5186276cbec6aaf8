"""musetalk.audio.io: 16 kHz mono loading aligned to video time (whole or streamed), frame
windows, wav writing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import synth

from musetalk.audio import (
    SAMPLE_RATE,
    AudioStream,
    audio_for_frames,
    iter_audio,
    load_audio,
    write_wav,
)
from musetalk.errors import EmptyFile, NoAudioStream, NotAMediaFile

# ---------------------------------------------------------------- real data


def test_16k_mono_wav_is_passed_through(shared_data: Path) -> None:
    path = shared_data / "speech_en_16k.wav"
    audio = load_audio(path)
    ref, sr = sf.read(str(path), dtype="float32")
    assert sr == SAMPLE_RATE and audio.dtype == np.float32 and audio.shape == (960000,)
    np.testing.assert_allclose(audio, ref, atol=1e-6)


def test_48k_stereo_wav_resampled_and_averaged(shared_data: Path) -> None:
    path = shared_data / "yongen.wav"
    audio = load_audio(path)
    ref, sr = sf.read(str(path), dtype="float32")
    assert sr == 48000 and ref.shape[1] == 2
    assert audio.shape == (len(ref) // 3,)  # 8 s: 384000 -> 128000 samples
    mono = ref.mean(axis=1)
    # compare with a crude decimation of the channel mean (energy and waveform)
    decimated = mono.reshape(-1, 3).mean(axis=1)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(np.sqrt(np.mean(decimated**2)), rel=0.03)
    assert np.corrcoef(audio, decimated)[0, 1] > 0.98


def test_aac_in_mp4(shared_data: Path) -> None:
    audio = load_audio(shared_data / "talking_demo1.mp4")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 10.008 * SAMPLE_RATE) < 1024 * SAMPLE_RATE / 44100
    assert np.abs(audio).max() <= 1.0 and np.sqrt(np.mean(audio**2)) > 0.01


def test_video_without_audio(shared_data: Path) -> None:
    with pytest.raises(NoAudioStream, match="yongen_video_only.mp4") as e:
        load_audio(shared_data / "yongen_video_only.mp4")
    assert e.value.reason == "no_audio"


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize(
    ("video_start", "audio_start"), [(0.0, 0.0), (0.0, 0.5), (0.32, 0.0)], ids=str
)
def test_audio_aligned_to_video_start(
    tmp_path: Path, suffix: str, video_start: float, audio_start: float
) -> None:
    """A burst at 0.7 s of the audio track sits at 0.7 + audio_start - video_start s."""
    burst = synth.tone_burst(2.0, 0.7)
    path = synth.write_video(
        tmp_path / f"av{suffix}",
        n_frames=50,
        fps=25,
        audio=burst,
        audio_start=audio_start,
        video_start=video_start,
    )
    audio = load_audio(path)
    expected = round((0.7 + audio_start - video_start) * SAMPLE_RATE)
    assert abs(synth.onset(audio) - expected) <= 16  # 1 ms


def test_frame_window_holds_the_burst(tmp_path: Path) -> None:
    """Frame i <-> [i/25, (i+1)/25): a burst starting at 0.70 s is in frame 17, not 16."""
    path = synth.write_video(
        tmp_path / "av.mp4", n_frames=50, fps=25, audio=synth.tone_burst(2.0, 0.70, 0.03)
    )
    audio = load_audio(path)
    energy = [np.abs(audio_for_frames(audio, i, 1)).max() for i in range(15, 20)]
    assert energy[1] < 0.05 < energy[2]  # frame 16 silent, frame 17 loud


@pytest.mark.parametrize(
    ("name", "cover_art"),
    [("b.wav", False), ("b.m4a", False), ("b.mp3", False), ("b.ogg", False), ("c.mp3", True)],
)
def test_audio_only_files_start_at_zero(tmp_path: Path, name: str, cover_art: bool) -> None:
    path = synth.write_audio(tmp_path / name, synth.tone_burst(1.0, 0.5), cover_art=cover_art)
    audio = load_audio(path)
    assert abs(synth.onset(audio) - SAMPLE_RATE // 2) <= 16
    assert abs(len(audio) - SAMPLE_RATE) <= 1152  # codec padding at most one frame


@pytest.mark.parametrize(("left", "right", "peak"), [(1, 1, 0.5), (1, 0, 0.25)])
def test_stereo_downmix_is_channel_mean(
    tmp_path: Path, left: float, right: float, peak: float
) -> None:
    tone = synth.tone_burst(0.5, 0.1, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left * tone, right * tone], axis=1), 16000, subtype="PCM_16")
    assert np.abs(load_audio(path)).max() == pytest.approx(peak, abs=0.01)


def test_resampling_keeps_timing(tmp_path: Path) -> None:
    path = synth.write_audio(tmp_path / "b44.wav", synth.tone_burst(1.0, 0.25, sr=44100), 44100)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) <= 1
    assert abs(synth.onset(audio) - SAMPLE_RATE // 4) <= 4


# ---------------------------------------------------------------- errors


def test_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty.wav"):
        load_audio(empty)
    text = tmp_path / "speech.mp3"
    text.write_text("hello\n" * 100)
    with pytest.raises(NotAMediaFile, match="speech.mp3"):
        load_audio(text)


# ---------------------------------------------------------------- frame windows


def test_audio_for_frames_lengths_and_padding() -> None:
    audio = np.arange(16000, dtype=np.float32) / 16000  # 1 s
    window = audio_for_frames(audio, 10, 5)
    assert window.shape == (5 * 640,) and window.dtype == np.float32
    np.testing.assert_array_equal(window, audio[6400:9600])
    tail = audio_for_frames(audio, 24, 3)  # frames 25, 26 are past the end
    assert tail.shape == (1920,)
    np.testing.assert_array_equal(tail[:640], audio[15360:])
    assert not tail[640:].any()
    assert (
        audio_for_frames(audio, 100, 2).shape == (1280,)
        and not audio_for_frames(audio, 100, 2).any()
    )
    # 30 fps: 533.3 samples per frame, bounds rounded, consecutive windows tile exactly
    parts = [audio_for_frames(audio, i, 1, fps=30) for i in range(30)]
    assert {len(p) for p in parts} == {533, 534}
    np.testing.assert_array_equal(np.concatenate(parts), audio)
    with pytest.raises(ValueError, match="start_frame"):
        audio_for_frames(audio, -1, 2)


# ---------------------------------------------------------------- streaming


def requests(num_frames: int) -> list[tuple[int, int]]:
    """(start, num) frame ranges with non-decreasing starts: overlapping, repeated, gaps,
    across the end and entirely past it, for audio of `num_frames` 25 fps frames."""
    n = num_frames
    ranges = [
        (0, 1),
        (0, 30),
        (10, 5),
        (12, 0),
        (40, 250),
        (n // 2, 7),
        (n // 2 + 3, 100),
        (max(n - 3, n // 2 + 3), 10),
        (n + 5, 4),
        (n + 5, 250),
    ]
    return sorted(ranges, key=lambda r: r[0])


def assert_stream_matches(path: Path, fps: float = 25) -> None:
    """AudioStream.read_frames == audio_for_frames(load_audio(path)) for every request."""
    whole = load_audio(path)
    n = len(whole) * fps // SAMPLE_RATE
    with AudioStream(path) as stream:
        for start, num in requests(int(n)):
            got = stream.read_frames(start, num, fps=fps)
            expected = audio_for_frames(whole, start, num, fps=fps)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected, err_msg=f"frames {start}+{num}")
        assert stream.ended and stream.num_samples == len(whole)
        if fps == 25:
            assert stream.frames_available() == len(whole) // 640
    np.testing.assert_array_equal(
        np.concatenate([np.zeros(0, np.float32), *iter_audio(path)]), whole
    )


@pytest.mark.parametrize("name", ["talking_demo1.mp4", "yongen.wav", "speech_en_16k.wav"])
def test_stream_equals_load_audio_real_files(shared_data: Path, name: str) -> None:
    assert_stream_matches(shared_data / name)


def test_stream_equals_load_audio_at_30_fps(shared_data: Path) -> None:
    assert_stream_matches(shared_data / "talking_demo1.mp4", fps=30)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize(
    ("video_start", "audio_start"),
    [(0.0, 0.0), (0.0, 0.5), (0.32, 0.0), (0.0, 3.0), (2.5, 0.0)],  # 3.0: long zero padding
    ids=str,  # 2.5: the whole 2 s track is before the video
)
def test_stream_equals_load_audio_offsets(
    tmp_path: Path, suffix: str, video_start: float, audio_start: float
) -> None:
    path = synth.write_video(
        tmp_path / f"av{suffix}",
        n_frames=50,
        fps=25,
        audio=synth.tone_burst(2.0, 0.7),
        audio_start=audio_start,
        video_start=video_start,
    )
    assert_stream_matches(path)


@pytest.mark.parametrize("name", ["b.wav", "b.m4a", "c.mp3"])
def test_stream_equals_load_audio_audio_only(tmp_path: Path, name: str) -> None:
    path = synth.write_audio(tmp_path / name, synth.tone_burst(1.0, 0.5), cover_art=name == "c.mp3")
    assert_stream_matches(path)


def test_stream_decodes_only_as_far_as_needed(shared_data: Path) -> None:
    with AudioStream(shared_data / "speech_en_16k.wav") as stream:  # 60 s
        assert not stream.ended and stream.num_samples is None and stream.frames_available() is None
        stream.read_frames(0, 25)
        assert not stream.ended and 16000 <= stream.decoded < 16000 + 2048
        stream.read_frames(100, 25)  # frames 25..99 were decoded and dropped on the way
        assert stream.buffered < 16000 + 2048
        with pytest.raises(ValueError, match="before an earlier request"):
            stream.read_frames(99, 1)
        with pytest.raises(ValueError, match="start_frame"):
            stream.read_frames(-1, 1)


def test_stream_errors_at_open(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(NoAudioStream, match="yongen_video_only.mp4"):
        AudioStream(shared_data / "yongen_video_only.mp4")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile):
        AudioStream(empty)


def test_stream_memory_is_bounded_by_the_request(tmp_path: Path) -> None:
    """10 minutes of 16 kHz audio read 250 frames at a time: the stream holds one request
    (plus a decoded chunk), load_audio the whole file (38.4 MB of float32)."""
    seconds, step = 600, 250
    n = SAMPLE_RATE * seconds
    tone = 0.3 * np.sin(np.arange(n, dtype=np.float32) * np.float32(0.05))
    path = tmp_path / "long.wav"
    sf.write(str(path), tone, SAMPLE_RATE, subtype="PCM_16")
    whole_bytes = n * 4

    tracemalloc.start()
    try:
        with AudioStream(path) as stream:
            for start in range(0, seconds * 25 + step, step):
                wav = stream.read_frames(start, step)
                assert stream.buffered <= step * 640 + 2 * 16384
            last = wav
            _, stream_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole = load_audio(path)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.ended and stream.num_samples == n == len(whole)
    assert stream.peak_buffered <= step * 640 + 2 * 16384  # 160000 samples + one chunk each side
    assert not last.any()  # the last request is past the end
    assert stream_peak < whole_bytes / 10 < whole_peak / 10


# ---------------------------------------------------------------- writing


def test_write_wav_round_trip(tmp_path: Path) -> None:
    audio = synth.tone_burst(0.5, 0.1, 0.2)
    audio[-10:] = 1.7  # clipped to full scale
    path = tmp_path / "out.wav"
    write_wav(path, audio, 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = load_audio(path)
    np.testing.assert_allclose(back[:-10], audio[:-10], atol=1 / 32768 + 1e-7)
    assert back[-10:].min() > 0.999
    with pytest.raises(ValueError, match="float"):
        write_wav(path, np.zeros(10, np.int16), 16000)
