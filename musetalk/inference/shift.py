"""Choosing bbox_shift: a given number, or `auto` from the training data's region statistics.

`auto` puts the inference mask boundary where the model's training data had it, measured in nose
lengths (lm30.y - lm27.y) so it transfers across face sizes: the training data's median
equivalent shift (`stats.json` -> `equivalent_shift_norm.q50`, written by preprocessing) times
this video's median nose length, rounded and clipped to the video's adjustable range
(`musetalk.stats.recommend_bbox_shift`). Without statistics, weights whose training data is
known have a built-in value: MuseTalk's released weights were trained on boxes whose boundary was
nearest landmark 29 in 63% of frames (28: 15%, 30: 22%, S3FD detector boxes), i.e. a median
boundary at landmark 29, which is bbox_shift 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musetalk.errors import ConfigError, InputError, InputNotFoundError
from musetalk.face import region as R

__all__ = ["AUTO", "BuiltinShift", "load_shift_stats", "parse_bbox_shift", "resolve_bbox_shift"]

AUTO = "auto"


@dataclass(frozen=True)
class BuiltinShift:
    """bbox_shift=auto for weights whose training statistics are known without a stats file."""

    shift: int
    reason: str


RELEASED_DEFAULT = BuiltinShift(
    0,
    "no training statistics given (auto_stats=<stats.json>), so the built-in value for "
    "MuseTalk's released weights is used: their training boxes put the mask boundary nearest "
    "landmark 29 in 63% of frames (28: 15%, 30: 22%; S3FD detector boxes), i.e. a median "
    "boundary at landmark 29, which is bbox_shift 0",
)
RANDOM_DEFAULT = BuiltinShift(0, "random weights have no training data: bbox_shift 0")


def parse_bbox_shift(value: object) -> float | str:
    """A bbox_shift setting: a number of pixels, or "auto"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"bbox_shift must be a number of pixels or 'auto', got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"bbox_shift must be a number of pixels or 'auto', got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"bbox_shift must be finite, got {value}")
    return int(value) if value.is_integer() else value


def load_shift_stats(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A preprocess output's `stats.json` (or a directory holding it), checked for the median."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "stats.json"
    if not path.is_file():
        raise InputNotFoundError(f"auto_stats: {path} not found (a preprocess output's stats.json)")
    stats = json.loads(path.read_text())
    norm = stats.get("equivalent_shift_norm") if isinstance(stats, dict) else None
    if not isinstance(norm, Mapping) or "q50" not in norm:
        raise InputError(
            f"auto_stats: {path} has no equivalent_shift_norm.q50 (the median equivalent shift in "
            "nose lengths that preprocessing writes into stats.json)"
        )
    return stats


def resolve_bbox_shift(
    bbox_shift: float | str,
    landmarks: Iterable[object | None],
    stats: Mapping[str, Any] | None = None,
    stats_source: str = "",
    builtin: BuiltinShift | None = None,
) -> tuple[float, str]:
    """The bbox_shift to use (px of the frame) and a sentence saying why.

    bbox_shift: a number (used as given inside this video's geometric limits, `region.shift_limits`,
    else clipped to them with a warning; the sentence also notes a value outside the adjustable
    range) or "auto": from `stats` (a stats.json dict) when given, else the weights' `builtin`
    value, else ValueError. landmarks: per-frame (68, 2) arrays, None without a face.
    """
    with_face = [R.as_landmarks(lm) for lm in landmarks if lm is not None]
    if not with_face:
        raise ValueError("bbox_shift needs at least one frame with a face")
    lo, hi = R.shift_range(with_face)
    if bbox_shift != AUTO:
        shift = parse_bbox_shift(bbox_shift)
        limits = R.shift_limits(with_face)
        used = R.clip_shift(shift, limits)
        if used != shift:
            where = (
                "its lowest landmark, where the crop box vanishes"
                if shift > used
                else "the frame's top edge, where the box top stops moving"
            )
            return used, (
                f"warning: bbox_shift={shift:g} is past this video's geometric limit "
                f"[{limits[0]} ~ {limits[1]}] (the mask boundary would pass {where}): "
                f"using bbox_shift={used:g}"
            )
        if not int(lo) <= shift <= int(hi):
            return shift, (
                f"bbox_shift={shift:g} is outside this video's adjustable range "
                f"[{int(lo)} ~ {int(hi)}]: the mask boundary is "
                f"{'above landmark 28' if shift < lo else 'below landmark 30'}"
            )
        return shift, f"bbox_shift={shift:g} as given"
    if stats is not None:
        from musetalk.stats import recommend_bbox_shift

        shift, reason = recommend_bbox_shift(stats, with_face)
        return int(shift), reason + (f" (statistics: {stats_source})" if stats_source else "")
    if builtin is not None:
        shift = min(max(builtin.shift, int(lo)), int(hi))
        return shift, f"bbox_shift=auto -> {shift:+d} px: {builtin.reason}"
    raise ConfigError(
        "bbox_shift=auto needs the training data's statistics for these weights: pass "
        "auto_stats=<preprocess output>/stats.json (or export them with the weights as "
        "training.json 'shift_stats')"
    )
