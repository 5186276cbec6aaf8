"""musetalk.audio.io: 16 kHz mono loading aligned to video time, frame windows, wav writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import synth

from musetalk.audio import SAMPLE_RATE, audio_for_frames, load_audio, write_wav
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
