"""Preprocessing throughput on the shared 1080x1920 HEVC talking video.

Measures, in one run on the same file:
- decode only (PyAV -> RGB at 25 fps, FFmpeg threads as the one-worker pipeline uses them, i.e.
  FFmpeg's choice): the physical limit of this machine;
- the frame loop of one source alone (decode, faces, crops; no shards), in one thread and
  pipelined (decoding ahead and crop encoding behind in threads), to show what the threads give;
- the real preprocessing pipeline, one worker (frames/s wall and per CPU-second), with its
  per-stage times: decode (waiting for the decode-ahead thread), faces (the tracker: key-frame
  detection + fit `analyze`, crop checks `detect`, landmark following `landmarks`, and its own
  bookkeeping), crop_encode (in the encoding thread, overlapped), pack, write, audio;
- the pipeline with the default number of workers (one per core) on N >= 4 copies of the source
  (distinct paths, one shard each), end to end including the workers' start-up;
- peak RSS.
Ratios: `ratio_end_to_end_vs_decode` (one worker / decode only) and `ratio_all_workers_vs_one`
(all workers' aggregate frames/s / one worker's).
Prints a table and writes bench/results/preprocess.json.

    .venv/bin/python bench/preprocess.py [--video PATH] [--copies N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

from musetalk.data import preprocess as P
from musetalk.data.samples import SampleOptions, SourceProcessor
from musetalk.data.shard_task import _worker_tools
from musetalk.data.sources import Source
from musetalk.video import VideoReader

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "talking_demo1.mp4"


def decode_only(video: Path) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in VideoReader(video).frames())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames": n, "seconds": wall, "fps": n / wall, "fps_per_cpu_second": n / cpu}


def frame_loop(video: Path, pipelined: bool) -> float:
    """Frames/s of one source's frame loop alone (`SourceProcessor`, no shard writing), in one
    thread (pipelined=False) or with decoding and crop encoding in their threads."""
    tracker, face_info, *_ = _worker_tools(P.PreprocessConfig(input="-", output="-"))
    processor = SourceProcessor(Source(str(video)), tracker, SampleOptions(), face_info)
    processor.pipelined = pipelined
    wall = time.perf_counter()
    for _ in processor.samples():
        pass
    return processor.report.frames_decoded / (time.perf_counter() - wall)


def timed_analyzer_methods(stages: Counter) -> None:
    """Time the worker's analyzer calls (the real methods, wrapped): `analyze` (key frames: full
    detection + fit), `detect` (checks on small crops), `landmarks` (following)."""
    config = P.PreprocessConfig(input="-", output="-")
    tracker, *_ = _worker_tools(config)
    analyzer = tracker.analyzer
    for name in ("analyze", "detect", "landmarks"):
        method = getattr(analyzer, name)

        def wrapped(*args, _method=method, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                stages[f"faces.{_name}"] += time.perf_counter() - start

        setattr(analyzer, name, wrapped)


def pipeline(video: Path, workers: int | None, copies: int, tmp: Path, stages: Counter) -> dict:
    listing = tmp / f"list{copies}.csv"
    links = []
    for k in range(copies):  # distinct paths, the same bytes
        link = tmp / f"copy{copies}_{k}{video.suffix}"
        link.symlink_to(video)
        links.append(link)
    listing.write_text("video\n" + "\n".join(str(p) for p in links) + "\n")
    out = tmp / f"out{copies}"
    config = P.PreprocessConfig(
        input=str(listing),
        output=str(out),
        workers=workers,
        sources_per_shard=1,
        sample=SampleOptions(),
        progress=False,
    )
    wall, cpu = time.perf_counter(), time.process_time()
    summary = P.preprocess(config)
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = 0.0  # seconds inside the shard tasks, summed over the workers
    for shard in sorted(out.glob("0*.json")):
        record = json.loads(shard.read_text())
        busy += record["seconds"]
        for src in record["sources"]:
            stages.update(src["stage_seconds"])
    frames = summary["frames_decoded"]
    used = min(workers or os.cpu_count() or 1, copies)
    return {
        "workers": used,
        "sources": copies,
        "frames": frames,
        "frames_in_samples": summary["frames"],
        "seconds": wall,
        "fps": frames / wall,
        "seconds_outside_shard_tasks": max(0.0, wall - busy / used),  # start-up, scheduling
        "fps_inside_shard_tasks": frames / (busy / used),  # as if the workers were started
        "cpu_seconds_in_process": cpu,
        "children_cpu_seconds": children.ru_utime + children.ru_stime,
        "bytes": summary["bytes"],
        "bytes_per_frame": summary["bytes"] / max(1, summary["frames"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--copies", type=int, default=max(4, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "preprocess.json")
    args = parser.parse_args()
    load_start = os.getloadavg()

    stages: Counter = Counter()
    timed_analyzer_methods(stages)  # builds the worker tools first, as a warm worker has them
    decode = decode_only(args.video)
    loops = {"sequential_fps": frame_loop(args.video, False)}
    loops["pipelined_fps"] = frame_loop(args.video, True)
    stages.clear()  # the stage times below are the one-worker pipeline's
    with tempfile.TemporaryDirectory() as tmp:
        cpu0 = time.process_time()
        one = pipeline(args.video, 1, 1, Path(tmp), stages)
        one["fps_per_cpu_second"] = one["frames"] / (time.process_time() - cpu0)
        peak_rss_one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        many = pipeline(args.video, None, args.copies, Path(tmp), Counter())
    cores = os.cpu_count() or 1
    stage_rows = {k: round(v, 3) for k, v in sorted(stages.items())}
    result = {
        "date": date.today().isoformat(),
        "machine": {
            "cpus": cores,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load_start,
            "load_average_at_end": os.getloadavg(),
        },
        "video": str(args.video.name),
        "decode_only": decode,
        "frame_loop_1_source": loops,
        "pipeline_1_worker": one,
        "pipeline_all_workers": many,
        "ratio_end_to_end_vs_decode": one["fps"] / decode["fps"],
        "ratio_all_workers_vs_one": many["fps"] / one["fps"],
        "stage_seconds_1_worker": stage_rows,
        "peak_rss_mb_1_worker": round(peak_rss_one, 1),
        "peak_rss_mb_children": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    frames = one["frames"]
    print(f"\npreprocess benchmark: {args.video.name}, {result['date']}, {cores} cores")
    print(f"load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    all_workers = f"{many['workers']} workers x {args.copies} sources"
    print(f"{'measure':<52}{'value':>12}")
    rows = [
        ("decode only, frames/s (RGB, 25 fps)", f"{decode['fps']:.1f}"),
        ("frame loop alone, one thread, frames/s", f"{loops['sequential_fps']:.1f}"),
        ("frame loop alone, pipelined (threads), frames/s", f"{loops['pipelined_fps']:.1f}"),
        ("end to end, 1 worker, frames/s", f"{one['fps']:.1f}"),
        ("end to end, 1 worker, frames per CPU-second", f"{one['fps_per_cpu_second']:.1f}"),
        ("ratio end to end / decode only", f"{result['ratio_end_to_end_vs_decode']:.2f}"),
        (f"end to end, {all_workers}, frames/s", f"{many['fps']:.1f}"),
        (
            "  of which outside the shard tasks (start-up), s",
            f"{many['seconds_outside_shard_tasks']:.2f}",
        ),
        (
            "  frames/s inside the shard tasks (workers started)",
            f"{many['fps_inside_shard_tasks']:.1f}",
        ),
        ("ratio all workers / 1 worker", f"{result['ratio_all_workers_vs_one']:.2f}"),
        ("stored bytes per frame (JPEG crops + audio)", f"{one['bytes_per_frame']:.0f}"),
        ("peak RSS, 1 worker (MB)", f"{peak_rss_one:.0f}"),
        ("peak RSS, largest worker process (MB)", f"{result['peak_rss_mb_children']:.0f}"),
    ]
    rows += [(f"  stage {k}, ms/frame", f"{1000 * v / frames:.2f}") for k, v in stage_rows.items()]
    for name, value in rows:
        print(f"{name:<52}{value:>12}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
