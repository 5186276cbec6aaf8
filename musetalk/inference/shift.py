"""Choosing bbox_shift for a video: a given number, or `auto` from the training data's statistics.

`resolve_bbox_shift` is the one place a video's bbox_shift is decided. It computes the video's
adjustable range (`region.shift_range`) and geometric limits (`region.shift_limits`) once and
returns them with the choice (`ShiftChoice`), so the printed range line and the reason reuse
them. A number is used as given inside the geometric limits and clipped to them (with a
warning) outside; `auto` puts the inference mask boundary where the model's training data had
it, measured in nose lengths (lm30.y - lm27.y) so it transfers across face sizes: the training
data's median equivalent shift (`stats.json` -> `equivalent_shift_norm.q50`, written by
preprocessing) times this video's median nose length, rounded; used even outside the adjustable
range (where the training data put it is what the model learnt), clipped only to the geometric
limits (`recommend_bbox_shift`). Without statistics, weights whose training data is known have a
built-in value: MuseTalk's released weights were trained on boxes whose boundary was nearest
landmark 29 in 63% of frames (28: 15%, 30: 22%, S3FD detector boxes), i.e. a median boundary at
landmark 29, which is bbox_shift 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from musetalk.data.summary import median_shift_norm
from musetalk.errors import ConfigError
from musetalk.face import region

__all__ = [
    "AUTO",
    "DETECTOR_CAVEAT",
    "RANDOM_DEFAULT",
    "RELEASED_DEFAULT",
    "BuiltinShift",
    "ShiftChoice",
    "ShiftRecommendation",
    "parse_bbox_shift",
    "recommend_bbox_shift",
    "resolve_bbox_shift",
]

AUTO = "auto"

#: Why a shift learnt from one dataset may not suit another model (part of every auto reason).
DETECTOR_CAVEAT = (
    "The statistic depends on the face detector used in preprocessing (where its box top "
    "sits): it matches models trained on shards made with the same face backend; for "
    "MuseTalk's released weights (S3FD boxes, boundary mostly nearest landmark 29) the "
    "matching value is about 0."
)


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
    """A bbox_shift setting: a finite number of pixels (int when whole), or "auto"."""
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
    if not np.isfinite(value):
        raise ValueError(f"bbox_shift must be finite, got {value}")
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class ShiftChoice:
    """The bbox_shift used for a video and why.

    shift: pixels of the frame, as used. reason: a sentence (a clipped value starts with
    "warning:"). requested: the setting (a number or "auto"). shift_range: the adjustable range
    (lo, hi), px; limits: the geometric limits (lo, hi), whole px; num_frames: frames of the
    video (with or without a face), for the range line.
    """

    shift: float
    reason: str
    requested: float | str
    shift_range: tuple[float, float]
    limits: tuple[int, int]
    num_frames: int

    def range_line(self) -> str:
        """`Total frame: N  Manually adjust range: [lo ~ hi], the current value: s`."""
        return region.format_shift_range(self.num_frames, self.shift_range, self.shift)


class ShiftRecommendation(NamedTuple):
    """`bbox_shift=auto`: the integer shift (px of the inference video) and why."""

    shift: int
    reason: str


def recommend_bbox_shift(
    norm: float,
    landmarks: Iterable[object | None],
    origin: str = "",
    shift_range: tuple[float, float] | None = None,
    limits: tuple[int, int] | None = None,
) -> ShiftRecommendation:
    """The bbox_shift that puts the inference mask boundary where the training data had it.

    norm: the training data's median equivalent shift in nose lengths. Recommended px = norm x
    (median nose length lm30.y - lm27.y of the inference video), rounded to whole pixels. It is
    used even outside the video's adjustable range (MuseTalk's advice: boundary between
    landmarks 28 and 30), because that is where the model learnt to inpaint; the reason says
    so. Only the geometric limits (`region.shift_limits`) clip it. landmarks: the video's
    per-frame (68, 2) arrays, None without a face; shift_range / limits: their
    `region.shift_range` / `region.shift_limits` when already computed. origin: where `norm`
    came from (for the text).
    """
    with_face = [region.as_landmarks(lm) for lm in landmarks if lm is not None]
    lo, hi = shift_range if shift_range is not None else region.shift_range(with_face)
    limits = limits if limits is not None else region.shift_limits(with_face)
    lengths = np.array([region.nose_length(lm) for lm in with_face])
    lengths = lengths[np.isfinite(lengths) & (lengths > 0)]
    if not len(lengths):
        raise ValueError("no frame of the inference video has a positive nose length")
    nose = float(np.median(lengths))
    wanted = norm * nose
    lo_i, hi_i = int(lo), int(hi)
    shift = int(region.clip_shift(round(wanted), limits))
    if lo_i <= shift <= hi_i:
        fit = f"inside this video's adjustable range [{lo_i} ~ {hi_i}] px"
    else:
        side = "below landmark 30" if shift > hi_i else "above landmark 28"
        fit = (
            f"outside this video's adjustable range [{lo_i} ~ {hi_i}] px (MuseTalk's advice: "
            f"boundary between landmarks 28 and 30): {side}, used anyway because that is where "
            "this model's training data had its boundary"
        )
    if shift != round(wanted):
        fit += (
            f"; clipped to {shift:+d}, the geometric limit [{limits[0]} ~ {limits[1]}] "
            "beyond which the shift no longer moves the boundary"
        )
    reason = (
        f"bbox_shift=auto -> {shift:+d} px. The training boxes put the mask boundary a median "
        f"{norm:+.3f} nose lengths from landmark 29 (+ = below){origin}. This video's "
        f"median nose length (lm30.y - lm27.y) is {nose:.1f} px, so the same boundary is "
        f"{wanted:+.1f} px from landmark 29, {fit}. {DETECTOR_CAVEAT}"
    )
    return ShiftRecommendation(shift, reason)


def resolve_bbox_shift(
    bbox_shift: float | str,
    landmarks: list[object | None],
    stats: Mapping[str, Any] | None = None,
    stats_source: str = "",
    builtin: BuiltinShift | None = None,
) -> ShiftChoice:
    """The bbox_shift to use for a video and why (see the module docstring).

    bbox_shift: a number or "auto" (as `parse_bbox_shift` returns). landmarks: per-frame
    (68, 2) arrays of the video, None for frames without a face. stats: the training data's
    stats.json for auto; else the weights' `builtin` value; else ConfigError.
    """
    with_face = [region.as_landmarks(lm) for lm in landmarks if lm is not None]
    if not with_face:
        raise ValueError("bbox_shift needs at least one frame with a face")
    lo, hi = region.shift_range(with_face)
    limits = region.shift_limits(with_face)

    def choice(shift: float, reason: str) -> ShiftChoice:
        return ShiftChoice(shift, reason, bbox_shift, (lo, hi), limits, len(landmarks))

    if bbox_shift == AUTO:
        if stats is not None:
            where = stats_source or "stats.json"
            origin = f" (statistics: {stats_source})" if stats_source else ""
            rec = recommend_bbox_shift(
                median_shift_norm(stats, where), with_face, shift_range=(lo, hi), limits=limits
            )
            return choice(rec.shift, rec.reason + origin)
        if builtin is None:
            raise ConfigError(
                "bbox_shift=auto needs the training data's statistics for these weights: pass "
                "auto_stats=<preprocess output>/stats.json (or export them with the weights as "
                "training.json 'shift_stats')"
            )
        shift = min(max(builtin.shift, int(lo)), int(hi))
        return choice(shift, f"bbox_shift=auto -> {shift:+d} px: {builtin.reason}")
    used = region.clip_shift(bbox_shift, limits)
    if used != bbox_shift:
        where = (
            "its lowest landmark, where the crop box vanishes"
            if bbox_shift > used
            else "the frame's top edge, where the box top stops moving"
        )
        return choice(
            used,
            f"warning: bbox_shift={bbox_shift:g} is past this video's geometric limit "
            f"[{limits[0]} ~ {limits[1]}] (the mask boundary would pass {where}): "
            f"using bbox_shift={used:g}",
        )
    if not int(lo) <= bbox_shift <= int(hi):
        side = "above landmark 28" if bbox_shift < lo else "below landmark 30"
        return choice(
            bbox_shift,
            f"bbox_shift={bbox_shift:g} is outside this video's adjustable range "
            f"[{int(lo)} ~ {int(hi)}]: the mask boundary is {side}",
        )
    return choice(bbox_shift, f"bbox_shift={bbox_shift:g} as given")
