"""The Statistics tab: the notebook's plots of a preprocess output, through `musetalk.stats`.

Given the output directory (its shards are read: per-frame values, exact) or only its
`stats.json` (the merged summary: shares, quantiles and per-source ranges), three figures:
where the training mask boundary falls (shares of landmarks 28/29/30 beside MuseTalk's
15/63/22), the equivalent-shift distribution, and the adjustable range per source with the
training boundary in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from musetalk import stats  # noqa: E402
from musetalk.errors import InputError, InputNotFoundError  # noqa: E402
from musetalk.face import region  # noqa: E402

__all__ = ["StatsView", "statistics"]

LANDMARKS = list(region.NOSE_LANDMARKS)


@dataclass
class StatsView:
    """The three figures and a text summary of one preprocess output."""

    shares: Figure
    distribution: Figure
    ranges: Figure
    text: str


def statistics(path: str | Path | None) -> StatsView:
    """Figures of a preprocess output directory (shards read when present) or its stats.json."""
    if not path or not str(path).strip():
        raise InputError("give a preprocess output directory or its stats.json")
    path = Path(str(path).strip()).expanduser()
    if not path.exists():
        raise InputNotFoundError(f"not found: {path}")
    summary = stats.load_stats(path)
    root = path if path.is_dir() else path.parent
    if summary.get("tars") and all((root / t).is_file() for t in summary["tars"]):
        return _from_frames(stats.load_frames(root), summary)
    return _from_summary(summary)


def _from_frames(frames: pd.DataFrame, summary: Mapping[str, Any]) -> StatsView:
    shares = stats.nose_landmark_shares(frames)
    norm = stats.training_shift_norm(frames)
    ranges = stats.per_source_ranges(frames)
    fig_shares = _shares_figure(shares["share"].reindex(LANDMARKS).to_numpy(), len(frames))
    fig_dist, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, column, unit in zip(axes, stats.SHIFT_COLUMNS, ("px", "nose lengths"), strict=True):
        values = frames[column].dropna()
        ax.hist(values, bins=40, color="tab:blue", alpha=0.8)
        ax.axvline(0, color="black", ls="--", lw=1)
        ax.axvline(values.median(), color="tab:red", lw=2, label=f"median {values.median():+.2f}")
        ax.set_xlabel(f"equivalent bbox_shift ({unit})")
        ax.set_ylabel("frames")
        ax.legend(fontsize=8)
    fig_dist.suptitle("Equivalent bbox_shift of the training boxes, all frames")
    rows = [
        (str(s), r["lo"], r["hi"], r["median_shift"], r["boundary_position"])
        for s, r in ranges.iterrows()
    ]
    text = _text(summary, len(frames), shares["share"].reindex(LANDMARKS).to_numpy(), norm, rows)
    return StatsView(fig_shares, fig_dist, _ranges_figure(rows), text)


def _from_summary(summary: Mapping[str, Any]) -> StatsView:
    raw = summary.get("nose_landmark_shares") or {}
    values = np.array([raw.get(str(k)) or 0.0 for k in LANDMARKS], dtype=float)
    fig_shares = _shares_figure(values, int(summary.get("frames") or 0))
    fig_dist, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, key, unit in zip(
        axes, ("equivalent_shift_px", "equivalent_shift_norm"), ("px", "nose lengths"), strict=True
    ):
        q = summary.get(key) or {}
        levels = sorted(q, key=lambda k: float(k[1:]))
        ax.plot([q[k] for k in levels], [float(k[1:]) for k in levels], "o-", color="tab:blue")
        ax.axvline(0, color="black", ls="--", lw=1)
        if "q50" in q:
            ax.axvline(q["q50"], color="tab:red", lw=2, label=f"median {q['q50']:+.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel(f"equivalent bbox_shift ({unit})")
        ax.set_ylabel("percentile (stats.json quantiles)")
    fig_dist.suptitle("Equivalent bbox_shift of the training boxes (stats.json quantiles)")
    rows = []
    for src in summary.get("sources_region") or []:
        if not src.get("shift_range"):
            continue
        lo, hi = src["shift_range"]
        median = src.get("equivalent_shift_px_q50")
        median = float("nan") if median is None else float(median)
        position = (median - lo) / (hi - lo) if hi > lo else float("nan")
        rows.append((str(src.get("source_id") or src.get("source")), lo, hi, median, position))
    try:
        norm = stats.training_shift_norm(summary)
    except (InputError, ValueError):
        norm = float("nan")
    text = _text(summary, int(summary.get("frames") or 0), values, norm, rows)
    return StatsView(fig_shares, fig_dist, _ranges_figure(rows), text)


def _shares_figure(shares: np.ndarray, frames: int) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    published = [stats.MUSETALK_NOSE_LANDMARK_SHARES[k] for k in LANDMARKS]
    x = np.arange(3)
    ax.bar(x - 0.2, 100 * np.asarray(published), 0.4, label="MuseTalk (published)")
    ax.bar(x + 0.2, 100 * shares, 0.4, label=f"this dataset ({frames} frames)")
    ax.set_xticks(x, [f"landmark {k}" for k in LANDMARKS])
    ax.set_ylabel("share of frames (%)")
    ax.set_title("Nose landmark nearest to the training mask boundary")
    ax.legend(fontsize=8)
    return fig


def _ranges_figure(rows: list[tuple[str, float, float, float, float]]) -> Figure:
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.6 * max(1, len(rows))), layout="constrained")
    for y, (_, lo, hi, median, position) in enumerate(rows):
        ax.plot([lo, hi], [y, y], color="tab:gray", lw=8, alpha=0.5)
        if np.isfinite(median):
            ax.plot(median, y, "o", color="tab:red")
            if np.isfinite(position):
                ax.annotate(
                    f"{position:.0%}", (median, y), xytext=(0, 8), textcoords="offset points"
                )
    ax.axvline(0, color="black", ls="--", lw=1)
    ax.plot([], [], color="tab:gray", lw=8, alpha=0.5, label="adjustable range (lm28 ~ lm30)")
    ax.plot([], [], "o", color="tab:red", label="training boundary (median)")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(-0.7, max(1, len(rows)) - 0.3)
    ax.set_xlabel("bbox_shift (px of the source frame; + = down towards the mouth)")
    ax.set_title("Adjustable range and training boundary per source")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _text(
    summary: Mapping[str, Any],
    frames: int,
    shares: np.ndarray,
    norm: float,
    rows: list[tuple[str, float, float, float, float]],
) -> str:
    backend = summary.get("face_backend") or "unknown face backend"
    lines = [
        f"{frames} frames, face backend {backend}: boundary nearest landmark 28 / 29 / 30 in "
        + " / ".join(f"{100 * s:.0f}%" for s in shares)
        + " (MuseTalk: 15% / 63% / 22%)",
        f"median equivalent shift: {norm:+.3f} nose lengths (what bbox_shift=auto transfers)",
    ]
    for name, lo, hi, median, _ in rows:
        lines.append(
            f"{name}: range {region.range_text((lo, hi))}, training boundary {median:+.1f} px"
        )
    if summary.get("boundary_notice"):
        lines.append(str(summary["boundary_notice"]))
    return "\n".join(lines)
