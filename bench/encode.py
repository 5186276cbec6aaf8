"""H.264 encoder presets for the output video: speed, size and fidelity, measured in one run.

Encodes the first `--frames` frames of the shared 1080x1920 talking video with `VideoWriter`
(libx264, yuv420p, the writer's crf) at each preset, decodes the file back and reports, per
preset: encode ms per frame (the CPU cost inference pays per output frame), bytes per frame, and
PSNR of the decoded frames against the input frames (RGB, dB). Ratios are against the writer's
default preset, from the same run. Prints a table, writes bench/results/encode.json.

    .venv/bin/python bench/encode.py [--frames 100] [--presets ultrafast,superfast,veryfast,...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import run_header

from musetalk.video import VideoReader, VideoWriter

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MUSETALK_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_PRESET = inspect.signature(VideoWriter).parameters["preset"].default
DEFAULT_CRF = inspect.signature(VideoWriter).parameters["crf"].default


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def measure(frames: list[np.ndarray], preset: str, directory: Path) -> dict:
    path = directory / f"{preset}.mp4"
    start = time.perf_counter()
    with VideoWriter(path, fps=25, crf=DEFAULT_CRF, preset=preset) as writer:
        for frame in frames:
            writer.write(frame)
    seconds = time.perf_counter() - start
    decoded = [f for _, f in VideoReader(path).frames()]
    assert len(decoded) == len(frames), (preset, len(decoded))
    return {
        "encode_ms_per_frame": round(1000 * seconds / len(frames), 2),
        "bytes_per_frame": round(path.stat().st_size / len(frames)),
        "psnr_db": round(
            float(np.mean([psnr(a, b) for a, b in zip(frames, decoded, strict=True)])), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--presets", default="ultrafast,superfast,veryfast,faster,medium")
    args = parser.parse_args()
    load_start = os.getloadavg()
    frames = [f for _, f in VideoReader(DATA / "talking_demo1.mp4").frames(0, args.frames)]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            results[preset] = measure(frames, preset, Path(tmp))
    base = results.get(DEFAULT_PRESET)
    if base is not None:
        for row in results.values():
            row["time_ratio_vs_default"] = round(
                row["encode_ms_per_frame"] / base["encode_ms_per_frame"], 3
            )
            row["size_ratio_vs_default"] = round(
                row["bytes_per_frame"] / base["bytes_per_frame"], 3
            )
    h, w = frames[0].shape[:2]
    report = {
        **run_header(load_start),
        "video": f"talking_demo1.mp4, first {len(frames)} frames, {w}x{h}",
        "crf": DEFAULT_CRF,
        "default_preset": DEFAULT_PRESET,
        "results": results,
    }
    columns = ("ms/frame", "KB/frame", "PSNR dB", "time x", "size x")
    print(f"{'preset':<10} " + " ".join(f"{c:>9}" for c in columns))
    for preset, row in results.items():
        print(
            f"{preset:<10} {row['encode_ms_per_frame']:>9.2f} {row['bytes_per_frame'] / 1024:>9.1f}"
            f" {row['psnr_db']:>9.2f} {row.get('time_ratio_vs_default', float('nan')):>9.2f}"
            f" {row.get('size_ratio_vs_default', float('nan')):>9.2f}"
        )
    out = REPO / "bench" / "results" / "encode.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
