"""The dataset summary of a preprocessing output: `stats.json`, `manifest.jsonl` and the table
printed at the end of a run, merged from the finished shards' stats jsons. `load_stats` is the
one reader of `stats.json` (inference's `bbox_shift=auto`, the training export, the notebook)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from musetalk.data.output import MANIFEST, STATS, Output, shard_name
from musetalk.data.schema import REGION_VERSION, SCHEMA_VERSION, check_versions
from musetalk.data.stats import RegionStats
from musetalk.errors import InputError, InputNotFoundError
from musetalk.files import read_json_object

__all__ = ["format_summary", "load_stats", "median_shift_norm", "write_summary"]


def write_summary(out: Output, num_shards: int, seconds: float) -> dict[str, Any]:
    """Merge the finished shards' jsons into `stats.json` and `manifest.jsonl` (one line per
    source of a finished shard, stamped with the output id)."""
    region = RegionStats()
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    warned: Counter = Counter()
    totals: Counter = Counter()
    manifest = []
    tars = []
    for i in range(num_shards):
        if not out.shard_done(i):
            continue
        shard = out.read_json(f"{shard_name(i)}.json")
        totals["shards_done"] += 1
        totals["bytes"] += shard["bytes"]
        region.merge(RegionStats.from_json(shard["region"]))
        tars.extend(shard["tars"])
        for src in shard["sources"]:
            manifest.append({"shard": i, "tars": shard["tars"], **src, "output_id": out.output_id})
            totals["sources"] += 1
            totals[f"sources_{src['status']}"] += 1
            if src["status"] == "skipped":
                skipped[src["reason"]] += 1
            warned.update(src.get("warnings", []))
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
        "source_warnings": dict(sorted(warned.items())),
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
    if manifest:
        lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in manifest)
        out.write_bytes(MANIFEST, lines.encode())
    elif out.exists(MANIFEST) and out.owns(MANIFEST):
        out.fs.rm(out.path(MANIFEST))  # ours, from shards that are no longer finished
    out.write_json(STATS, summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short table of the dataset summary for the terminal."""
    shares = summary["nose_landmark_shares"]
    q = summary["equivalent_shift_px"] or {}
    rows = [
        ("sources ok / partial", f"{summary['sources_ok']} / {summary['sources_partial']}"),
        *((f"skipped: {reason}", str(n)) for reason, n in summary["sources_skipped"].items()),
        *((f"warning: {what}", str(n)) for what, n in summary["source_warnings"].items()),
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


def load_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A preprocessing output's `stats.json` (given as the file or its directory), checked: it
    exists, is a JSON object, and has known schema/region versions."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / STATS
    if not path.is_file():
        raise InputNotFoundError(
            f"no stats.json at {path}: not a finished preprocess output "
            "(run preprocess/run.py input=... output=... first)"
        )
    stats = read_json_object(path, InputError)
    check_versions(stats, str(path))
    return stats


def median_shift_norm(stats: Mapping[str, Any], where: str = "stats.json") -> float:
    """The training data's median equivalent shift in nose lengths (`equivalent_shift_norm.q50`
    of a `stats.json`): what `bbox_shift=auto` transfers to an inference video."""
    quantiles = stats.get("equivalent_shift_norm")
    value = quantiles.get("q50") if isinstance(quantiles, Mapping) else None
    if not isinstance(value, (int, float)) or value != value:
        raise InputError(
            f"{where} has no equivalent_shift_norm.q50 (the median equivalent shift in nose "
            f"lengths that preprocessing writes), got {quantiles!r}"
        )
    return float(value)
