"""One preprocessing shard task: its sources -> tar parts + the shard's stats json.

Runs in a local worker process, a Ray worker, or inline. Parts are written under temp names of
the output; when every source is done the stats json is written under a temp name first (it
names the parts, so an interrupted task's files are provably ours), then the parts are renamed
into place, then the json (the shard's done-marker). Bad sources are recorded with a reason and
never stop the shard.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from musetalk.data.output import Output, shard_name
from musetalk.data.samples import SourceProcessor, SourceReport
from musetalk.data.schema import REGION_VERSION, SCHEMA_VERSION
from musetalk.data.settings import PreprocessConfig
from musetalk.data.sources import Source
from musetalk.data.stats import RegionStats
from musetalk.data.writer import ShardWriter
from musetalk.errors import MediaError

__all__ = ["limit_threads", "run_shard"]

_WORKER_CACHE: dict[str, Any] = {}


_thread_budget: int | None = None  # set by limit_threads


def limit_threads(threads: int) -> None:
    """Thread budget of a worker process that shares the cores with other workers, set at its
    start: `threads` (cores / workers) for FFmpeg decoding and torch (Whisper features), one for
    OpenCV (each worker already runs decoding, face analysis and crop encoding in threads of
    its own, see `SourceProcessor`). The output does not depend on these numbers."""
    global _thread_budget
    import cv2

    from musetalk.video import set_decode_threads

    cv2.setNumThreads(1)
    set_decode_threads(threads)
    _thread_budget = threads
    _limit_torch_threads()


def _limit_torch_threads() -> None:
    torch = sys.modules.get("torch")  # imported only for Whisper features (see _worker_tools)
    if torch is not None and _thread_budget is not None:
        torch.set_num_threads(_thread_budget)


def _worker_tools(config: PreprocessConfig):
    """Tracker, face info and feature extractor, built once per worker process."""
    key = json.dumps([config.face, str(config.tracking), str(config.audio)])
    if key not in _WORKER_CACHE:
        import cv2

        from musetalk.face import build_analyzer
        from musetalk.face.tracking import FaceTracker

        cv2.setNumThreads(1)
        options = {k: v for k, v in config.face.items() if k != "backend"}
        analyzer = build_analyzer(config.face["backend"], **options)
        tracker = FaceTracker(analyzer, config.tracking)
        face_info = {
            "backend": analyzer.name,
            "version": analyzer.version,
            "settings": analyzer.settings,
            "tracking": tracker.settings,
        }
        features = features_info = None
        if config.audio.features == "whisper":
            from musetalk.audio.whisper import WhisperEncoder

            _limit_torch_threads()
            encoder = WhisperEncoder(config.audio.model, device=config.device)
            features = encoder
            features_info = {
                "kind": "whisper",
                "model": config.audio.model,
                "shape": [
                    "audio_context.num_steps",
                    encoder.num_hidden_states,
                    encoder.hidden_size,
                ],
                "windows": "the source's 30 s windows from its time 0 (musetalk.audio.context)",
                "dtype": "float16",
            }
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (tracker, face_info, features, features_info)
    return _WORKER_CACHE[key]


def run_shard(
    index: int,
    sources: list[Source],
    config: PreprocessConfig,
    output_id: str,
    progress: Callable[[str, int], None] | None = None,
    attempt: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Process one shard's sources into tar parts, then publish them and its stats json.
    attempt: which try of this shard this is (1 = first; executors that retry count up), recorded
    in the shard json and the manifest. threads: `limit_threads` first (None: as it is)."""
    if threads is not None:
        limit_threads(threads)
    started = time.time()
    out = Output(config.output, output_id)
    name = shard_name(index)
    tracker, face_info, features, features_info = _worker_tools(config)
    parts: list[tuple[str, str]] = []  # (temp name, final name)
    writer: ShardWriter | None = None
    reports, regions = [], []  # per source: its report and its region statistics
    total_bytes = 0

    frame_progress = None if progress is None else functools.partial(progress, "frames")

    def close_part() -> None:
        nonlocal writer, total_bytes
        parts.append((writer.close(), writer.name))
        total_bytes += writer.bytes
        writer = None

    try:
        for source in sources:
            t0 = time.time()
            processor = SourceProcessor(
                source, tracker, config.sample, face_info, features, frame_progress, features_info
            )
            source_region = RegionStats()
            try:
                for sample in processor.samples():
                    if writer is None:
                        writer = ShardWriter(out, f"{name}-{len(parts):03d}.tar")
                    with processor.report.stage_seconds("write"):
                        writer.write(sample.key, sample.members)
                    source_region.add_sample(sample.meta)
                    if writer.samples >= config.samples_per_shard:
                        close_part()
            except MediaError as exc:
                _record_error(processor.report, exc.reason, str(exc))
            except Exception as exc:  # a bug or an unexpected file: recorded, never fatal
                _record_error(processor.report, f"error_{type(exc).__name__}", str(exc))
            processor.report.seconds = round(time.time() - t0, 3)
            reports.append(processor.report)
            regions.append(source_region)
            if progress is not None:
                progress("sources", 1)
        if writer is not None:
            close_part()
    except BaseException:
        if writer is not None:
            writer.abort()
        for tmp, _ in parts:
            out.fs.rm(out.path(tmp))
        raise
    stats = {
        "shard": index,
        "tars": [final for _, final in parts],
        "samples": sum(len(r.samples) for r in reports),
        "bytes": total_bytes,
        **_region_record(reports, regions),
        "seconds": round(time.time() - started, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "config_fingerprint": config.fingerprint(),
        "schema_version": SCHEMA_VERSION,
        "region_version": REGION_VERSION,
        "output_id": output_id,
        "attempt": attempt,
    }
    _publish(out, name, parts, stats)
    return stats


def _publish(out: Output, name: str, parts: list[tuple[str, str]], stats: dict[str, Any]) -> None:
    """Rename the tar parts to their final names, then write the shard json: the done-marker,
    last, so that a shard with a json is complete."""
    listing = out.write_temp(
        f"{name}.json", (json.dumps(stats, indent=1, sort_keys=True) + "\n").encode()
    )
    for tmp, final in parts:
        out.publish(tmp, final)
    out.publish(listing, f"{name}.json")


def _region_record(reports: list[SourceReport], regions: list[RegionStats]) -> dict[str, Any]:
    """The shard json's `sources` (each report with its own region statistics) and `region`
    (the shard's: all sources merged)."""
    shard = RegionStats()
    for source_region in regions:
        shard.merge(source_region)
    sources = [
        {**r.to_json(), "region": g.to_json()} for r, g in zip(reports, regions, strict=True)
    ]
    return {"sources": sources, "region": shard.to_json()}


def _record_error(report: SourceReport, reason: str, detail: str) -> None:
    report.status = "partial" if report.samples else "skipped"
    report.reason = reason
    report.detail = detail
