"""Shared fixtures: the real data in ../shared/data (read in place, never copied into the repo)."""

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
def both_videos_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of both real videos (yongen paired with its wav via a csv list), 100-frame
    samples, made once per test session by the real preprocessing."""
    from musetalk.data.preprocess import PreprocessConfig, preprocess
    from musetalk.data.samples import SampleOptions

    root = tmp_path_factory.mktemp("both_videos")
    listing = root / "sources.csv"
    listing.write_text(
        "video,audio\n"
        f"{shared_data / 'talking_demo1.mp4'},\n"
        f"{shared_data / 'yongen_video_only.mp4'},{shared_data / 'yongen.wav'}\n"
    )
    output = root / "shards"
    config = PreprocessConfig(
        input=str(listing),
        output=str(output),
        workers=1,
        progress=False,
        sample=SampleOptions(max_frames=100),
    )
    preprocess(config)
    return output
