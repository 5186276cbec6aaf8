"""Shared fixtures: the real data in ../shared/data (read in place, never copied into the repo),
and the shards the real preprocessing makes of it, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(
    __import__("os").environ.get("MUSETALK_SHARED_DATA", REPO.parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Directory holding talking_demo1.mp4, yongen_video_only.mp4, yongen.wav, speech_en_16k.wav."""
    if not (SHARED_DATA / "talking_demo1.mp4").is_file():
        pytest.fail(f"real test data not found in {SHARED_DATA} (set MUSETALK_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_talking(shared_data: Path):
    """3 s of the real talking video at 360x640 and its audio (see synth.small_talking_clip)."""
    import synth

    return synth.small_talking_clip(shared_data / "talking_demo1.mp4", 3)


@pytest.fixture(scope="session")
def both_videos_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of both real videos (yongen paired with its wav via a csv list), 100-frame
    samples, made once per test session by the real preprocessing."""
    root = tmp_path_factory.mktemp("both_videos")
    listing = root / "sources.csv"
    listing.write_text(
        "video,audio\n"
        f"{shared_data / 'talking_demo1.mp4'},\n"
        f"{shared_data / 'yongen_video_only.mp4'},{shared_data / 'yongen.wav'}\n"
    )
    output = root / "shards"
    preprocess_once(listing, output, max_frames=100)
    return output


def preprocess_once(input_path: Path, output: Path, max_frames: int, **settings) -> Path:
    """The real preprocessing with one worker and no progress output."""
    from musetalk.config import parse
    from musetalk.data.preprocess import PreprocessConfig, preprocess

    values = {
        "input": str(input_path),
        "output": str(output),
        "workers": 1,
        "progress": False,
        "sample": {"max_frames": max_frames},
        **settings,
    }
    preprocess(parse(PreprocessConfig, values))
    return output


@pytest.fixture(scope="session")
def demo_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo video (250 frames) as one shard of 5 samples of 50 frames."""
    out = tmp_path_factory.mktemp("demo_shards")
    return preprocess_once(shared_data / "talking_demo1.mp4", out, max_frames=50)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random WhisperModel saved in the HF layout (d 64, 2 layers)."""
    from tiny_models import save_tiny_whisper

    return save_tiny_whisper(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="session")
def demo_whisper_shards(
    shared_data: Path, tiny_whisper_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo video as one shard of 8 samples of 30 frames (the last 10 frames are a short
    track) with cached Whisper features of `tiny_whisper_dir`."""
    out = tmp_path_factory.mktemp("demo_whisper_shards")
    audio = {"features": "whisper", "model": str(tiny_whisper_dir)}
    return preprocess_once(shared_data / "talking_demo1.mp4", out, max_frames=30, audio=audio)
