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
