"""Region statistics of a preprocess output as tidy tables, and the `bbox_shift=auto` rule.

`load_frames` reads only the sample jsons of the shards (never the image, audio or feature
payloads) into one row per frame; the other functions turn that table into what the notebook
`notebooks/shift_statistics.ipynb` plots. `recommend_bbox_shift` is the pure function behind
`infer.py bbox_shift=auto`.

All pixel values are pixels of the original frame; landmark numbers are 0-based iBUG-68
(28 mid nose bridge, 29 lower nose bridge, 30 nose tip). A shift "in nose lengths" is a shift in
pixels divided by lm30.y - lm27.y. (`musetalk.data.stats` holds the mergeable histograms written
during preprocessing; this module works on the per-frame values.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from musetalk.data.reader import iter_metas
from musetalk.data.stats import QUANTILES
from musetalk.data.summary import load_stats, median_shift_norm
from musetalk.face import region
from musetalk.inference.shift import ShiftRecommendation
from musetalk.inference.shift import recommend_bbox_shift as _recommend

#: Share of training frames whose mask upper bound was nearest landmark 28 / 29 / 30, as
#: published by MuseTalk (assets/BBOX_SHIFT.md; S3FD detector boxes).
MUSETALK_NOSE_LANDMARK_SHARES: dict[int, float] = {28: 0.15, 29: 0.63, 30: 0.22}

#: Environment variable the notebook reads the dataset directory from.
SHARDS_ENV = "MUSETALK_SHARDS"

#: The per-frame shift columns: px and nose lengths.
SHIFT_COLUMNS = ("equivalent_shift", "equivalent_shift_norm")


def shards_dir_from_env(name: str = SHARDS_ENV) -> Path:
    """The preprocess output directory named by environment variable `name`.

    Raises ValueError when it is unset or empty, FileNotFoundError when it is not a directory.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        raise ValueError(
            f"environment variable {name} is not set: set it to a preprocess output directory "
            "(the output= of preprocess/run.py), e.g. "
            f"{name}=/data/shards jupyter nbconvert --to notebook --execute "
            "notebooks/shift_statistics.ipynb"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{name}={value!r} is not a directory")
    return path


def iter_sample_meta(dataset_dir: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(tar name, checked sample json) for every sample of a finished preprocess output, in
    shard order; only the json members are read (`musetalk.data.reader.iter_metas`)."""
    root = Path(dataset_dir)
    for url, meta in iter_metas([str(root / t) for t in load_stats(root)["tars"]]):
        yield Path(url).name, meta


def _sample_columns(tar_name: str, meta: dict[str, Any], landmarks: bool) -> dict[str, Any]:
    n = int(meta["num_frames"])
    lms = np.asarray(meta["landmarks"], dtype=np.float64).reshape(n, 68, 2)
    det = np.asarray(meta["det_box"], dtype=np.float64).reshape(n, 4)
    norm = [np.nan if v is None else float(v) for v in meta["equivalent_shift_norm"]]
    cols: dict[str, Any] = {
        "source_id": [meta["source_id"]] * n,
        "source": [meta["source"]] * n,
        "audio_source": [meta["audio_source"]] * n,
        "key": [meta["key"]] * n,
        "shard": [tar_name] * n,
        "track_id": np.full(n, meta["track_id"], dtype=np.int64),
        "face_backend": [meta["face"]["backend"]] * n,
        "source_height": np.full(n, meta["source_size"][0], dtype=np.int64),
        "source_width": np.full(n, meta["source_size"][1], dtype=np.int64),
        "sample_frame": np.arange(n, dtype=np.int64),
        "frame_index": np.asarray(meta["frame_index"], dtype=np.int64),
        "time": np.asarray(meta["frame_index"], dtype=np.float64) / float(meta["fps"]),
        "det_x1": det[:, 0],
        "det_y1": det[:, 1],
        "det_x2": det[:, 2],
        "det_y2": det[:, 3],
        "lm_max_y": lms[:, :, 1].max(axis=1),
        "lm27_y": lms[:, 27, 1],
        "lm28_y": lms[:, 28, 1],
        "lm29_y": lms[:, 29, 1],
        "lm30_y": lms[:, 30, 1],
        "nose_length": np.asarray(meta["nose_length"], dtype=np.float64),
        "mask_upper_bound": np.asarray(meta["mask_upper_bound"], dtype=np.float64),
        "nearest_nose_landmark": np.asarray(meta["nearest_nose_landmark"], dtype=np.int64),
        "equivalent_shift": np.asarray(meta["equivalent_shift"], dtype=np.float64),
        "equivalent_shift_norm": np.asarray(norm, dtype=np.float64),
        "detected": np.asarray(meta["detected"], dtype=bool),
    }
    if landmarks:
        cols["landmarks"] = list(lms)
    return cols


def load_frames(dataset_dir: str | Path, landmarks: bool = True) -> pd.DataFrame:
    """One row per frame of a preprocess output, from its sample jsons only.

    Columns: source_id, source (video path), audio_source, key (sample), shard (tar),
    track_id, face_backend, source_height/width (px), sample_frame (0-based in the sample),
    frame_index (0-based in the source at 25 fps), time (s), det_x1..det_y2 (detector box, px),
    lm_max_y, lm27_y..lm30_y (px), nose_length (lm30.y - lm27.y, px), mask_upper_bound (y of
    the training box's middle row, px), nearest_nose_landmark (28/29/30), equivalent_shift (px),
    equivalent_shift_norm (nose lengths; NaN when the nose length is not > 0), detected, and
    with `landmarks=True` a `landmarks` column of (68, 2) float arrays (about 1 kB per frame;
    needed by `per_source_ranges`). Unknown schema/region versions raise ShardError.
    """
    parts = [_sample_columns(tar, meta, landmarks) for tar, meta in iter_sample_meta(dataset_dir)]
    if not parts:
        raise ValueError(f"{dataset_dir}: the dataset has no samples")
    columns = {
        name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != "landmarks"
    }
    if landmarks:
        columns["landmarks"] = [lm for p in parts for lm in p["landmarks"]]
    return pd.DataFrame(columns)


def _group_keys(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def nose_landmark_shares(
    frames: pd.DataFrame, by: str | Sequence[str] | None = None
) -> pd.DataFrame:
    """Frames whose training mask boundary is nearest landmark 28 / 29 / 30: count and share.

    Index: landmark (28, 29, 30), or (by..., landmark) when grouped. Columns: count, share
    (of the group's frames, sums to 1) and musetalk_share (MuseTalk's published shares).
    """
    values = frames["nearest_nose_landmark"]
    unknown = sorted(set(values.unique().tolist()) - set(region.NOSE_LANDMARKS))
    if unknown:
        raise ValueError(
            f"nearest_nose_landmark must be one of {region.NOSE_LANDMARKS}, got {unknown}"
        )
    keys = _group_keys(by)
    if keys:
        counts = (
            frames.groupby(keys)["nearest_nose_landmark"]
            .value_counts()
            .unstack(fill_value=0)
            .reindex(columns=list(region.NOSE_LANDMARKS), fill_value=0)
        )
        counts.columns.name = "landmark"
        table = (
            counts.melt(ignore_index=False, value_name="count")
            .set_index("landmark", append=True)
            .sort_index()
        )
        table["share"] = table["count"] / table.groupby(level=keys)["count"].transform("sum")
    else:
        counts = values.value_counts().reindex(list(region.NOSE_LANDMARKS), fill_value=0)
        table = pd.DataFrame({"count": counts, "share": counts / counts.sum()})
        table.index.name = "landmark"
    landmark = table.index.get_level_values("landmark")
    table["musetalk_share"] = [MUSETALK_NOSE_LANDMARK_SHARES[int(k)] for k in landmark]
    return table


def shift_quantiles(
    frames: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    qs: Sequence[float] = QUANTILES,
) -> pd.DataFrame:
    """Quantiles of the equivalent shift, in px (`equivalent_shift`) and nose lengths
    (`equivalent_shift_norm`), with linear interpolation (numpy's default), NaNs skipped.

    Index: q, or (by..., q) when grouped.
    """
    keys = _group_keys(by)
    columns = list(SHIFT_COLUMNS)
    if keys:
        table = frames.groupby(keys)[columns].quantile(list(qs))
        return table.rename_axis([*keys, "q"])
    return frames[columns].quantile(list(qs)).rename_axis("q")


def per_source_ranges(frames: pd.DataFrame, by: str = "source_id") -> pd.DataFrame:
    """Per source: the adjustable bbox_shift range and where the training boundary sits in it.

    Columns: frames, lo / hi (`region.shift_range` over the source's frames, px: boundary at
    landmark 28 / 30 on average), range_text (the line inference prints), median_shift (px) and
    median_shift_norm (nose lengths) of the equivalent shift, median_nose_length (px), and
    boundary_position = (median_shift - lo) / (hi - lo): 0 at the landmark-28 end, 1 at the
    landmark-30 end, above 1 below the nose tip.
    """
    if "landmarks" not in frames:
        raise ValueError(
            "per_source_ranges needs the landmarks column: load_frames(landmarks=True)"
        )
    rows = []
    for name, group in frames.groupby(by, sort=True):
        lo, hi = region.shift_range(group["landmarks"])
        median = float(group["equivalent_shift"].median())
        rows.append(
            {
                by: name,
                "frames": len(group),
                "lo": lo,
                "hi": hi,
                "range_text": region.format_shift_range(len(group), (lo, hi), 0),
                "median_shift": median,
                "median_shift_norm": float(group["equivalent_shift_norm"].median()),
                "median_nose_length": float(group["nose_length"].median()),
                "boundary_position": (median - lo) / (hi - lo) if hi > lo else np.nan,
            }
        )
    return pd.DataFrame(rows).set_index(by)


def training_shift_norm(stats: pd.DataFrame | Mapping[str, Any] | float) -> float:
    """The training data's median equivalent shift in nose lengths.

    stats: a `load_frames` table (exact median), a `stats.json` summary (its histogram q50,
    within 0.005 nose lengths) or the number itself.
    """
    if isinstance(stats, pd.DataFrame):
        value = stats["equivalent_shift_norm"].median()
    elif isinstance(stats, Mapping):
        value = median_shift_norm(stats)
    else:
        value = stats
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"the median normalised equivalent shift is not a number: {value}")
    return value


def recommend_bbox_shift(
    stats: pd.DataFrame | Mapping[str, Any] | float,
    landmarks: Iterable[object | None],
) -> ShiftRecommendation:
    """`bbox_shift=auto` for a video (`musetalk.inference.shift.recommend_bbox_shift`, the rule
    `infer.py` applies) from a frames table, a stats.json summary or the median itself.
    landmarks: the inference video's per-frame (68, 2) arrays, None for frames without a face.
    """
    return _recommend(training_shift_norm(stats), landmarks, origin=_origin(stats))


def _origin(stats: pd.DataFrame | Mapping[str, Any] | float) -> str:
    """Where the training statistic came from, for the reason text."""
    if not isinstance(stats, pd.DataFrame):
        return ""
    text = f" over {len(stats)} training frames"
    if "face_backend" in stats:
        backends = sorted(str(b) for b in stats["face_backend"].dropna().unique())
        text += f" (face backend {', '.join(backends)})" if backends else ""
    return text
