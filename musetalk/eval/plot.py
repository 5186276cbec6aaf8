"""The evaluation report's figure: the offset curve and the per-frame mouth distance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.timebase import FPS

__all__ = ["plot_report"]


def plot_report(path: Path, report: dict[str, Any], per_frame: dict[str, np.ndarray]) -> None:
    """Write `path` (PNG): left the offset curve (its minimum marked), right the mouth LMD per
    frame over time (when a reference was given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    curve = {int(k): v for k, v in (report.get("offset_curve") or {}).items() if v is not None}
    measure = report.get("offset_measure", "lmd")
    if curve:
        ks = sorted(curve)
        left.plot(ks, [curve[k] for k in ks], marker="o", markersize=3)
        if report.get("av_offset") is not None:
            left.axvline(report["av_offset"], color="tab:red", linestyle="--", label="AV offset")
            left.legend()
    left.axvline(0, color="grey", linewidth=0.8)
    left.set_xlabel("offset k (frames at 25 fps; + = generated mouth late)")
    ylabel = "SyncNet mean distance" if measure == "syncnet" else "mouth LMD (inter-ocular units)"
    left.set_ylabel(ylabel)
    left.set_title(f"Offset curve ({measure}): AV offset {report.get('av_offset')}")
    if "lmd" in per_frame:
        seconds = per_frame["frame"] / FPS
        right.plot(seconds, per_frame["lmd"], linewidth=1)
        right.set_title(f"Mouth LMD per frame (mean {report.get('lmd')})")
    else:
        right.set_title("Mouth LMD per frame (no reference)")
    right.set_xlabel("time (s)")
    right.set_ylabel("LMD (inter-ocular units)")
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
