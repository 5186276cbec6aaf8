"""Mergeable region statistics of a set of frames: per shard, then over the dataset.

Counts add up; the equivalent-shift distributions are kept as fixed-bin histograms so that
quantiles of the whole dataset can be computed from the shard files alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


@dataclass
class Histogram:
    """Sparse fixed-width histogram: bin k holds values in [k * width, (k + 1) * width)."""

    width: float
    bins: Counter = field(default_factory=Counter)

    def add(self, values: Iterable[float]) -> None:
        arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        idx, counts = np.unique(np.floor(arr / self.width).astype(np.int64), return_counts=True)
        self.bins.update(dict(zip(idx.tolist(), counts.tolist(), strict=True)))

    def merge(self, other: Histogram) -> None:
        if other.width != self.width:
            raise ValueError(f"cannot merge histograms of widths {self.width} and {other.width}")
        self.bins.update(other.bins)

    @property
    def count(self) -> int:
        return int(sum(self.bins.values()))

    def quantiles(self, qs: Iterable[float] = QUANTILES) -> dict[str, float] | None:
        """Quantiles at bin centres (accurate to half a bin width); None when empty."""
        if not self.bins:
            return None
        keys = np.array(sorted(self.bins))
        cum = np.cumsum([self.bins[k] for k in keys])
        out = {}
        for q in qs:
            k = keys[int(np.searchsorted(cum, q * cum[-1], side="left").clip(0, len(keys) - 1))]
            out[f"q{round(q * 100):02d}"] = round(float((k + 0.5) * self.width), 4)
        return out

    def mean(self) -> float | None:
        if not self.bins:
            return None
        keys = np.array(list(self.bins), dtype=np.float64)
        counts = np.array(list(self.bins.values()), dtype=np.float64)
        return round(float(((keys + 0.5) * self.width * counts).sum() / counts.sum()), 4)

    def to_json(self) -> dict[str, Any]:
        return {"width": self.width, "bins": {str(k): v for k, v in sorted(self.bins.items())}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Histogram:
        return cls(float(obj["width"]), Counter({int(k): int(v) for k, v in obj["bins"].items()}))


@dataclass
class RegionStats:
    """Frame statistics of samples: nearest nose landmark counts, equivalent shift, range sums."""

    frames: int = 0
    nose_landmark_counts: Counter = field(default_factory=Counter)
    shift_px: Histogram = field(default_factory=lambda: Histogram(0.25))
    shift_norm: Histogram = field(default_factory=lambda: Histogram(0.01))
    up_sum: float = 0.0  # sum of lm29.y - lm28.y
    down_sum: float = 0.0  # sum of lm30.y - lm29.y

    def add_sample(self, meta: dict[str, Any]) -> None:
        """Add the frames of one sample's json."""
        lms = np.asarray(meta["landmarks"], dtype=np.float64)
        self.frames += len(lms)
        self.nose_landmark_counts.update(str(k) for k in meta["nearest_nose_landmark"])
        self.shift_px.add(meta["equivalent_shift"])
        self.shift_norm.add(meta["equivalent_shift_norm"])
        self.up_sum += float((lms[:, 29, 1] - lms[:, 28, 1]).sum())
        self.down_sum += float((lms[:, 30, 1] - lms[:, 29, 1]).sum())

    def merge(self, other: RegionStats) -> None:
        self.frames += other.frames
        self.nose_landmark_counts.update(other.nose_landmark_counts)
        self.shift_px.merge(other.shift_px)
        self.shift_norm.merge(other.shift_norm)
        self.up_sum += other.up_sum
        self.down_sum += other.down_sum

    def shift_range(self) -> list[float] | None:
        """The geometric adjustable range [-mean(lm29-lm28), mean(lm30-lm29)] over the frames."""
        if not self.frames:
            return None
        return [round(-self.up_sum / self.frames, 3), round(self.down_sum / self.frames, 3)]

    def summary(self) -> dict[str, Any]:
        """The human-facing numbers (counts, shares, quantiles, range)."""
        counts = {k: int(self.nose_landmark_counts.get(k, 0)) for k in ("28", "29", "30")}
        total = sum(counts.values())
        return {
            "nose_landmark_counts": counts,
            "nose_landmark_shares": {
                k: round(v / total, 4) if total else None for k, v in counts.items()
            },
            "equivalent_shift_px": self.shift_px.quantiles(),
            "equivalent_shift_px_mean": self.shift_px.mean(),
            "equivalent_shift_norm": self.shift_norm.quantiles(),
            "equivalent_shift_norm_mean": self.shift_norm.mean(),
            "shift_range": self.shift_range(),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "nose_landmark_counts": dict(self.nose_landmark_counts),
            "shift_px": self.shift_px.to_json(),
            "shift_norm": self.shift_norm.to_json(),
            "up_sum": self.up_sum,
            "down_sum": self.down_sum,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RegionStats:
        return cls(
            frames=int(obj["frames"]),
            nose_landmark_counts=Counter(obj["nose_landmark_counts"]),
            shift_px=Histogram.from_json(obj["shift_px"]),
            shift_norm=Histogram.from_json(obj["shift_norm"]),
            up_sum=float(obj["up_sum"]),
            down_sum=float(obj["down_sum"]),
        )
