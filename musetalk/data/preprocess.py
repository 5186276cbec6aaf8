"""Talking-face videos -> WebDataset shards, in parallel, resumable, with region statistics.

Sources are sorted and grouped into shards deterministically (`sources_per_shard` each); one
task per shard writes `NNNNN-PPP.tar` parts (a new part every `samples_per_shard` samples) and
then `NNNNN.json`, the shard's stats and done-marker. A rerun skips shards whose json exists and
redoes the others from scratch after deleting their leftovers, so an interrupted run plus a rerun
gives the same dataset as one clean run. At the end the shard jsons are merged into
`stats.json` and `manifest.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from musetalk.data.samples import SampleOptions, SourceProcessor, SourceReport
from musetalk.data.schema import REGION_VERSION, SCHEMA_VERSION
from musetalk.data.sources import Source, assign_shards, list_sources
from musetalk.data.stats import RegionStats
from musetalk.data.writer import TMP_MARK, Output, ShardWriter
from musetalk.errors import MediaError

EXECUTORS = ("local", "ray")
FEATURES = ("none", "whisper")


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that defines a preprocessing run (plain values; Hydra lives in the entry point).

    input: video file, directory (recursive) or .txt/.csv list. output: local dir or fsspec URL.
    workers: parallel shard tasks (None = number of cores). executor: "local" process pool or
    "ray" (`ray_address` None = a local Ray instance). face: backend name + its options.
    tracking: FaceTracker options. audio_features: "none" or "whisper" (cached encoder
    features, model `whisper_model`, an HF id or a local dir, on `device`).
    """

    input: str
    output: str
    workers: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    sources_per_shard: int = 4
    samples_per_shard: int = 200
    face: dict[str, Any] = field(default_factory=lambda: {"backend": "dlib"})
    tracking: dict[str, Any] = field(
        default_factory=lambda: {"detect_every": 25, "verify_every": 5, "idle_detect_every": 3}
    )
    sample: SampleOptions = field(default_factory=SampleOptions)
    audio_features: str = "none"
    whisper_model: str = "openai/whisper-tiny"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.audio_features not in FEATURES:
            raise ValueError(
                f"audio_features must be one of {FEATURES}, got {self.audio_features!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1 (or null for all cores), got {self.workers}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if "backend" not in self.face:
            raise ValueError(f"face config needs a 'backend', got {self.face}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessConfig:
        """Build from plain nested values (the resolved Hydra config): `executor` is
        {name, address}, `audio` is {features, model}, `sample` holds the SampleOptions
        fields; unknown keys are errors."""
        values = dict(values)
        executor = values.pop("executor", {"name": "local"})
        if isinstance(executor, dict):
            values["executor"] = executor.get("name", "local")
            values["ray_address"] = executor.get("address")
        else:
            values["executor"] = executor
        audio = values.pop("audio", None)
        if audio is not None:
            values["audio_features"] = audio.get("features", "none")
            values["whisper_model"] = audio.get("model", cls.whisper_model)
        sample = values.pop("sample", {}) or {}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocess settings {unknown}; known: {sorted(known)}")
        return cls(sample=SampleOptions(**sample), **values)

    def fingerprint(self) -> str:
        """Hash of the settings that change the output (not workers, executor or progress)."""
        keep = {k: v for k, v in self.to_json().items() if k not in _RUNTIME_ONLY}
        return hashlib.sha1(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


_RUNTIME_ONLY = {"workers", "executor", "ray_address", "progress", "device", "output"}


def shard_name(index: int) -> str:
    return f"{index:05d}"


# ---------------------------------------------------------------------------------------------
# One shard task (runs in a worker process, a Ray worker, or inline)

_WORKER_CACHE: dict[str, Any] = {}


def _worker_tools(config: PreprocessConfig):
    """Tracker, face info and feature extractor, built once per worker process."""
    key = json.dumps([config.face, config.tracking, config.audio_features, config.whisper_model])
    if key not in _WORKER_CACHE:
        import cv2

        from musetalk.face import build_analyzer
        from musetalk.face.tracking import FaceTracker

        cv2.setNumThreads(1)
        options = {k: v for k, v in config.face.items() if k != "backend"}
        analyzer = build_analyzer(config.face["backend"], **options)
        tracker = FaceTracker(analyzer, **config.tracking)
        face_info = {
            "backend": analyzer.name,
            "version": analyzer.version,
            "settings": analyzer.settings,
            "tracking": tracker.settings,
        }
        features = features_info = None
        if config.audio_features == "whisper":
            from musetalk.audio.whisper import WhisperEncoder

            encoder = WhisperEncoder(config.whisper_model, device=config.device)
            features = encoder.encode
            features_info = {
                "kind": "whisper",
                "model": config.whisper_model,
                "shape": ["T50", encoder.num_hidden_states, encoder.hidden_size],
                "dtype": "float16",
            }
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (tracker, face_info, features, features_info)
    return _WORKER_CACHE[key]


def run_shard(
    index: int,
    sources: list[Source],
    config: PreprocessConfig,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Process one shard's sources into tar parts, then write its stats json (the done-marker).

    Bad sources are recorded with a reason and never stop the shard.
    """
    started = time.time()
    out = Output(config.output)
    name = shard_name(index)
    out.remove_matching(f"{name}-*")
    tracker, face_info, features, features_info = _worker_tools(config)
    tars: list[str] = []
    writer: ShardWriter | None = None
    region = RegionStats()
    reports = []
    total_bytes = 0

    def frame_progress(n: int) -> None:
        if progress is not None:
            progress("frames", n)

    try:
        for source in sources:
            t0 = time.time()
            processor = SourceProcessor(
                source, tracker, config.sample, face_info, features, frame_progress, features_info
            )
            try:
                for sample in processor.samples():
                    if writer is None:
                        writer = ShardWriter(out, f"{name}-{len(tars):03d}.tar")
                    with processor.report.stage_seconds("write"):
                        writer.write(sample.key, sample.members)
                    region.add_sample(sample.meta)
                    if writer.samples >= config.samples_per_shard:
                        writer.close()
                        tars.append(writer.name)
                        total_bytes += writer.bytes
                        writer = None
            except MediaError as exc:
                _record_error(processor.report, exc.reason, str(exc))
            except Exception as exc:  # a bug or an unexpected file: recorded, never fatal
                _record_error(processor.report, f"error_{type(exc).__name__}", str(exc))
            processor.report.seconds = round(time.time() - t0, 3)
            reports.append(processor.report)
            if progress is not None:
                progress("sources", 1)
        if writer is not None:
            writer.close()
            tars.append(writer.name)
            total_bytes += writer.bytes
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    stats = {
        "shard": index,
        "tars": tars,
        "samples": sum(len(r.samples) for r in reports),
        "bytes": total_bytes,
        "sources": [r.to_json() for r in reports],
        "region": region.to_json(),
        "seconds": round(time.time() - started, 3),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "config_fingerprint": config.fingerprint(),
        "schema_version": SCHEMA_VERSION,
        "region_version": REGION_VERSION,
    }
    out.write_json(f"{name}.json", stats)
    return stats


def _record_error(report: SourceReport, reason: str, detail: str) -> None:
    report.status = "partial" if report.samples else "skipped"
    report.reason = reason
    report.detail = detail


# ---------------------------------------------------------------------------------------------
# The job


def preprocess(config: PreprocessConfig) -> dict[str, Any]:
    """Run (or resume) a preprocessing job; returns the dataset summary (also `stats.json`)."""
    started = time.time()
    sources = list_sources(config.input)
    if not sources:
        raise ValueError(f"no video files found in {config.input!r}")
    out = Output(config.output)
    try:
        out.makedirs()
        _check_config(out, config)
        out.remove_matching(f"*{TMP_MARK}*")
    except PermissionError as exc:
        raise PermissionError(f"output {config.output!r} is not writable: {exc}") from exc
    shards = assign_shards(sources, config.sources_per_shard)
    todo = [i for i in range(len(shards)) if not out.exists(f"{shard_name(i)}.json")]
    workers = min(config.workers or os.cpu_count() or 1, max(1, len(todo)))
    if config.progress:
        done = len(shards) - len(todo)
        print(
            f"musetalk preprocess: {len(sources)} sources in {len(shards)} shards "
            f"({done} already done), {workers} {config.executor} workers -> {config.output}"
        )
    failures = _run(todo, shards, config, workers)
    summary = write_summary(out, len(shards), time.time() - started)
    summary["failed_shards"] = failures
    if config.progress:
        print(format_summary(summary))
    if failures:
        raise RuntimeError(
            f"{len(failures)} shard task(s) failed and were not written: {failures}; "
            "the other shards are complete. Re-run the same command to retry them."
        )
    return summary


def _check_config(out: Output, config: PreprocessConfig) -> None:
    """Refuse to mix two different configurations in one output directory."""
    record = {"fingerprint": config.fingerprint(), "config": config.to_json()}
    if out.exists("config.json"):
        previous = out.read_json("config.json")
        if previous.get("fingerprint") != record["fingerprint"]:
            raise ValueError(
                f"{config.output} was made with a different configuration "
                f"(fingerprint {previous.get('fingerprint')} != {record['fingerprint']}); "
                "use a new output directory or delete the old one"
            )
    out.write_json("config.json", record)


def _run(todo: list[int], shards: list[list[Source]], config, workers: int) -> list[int]:
    """Run the shard tasks with the configured executor; returns the indices that failed."""
    if not todo:
        return []
    bars = _Bars(sum(len(shards[i]) for i in todo), enabled=config.progress)
    try:
        if config.executor == "ray":
            from musetalk.data.ray_executor import run_with_ray

            return run_with_ray(todo, shards, config, workers, bars)
        if workers == 1:
            failures = []
            for i in todo:
                try:
                    run_shard(i, shards[i], config, bars.update)
                except Exception as exc:
                    print(f"shard {i} failed: {type(exc).__name__}: {exc}")
                    failures.append(i)
            return failures
        return _run_pool(todo, shards, config, workers, bars)
    finally:
        bars.close()


def _run_pool(todo, shards, config, workers, bars) -> list[int]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        queue = manager.Queue()
        pump = threading.Thread(target=_pump, args=(queue, bars), daemon=True)
        pump.start()
        failures = []
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(run_shard, i, shards[i], config, _QueueProgress(queue)): i for i in todo
            }
            for future in as_completed(futures):
                try:
                    future.result()
                except Exception as exc:
                    print(f"shard {futures[future]} failed: {type(exc).__name__}: {exc}")
                    failures.append(futures[future])
        queue.put(None)
        pump.join()
    return sorted(failures)


class _QueueProgress:
    """Picklable progress callback that forwards (what, n) to the parent's queue."""

    def __init__(self, queue) -> None:
        self.queue = queue
        self.pending = 0

    def __call__(self, what: str, n: int) -> None:
        if what == "frames":
            self.pending += n
            if self.pending >= 25:
                self.queue.put(("frames", self.pending))
                self.pending = 0
        else:
            if self.pending:
                self.queue.put(("frames", self.pending))
                self.pending = 0
            self.queue.put((what, n))


def _pump(queue, bars: _Bars) -> None:
    while (item := queue.get()) is not None:
        bars.update(*item)


class _Bars:
    """Two progress bars: sources (with total) and frames (rate in frames/s)."""

    def __init__(self, total_sources: int, enabled: bool) -> None:
        self.sources = tqdm(total=total_sources, desc="sources", unit="src", disable=not enabled)
        self.frames = tqdm(desc="frames ", unit="fr", disable=not enabled)
        self.lock = threading.Lock()

    def update(self, what: str, n: int) -> None:
        with self.lock:
            (self.sources if what == "sources" else self.frames).update(n)

    def close(self) -> None:
        self.frames.close()
        self.sources.close()


# ---------------------------------------------------------------------------------------------
# Dataset summary


def write_summary(out: Output, num_shards: int, seconds: float) -> dict[str, Any]:
    """Merge the finished shards' jsons into `stats.json` and `manifest.jsonl`."""
    region = RegionStats()
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    totals: Counter = Counter()
    manifest = []
    tars = []
    for i in range(num_shards):
        name = f"{shard_name(i)}.json"
        if not out.exists(name):
            continue
        shard = out.read_json(name)
        totals["shards_done"] += 1
        totals["bytes"] += shard["bytes"]
        region.merge(RegionStats.from_json(shard["region"]))
        tars.extend(shard["tars"])
        for src in shard["sources"]:
            manifest.append({"shard": i, "tars": shard["tars"], **src})
            totals["sources"] += 1
            totals[f"sources_{src['status']}"] += 1
            if src["status"] == "skipped":
                skipped[src["reason"]] += 1
            totals["samples"] += len(src["samples"])
            totals["frames_decoded"] += src["frames_decoded"]
            totals["frames_with_face"] += src["frames_with_face"]
            totals["frames"] += src["frames_in_samples"]
            dropped.update(src["frames_dropped"])
    summary = {
        "sources": totals["sources"],
        "sources_ok": totals["sources_ok"],
        "sources_partial": totals["sources_partial"],
        "sources_skipped": dict(sorted(skipped.items())),
        "samples": totals["samples"],
        "frames": totals["frames"],
        "frames_decoded": totals["frames_decoded"],
        "frames_with_face": totals["frames_with_face"],
        "frames_dropped": dict(sorted(dropped.items())),
        "shards": num_shards,
        "shards_done": totals["shards_done"],
        "tars": tars,
        "bytes": totals["bytes"],
        **region.summary(),
        "region_version": REGION_VERSION,
        "schema_version": SCHEMA_VERSION,
        "landmark_convention": "0-based iBUG-68; nose landmarks 28/29/30",
        "seconds": round(seconds, 2),
    }
    out.write_bytes(
        "manifest.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in manifest).encode()
    )
    out.write_json("stats.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short table of the dataset summary for the terminal."""
    shares = summary["nose_landmark_shares"]
    q = summary["equivalent_shift_px"] or {}
    rows = [
        ("sources ok / partial", f"{summary['sources_ok']} / {summary['sources_partial']}"),
        *((f"skipped: {reason}", str(n)) for reason, n in summary["sources_skipped"].items()),
        ("samples", str(summary["samples"])),
        ("frames in samples / decoded", f"{summary['frames']} / {summary['frames_decoded']}"),
        ("shards (tar parts)", f"{summary['shards']} ({len(summary['tars'])})"),
        (
            "nearest nose lm 28/29/30",
            " / ".join("-" if shares[k] is None else f"{100 * shares[k]:.0f}%" for k in shares)
            + "  (MuseTalk: 15% / 63% / 22%)",
        ),
        (
            "equivalent shift px q05/q50/q95",
            " / ".join(f"{q[k]:+.1f}" for k in ("q05", "q50", "q95")) if q else "-",
        ),
        ("adjustable range px", str(summary["shift_range"])),
        ("wall time", f"{summary['seconds']:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
