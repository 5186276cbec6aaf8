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
from musetalk.face import region
from musetalk.files import read_json_object

__all__ = ["format_summary", "load_stats", "median_shift_norm", "write_summary"]


def write_summary(
    out: Output, num_shards: int, seconds: float, face_backend: str | None = None
) -> dict[str, Any]:
    """Merge the finished shards' jsons into `stats.json` and `manifest.jsonl` (one line per
    source of a finished shard, stamped with the output id). face_backend: the preprocessing
    face backend, named in the summary and in the notice about the mask boundary."""
    region = RegionStats()
    skipped: Counter = Counter()
    dropped: Counter = Counter()
    warned: Counter = Counter()
    totals: Counter = Counter()
    manifest = []
    tars = []
    per_source = []
    for i in range(num_shards):
        if not out.shard_done(i):
            continue
        shard = out.read_json(f"{shard_name(i)}.json")
        totals["shards_done"] += 1
        totals["bytes"] += shard["bytes"]
        region.merge(RegionStats.from_json(shard["region"]))
        tars.extend(shard["tars"])
        for src in shard["sources"]:
            src = dict(src)
            source_region = src.pop("region", None)  # per-source statistics (schema 2 shards)
            if source_region is not None and source_region["frames"]:
                per_source.append(source_row(src, RegionStats.from_json(source_region)))
            attempts = shard.get("attempt", 1)
            manifest.append(
                {"shard": i, "tars": shard["tars"], "attempts": attempts, **src}
                | {"output_id": out.output_id}
            )
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
        "face_backend": face_backend,
        "sources_region": per_source,
        "region_version": REGION_VERSION,
        "schema_version": SCHEMA_VERSION,
        "landmark_convention": "0-based iBUG-68; nose landmarks 28/29/30",
        "seconds": round(seconds, 2),
    }
    summary["boundary_notice"] = boundary_notice(summary)
    if manifest:
        lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in manifest)
        out.write_bytes(MANIFEST, lines.encode())
    elif out.exists(MANIFEST) and out.owns(MANIFEST):
        out.fs.rm(out.path(MANIFEST))  # ours, from shards that are no longer finished
    out.write_json(STATS, summary)
    return summary


#: MuseTalk's training data: share of frames whose mask boundary is nearest landmark 28/29/30.
MUSETALK_SHARES = {"28": 0.15, "29": 0.63, "30": 0.22}
#: Per-source rows printed at the end of a run (all of them are in stats.json).
MAX_PRINTED_SOURCES = 20


def _shares_text(shares: Mapping[str, float | None]) -> str:
    return " / ".join("-" if shares[k] is None else f"{100 * shares[k]:.0f}%" for k in shares)


def source_row(src: Mapping[str, Any], stats: RegionStats) -> dict[str, Any]:
    """One source's region statistics: landmark shares, median shift, range (stats.json)."""
    summary = stats.summary()
    return {
        "source": Path(src["video"]).name,
        "source_id": src["source_id"],
        "frames": stats.frames,
        "nose_landmark_shares": summary["nose_landmark_shares"],
        "equivalent_shift_px_q50": (summary["equivalent_shift_px"] or {}).get("q50"),
        "equivalent_shift_norm_q50": (summary["equivalent_shift_norm"] or {}).get("q50"),
        "shift_range": summary["shift_range"],
    }


def boundary_notice(summary: Mapping[str, Any]) -> str | None:
    """What it means when the median mask boundary of the data lies outside landmarks 28..30
    (MuseTalk's training data had it there), or None when it does not."""
    px = (summary.get("equivalent_shift_px") or {}).get("q50")
    norm = (summary.get("equivalent_shift_norm") or {}).get("q50")
    shift_range = summary.get("shift_range")
    if px is None or norm is None or not shift_range:
        return None
    lo, hi = shift_range
    if lo <= px <= hi:
        return None
    below = px > hi
    backend = summary.get("face_backend") or "this"
    text = (
        f"the median mask boundary of these shards lies {abs(norm):.2f} nose lengths "
        f"{'below' if below else 'above'} landmark 29 ({px:+.1f} px), "
        f"{'below landmark 30' if below else 'above landmark 28'}, outside the range "
        f"{region.range_text(shift_range)} px where MuseTalk's training data had it "
        f"(nearest 28/29/30: {_shares_text(MUSETALK_SHARES)}). The boundary follows the face "
        f"detector's box top ({backend} backend). Models trained on these shards inpaint "
        f"{'less' if below else 'more'} of the face than MuseTalk's, and bbox_shift=auto with "
        "them aims at this boundary too."
    )
    if summary.get("face_backend") != "fan":
        text += " face=fan uses MuseTalk's detector family (S3FD boxes, FAN landmarks)."
    return text


def format_summary(summary: dict[str, Any]) -> str:
    """A short table of the dataset summary for the terminal: totals, the region statistics
    beside MuseTalk's, per-source rows (up to MAX_PRINTED_SOURCES) and the boundary notice."""
    shares = summary["nose_landmark_shares"]
    q = summary["equivalent_shift_px"] or {}
    shift_range = summary["shift_range"]
    rows = [
        ("sources ok / partial", f"{summary['sources_ok']} / {summary['sources_partial']}"),
        *((f"skipped: {reason}", str(n)) for reason, n in summary["sources_skipped"].items()),
        *((f"warning: {what}", str(n)) for what, n in summary["source_warnings"].items()),
        ("samples", str(summary["samples"])),
        ("frames in samples / decoded", f"{summary['frames']} / {summary['frames_decoded']}"),
        ("shards (tar parts)", f"{summary['shards']} ({len(summary['tars'])})"),
        ("face backend", str(summary.get("face_backend") or "-")),
        (
            "nearest nose lm 28/29/30",
            f"{_shares_text(shares)}  (MuseTalk: {_shares_text(MUSETALK_SHARES)})",
        ),
        (
            "equivalent shift px q05/q50/q95",
            " / ".join(f"{q[k]:+.1f}" for k in ("q05", "q50", "q95")) if q else "-",
        ),
        ("adjustable range px", region.range_text(shift_range) if shift_range else "-"),
        ("wall time", f"{summary['seconds']:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"  {name:<{width}}  {value}" for name, value in rows]
    sources = summary.get("sources_region") or []
    if sources:
        lines.append("  per source: frames, nearest lm 28/29/30, median shift px, range px")
        for row in sources[:MAX_PRINTED_SOURCES]:
            median = row["equivalent_shift_px_q50"]
            lines.append(
                f"    {row['source']}: {row['frames']}, {_shares_text(row['nose_landmark_shares'])}"
                f", {'-' if median is None else f'{median:+.1f}'}, "
                f"{region.range_text(row['shift_range'])}"
            )
        if len(sources) > MAX_PRINTED_SOURCES:
            lines.append(
                f"    ... {len(sources) - MAX_PRINTED_SOURCES} more in stats.json (sources_region)"
            )
    if summary.get("boundary_notice"):
        lines.append(f"  notice: {summary['boundary_notice']}")
    return "\n".join(lines)


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
