"""The web app's Preview on CPU: the first preview of an upload (hash, face tracking of every
frame, drawing) against a redraw when the bbox_shift slider moves (drawing only, from the
tracking cached per upload), measured in one run.

For each shared video (whole, at 25 fps) the first preview is timed once, then `--redraws`
previews at shifts spread over the video's adjustable range (the slider's bounds) and a few
other frames; the redraw is what the slider costs, the first preview is what re-running face
tracking per trial (the CLI way) would cost each time. Times are the backend's (server side,
without the browser's round trip). Prints a table, writes bench/results/app_preview.json.

    .venv/bin/python bench/app_preview.py [--redraws 20] [--videos talking_demo1.mp4,...]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import run_header

from musetalk.app.backend import AppBackend
from musetalk.app.settings import AppConfig
from musetalk.config import parse

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MUSETALK_SHARED_DATA", REPO.parent / "shared" / "data"))


def measure(video: Path, redraws: int, workdir: Path) -> dict:
    backend = AppBackend(parse(AppConfig, {"infer_model": {"layout": "tiny"}}), workdir)
    backend.pipeline()  # model loading is not part of a preview
    start = time.perf_counter()
    first = backend.preview(video)
    first_s = time.perf_counter() - start
    lo, hi = first.slider_range
    shifts = np.linspace(lo, hi, redraws).round()
    frames = np.linspace(0, first.num_frames - 1, redraws).round().astype(int)
    times = []
    for k, (shift, frame) in enumerate(zip(shifts, frames, strict=True)):
        start = time.perf_counter()
        # half the redraws move the slider on the same frame, half change frame as well
        backend.preview(video, int(frame) if k % 2 else first.frame_index, float(shift))
        times.append(time.perf_counter() - start)
    h, w = first.image.shape[:2]
    return {
        "frames": first.num_frames,
        "first_preview_s": round(first_s, 3),
        "redraw_median_s": round(float(np.median(times)), 4),
        "redraw_max_s": round(float(np.max(times)), 4),
        "first_over_redraw": round(first_s / float(np.median(times)), 1),
        "preview_image": f"{w}x{h}",
        "slider_range": [lo, hi],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redraws", type=int, default=20)
    parser.add_argument("--videos", default="talking_demo1.mp4,yongen_video_only.mp4")
    args = parser.parse_args()
    load_start = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.videos.split(","):
            results[name] = measure(DATA / name, args.redraws, Path(tmp) / name)
    report = {
        **run_header(load_start),
        "face_backend": "dlib",
        "redraws": args.redraws,
        "results": results,
    }
    columns = ("frames", "first s", "redraw s", "max s", "first/redraw")
    print(f"{'video':<24} " + " ".join(f"{c:>12}" for c in columns))
    for name, row in results.items():
        print(
            f"{name:<24} {row['frames']:>12} {row['first_preview_s']:>12.2f}"
            f" {row['redraw_median_s']:>12.3f} {row['redraw_max_s']:>12.3f}"
            f" {row['first_over_redraw']:>12.1f}"
        )
    print(f"load average {report['load_average_start']} -> {report['load_average_end']}")
    out = REPO / "bench" / "results" / "app_preview.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
