"""musetalk.stats: tables of a preprocess output and the bbox_shift=auto rule, checked against
values recomputed from the sample jsons with numpy and the region functions."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from musetalk import stats
from musetalk.audio.context import context_of
from musetalk.data.reader import iter_samples
from musetalk.data.schema import (
    FRAME_ARRAYS,
    REGION_VERSION,
    SCHEMA_VERSION,
    ShardError,
    array_member,
)
from musetalk.data.writer import encode_npy
from musetalk.face import region

# ---------------------------------------------------------------------------------------------
# Synthetic shards: sample jsons built with the region functions, payloads that are not media


def face_landmarks(rng: np.random.Generator, nose: tuple[float, float, float, float]) -> np.ndarray:
    """(68, 2) landmarks with lm27..lm30 at the given y's, the chin 90 px below lm30."""
    lm = np.column_stack([rng.uniform(100, 200, 68), rng.uniform(nose[0] - 20, nose[3] + 80, 68)])
    lm[27:31, 1] = nose
    lm[8, 1] = nose[3] + 90
    return np.round(lm, 2)


def sample_meta(key: str, source: str, lms: list[np.ndarray], det_top: list[float]) -> dict:
    """A sample json, its region facts computed like preprocessing does."""
    det = [[95.0, top, 205.0, lm[:, 1].max()] for top, lm in zip(det_top, lms, strict=True)]
    train = [region.training_box(d, lm) for d, lm in zip(det, lms, strict=True)]
    bound = [region.mask_upper_bound(b) for b in train]
    shift = [region.equivalent_shift(d, lm) for d, lm in zip(det, lms, strict=True)]
    n = len(lms)
    return {
        "schema_version": SCHEMA_VERSION,
        "region_version": REGION_VERSION,
        "key": key,
        "source": f"/videos/{source}.mp4",
        "audio_source": None,
        "source_id": source,
        "track_id": 0,
        "fps": 25,
        "num_frames": n,
        "frame_index": list(range(10, 10 + n)),
        "source_size": [480, 640],
        "landmarks": [lm.tolist() for lm in lms],
        "det_box": det,
        "training_box": [b.tolist() for b in train],
        "mask_upper_bound": bound,
        "nearest_nose_landmark": [
            region.nearest_nose_landmark(b, lm) for b, lm in zip(bound, lms, strict=True)
        ],
        "equivalent_shift": shift,
        "equivalent_shift_norm": [
            region.normalized_shift(s, lm) for s, lm in zip(shift, lms, strict=True)
        ],
        "nose_length": [region.nose_length(lm) for lm in lms],
        "detected": [True] * n,
        "crop_rect": [[0, 0, 320, 480]] * n,
        "crop_size": [[320, 480]] * n,
        "audio_context": context_of(10, n, None).to_json(),
        "face": {"backend": "synthetic"},
    }


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_dataset(
    root: Path, metas: list[dict], summary_over: dict | None = None, schema: int = SCHEMA_VERSION
) -> Path:
    """A preprocess-like output: one tar (facts + undecodable media members) and stats.json.
    schema 3: per-frame arrays as `<name>.npy` members; 2: all facts in the json."""
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "00000-000.tar", "w") as tar:
        for meta in metas:
            key = meta["key"]
            meta = {**meta, "schema_version": meta["schema_version"] if schema > 2 else 2}
            if schema > 2:
                for name, (_, dtype) in FRAME_ARRAYS.items():
                    if name not in meta:
                        continue
                    values = [np.nan if v is None else v for v in meta.pop(name)]
                    array = np.asarray(values, dtype=dtype)
                    add_member(tar, f"{key}.{array_member(name)}", encode_npy(array))
            add_member(tar, f"{key}.json", json.dumps(meta).encode())
            add_member(tar, f"{key}.wav", b"not a wav")
            add_member(tar, f"{key}.whisper.npy", b"not an npy")
            for i in range(meta["num_frames"]):
                add_member(tar, f"{key}.{i:06d}.jpg", b"not a jpeg")
    summary = {"tars": ["00000-000.tar"], "schema_version": SCHEMA_VERSION}
    summary["region_version"] = REGION_VERSION
    summary.update(summary_over or {})
    (root / "stats.json").write_text(json.dumps(summary))
    return root


@pytest.fixture
def synthetic(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Two sources with different noses and detector tops; source b has two samples."""
    rng = np.random.default_rng(0)
    metas = []
    for key, source, n, nose, top in [
        ("a_000000", "a", 12, (100.0, 110.0, 121.0, 133.0), 60.0),
        ("b_000000", "b", 7, (200.0, 214.0, 226.0, 240.0), 150.0),
        ("b_000100", "b", 9, (200.0, 213.0, 227.0, 242.0), 140.0),
    ]:
        lms = [face_landmarks(rng, tuple(y + rng.normal(0, 2) for y in nose)) for _ in range(n)]
        tops = list(top + rng.normal(0, 8, n))
        metas.append(sample_meta(key, source, lms, tops))
    return write_dataset(tmp_path / "synthetic", metas), metas


@pytest.mark.parametrize("schema", [3, 2])
def test_load_frames_reads_the_jsons_without_decoding_media(synthetic, schema, tmp_path):
    """The facts of schema 3 (arrays in .npy members) and schema 2 shards (json lists) alike."""
    root, metas = synthetic
    if schema == 2:
        root = write_dataset(tmp_path / "schema2", metas, schema=2)
    frames = stats.load_frames(root)
    assert len(frames) == sum(m["num_frames"] for m in metas)
    assert frames["key"].tolist() == [m["key"] for m in metas for _ in range(m["num_frames"])]
    for column in ("equivalent_shift", "mask_upper_bound", "nose_length"):
        expected = [v for m in metas for v in m[column]]
        np.testing.assert_allclose(frames[column], expected)
    landmarks = np.stack([lm for m in metas for lm in m["landmarks"]])
    np.testing.assert_allclose(np.stack(frames["landmarks"]), landmarks)
    np.testing.assert_allclose(frames["lm29_y"], landmarks[:, 29, 1])
    np.testing.assert_allclose(frames["lm_max_y"], landmarks[:, :, 1].max(axis=1))
    assert frames["frame_index"].tolist()[:3] == [10, 11, 12]
    assert set(frames["face_backend"]) == {"synthetic"}
    assert "landmarks" not in stats.load_frames(root, landmarks=False)


def test_missing_norm_becomes_nan(tmp_path):
    rng = np.random.default_rng(1)
    lms = [face_landmarks(rng, (100.0, 110.0, 120.0, 130.0)) for _ in range(3)]
    lms[1][30, 1] = lms[1][27, 1]  # zero nose length: no normalised shift
    meta = sample_meta("c_000000", "c", lms, [70.0, 70.0, 70.0])
    assert meta["equivalent_shift_norm"][1] is None
    frames = stats.load_frames(write_dataset(tmp_path / "d", [meta]))
    assert frames["equivalent_shift_norm"].isna().tolist() == [False, True, False]


@pytest.mark.parametrize("field", ["schema_version", "region_version"])
def test_unknown_versions_are_refused(tmp_path, synthetic, field):
    _, metas = synthetic
    bad = dict(metas[0], **{field: 99})
    root = write_dataset(tmp_path / "sample", [metas[1], bad])
    with pytest.raises(ShardError, match=f"{field} 99"):
        stats.load_frames(root)
    root = write_dataset(tmp_path / "summary", metas, {field: 99})
    with pytest.raises(ShardError, match=f"{field} 99"):
        stats.load_stats(root)
    with pytest.raises(ShardError, match=f"{field} 99"):
        stats.load_frames(root)


def test_not_a_preprocess_output(tmp_path):
    with pytest.raises(FileNotFoundError, match="no stats.json"):
        stats.load_frames(tmp_path)


def test_per_source_ranges_on_synthetic_sources(synthetic):
    root, metas = synthetic
    ranges = stats.per_source_ranges(stats.load_frames(root))
    assert ranges.index.tolist() == ["a", "b"]
    for source in ("a", "b"):
        mine = [m for m in metas if m["source_id"] == source]
        lms = [np.asarray(lm) for m in mine for lm in m["landmarks"]]
        shifts = [s for m in mine for s in m["equivalent_shift"]]
        lo, hi = region.shift_range(lms)
        row = ranges.loc[source]
        assert row["frames"] == len(lms)
        assert (row["lo"], row["hi"]) == pytest.approx((lo, hi))
        assert row["median_shift"] == pytest.approx(np.median(shifts))
        assert row["boundary_position"] == pytest.approx((np.median(shifts) - lo) / (hi - lo))
        assert row["range_text"] == region.format_shift_range(len(lms), (lo, hi), 0)
    assert ranges.loc["a", "lo"] != pytest.approx(ranges.loc["b", "lo"])


def test_shares_reject_unknown_landmarks():
    frames = pd.DataFrame({"nearest_nose_landmark": [29, 30, 31]})
    with pytest.raises(ValueError, match=r"\[31\]"):
        stats.nose_landmark_shares(frames)


def test_musetalk_published_shares():
    assert stats.MUSETALK_NOSE_LANDMARK_SHARES == {28: 0.15, 29: 0.63, 30: 0.22}


# ---------------------------------------------------------------------------------------------
# Real shards


@pytest.fixture(scope="module")
def real(both_videos_shards: Path) -> tuple[Path, list[dict]]:
    """Shards of both real videos and their sample jsons read independently with webdataset."""
    output = both_videos_shards
    return output, [s.meta for s in iter_samples(output, images=False)]


def by_source(metas: list[dict], field: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for meta in metas:
        out.setdefault(meta["source_id"], []).extend(meta[field])
    return out


@pytest.mark.slow
def test_real_frames_match_region_functions(real):
    root, metas = real
    frames = stats.load_frames(root)
    assert len(frames) == sum(m["num_frames"] for m in metas) == stats.load_stats(root)["frames"]
    assert len(metas) > 2  # 100-frame samples: several per source
    lms = [np.asarray(lm) for m in metas for lm in m["landmarks"]]
    det = [d for m in metas for d in m["det_box"]]
    expected = [region.equivalent_shift(d, lm) for d, lm in zip(det, lms, strict=True)]
    np.testing.assert_allclose(frames["equivalent_shift"], expected, atol=0.02)
    bounds = [
        region.mask_upper_bound(region.training_box(d, lm)) for d, lm in zip(det, lms, strict=True)
    ]
    nearest = [region.nearest_nose_landmark(b, lm) for b, lm in zip(bounds, lms, strict=True)]
    assert frames["nearest_nose_landmark"].tolist() == nearest
    np.testing.assert_allclose(frames["nose_length"], [region.nose_length(lm) for lm in lms])
    audio = frames.groupby("source_id")["audio_source"].first()
    assert sorted(audio.isna().tolist()) == [False, True]  # the yongen video has its own wav


@pytest.mark.slow
def test_real_shares_match_counts(real):
    root, metas = real
    frames = stats.load_frames(root, landmarks=False)
    counts = Counter(k for m in metas for k in m["nearest_nose_landmark"])
    shares = stats.nose_landmark_shares(frames)
    assert shares.index.tolist() == [28, 29, 30]
    assert shares["count"].tolist() == [counts[28], counts[29], counts[30]]
    assert shares["share"].sum() == pytest.approx(1.0)
    total = sum(counts.values())
    assert shares["share"].tolist() == pytest.approx([counts[k] / total for k in (28, 29, 30)])
    assert shares["musetalk_share"].tolist() == [0.15, 0.63, 0.22]
    summary_counts = stats.load_stats(root)["nose_landmark_counts"]
    assert {int(k): v for k, v in summary_counts.items()} == {k: counts[k] for k in (28, 29, 30)}
    grouped = stats.nose_landmark_shares(frames, by="source_id")
    for source, values in by_source(metas, "nearest_nose_landmark").items():
        mine = Counter(values)
        assert grouped.loc[source, "count"].tolist() == [mine[k] for k in (28, 29, 30)]
        assert grouped.loc[source, "share"].sum() == pytest.approx(1.0)


@pytest.mark.slow
def test_real_quantiles_match_numpy(real):
    root, metas = real
    frames = stats.load_frames(root, landmarks=False)
    qs = (0.05, 0.25, 0.5, 0.9)
    px = np.array([v for m in metas for v in m["equivalent_shift"]])
    norm = np.array([v for m in metas for v in m["equivalent_shift_norm"] if v is not None])
    table = stats.shift_quantiles(frames, qs=qs)
    np.testing.assert_allclose(table["equivalent_shift"], np.quantile(px, qs))
    np.testing.assert_allclose(table["equivalent_shift_norm"], np.quantile(norm, qs))
    grouped = stats.shift_quantiles(frames, by="source_id", qs=qs)
    for source, values in by_source(metas, "equivalent_shift").items():
        np.testing.assert_allclose(grouped.loc[source, "equivalent_shift"], np.quantile(values, qs))
    default = stats.shift_quantiles(frames)
    assert default.index.tolist() == list(stats.QUANTILES)


@pytest.mark.slow
def test_real_per_source_ranges_equal_region_shift_range(real):
    root, metas = real
    ranges = stats.per_source_ranges(stats.load_frames(root))
    landmarks = by_source(metas, "landmarks")
    assert sorted(ranges.index) == sorted(landmarks)
    for source, lms in landmarks.items():
        lo, hi = region.shift_range(np.asarray(lms))
        assert (ranges.loc[source, "lo"], ranges.loc[source, "hi"]) == pytest.approx((lo, hi))
        assert ranges.loc[source, "frames"] == len(lms)
    # the dlib boxes of talking_demo1 put the training boundary below the nose tip
    demo = next(s for s in ranges.index if s.startswith("talking_demo1"))
    assert ranges.loc[demo, "median_shift"] > ranges.loc[demo, "hi"]
    assert ranges.loc[demo, "boundary_position"] > 1


@pytest.mark.slow
def test_real_recommendation_from_frames_and_from_summary(real):
    root, metas = real
    frames = stats.load_frames(root)
    summary = stats.load_stats(root)
    norm = [v for m in metas for v in m["equivalent_shift_norm"] if v is not None]
    assert stats.training_shift_norm(frames) == pytest.approx(np.median(norm))
    # the summary's q50 is a histogram bin centre (0.01 wide) at one of the two middle values
    middle = np.sort(norm)[(len(norm) - 1) // 2 : len(norm) // 2 + 1]
    assert middle[0] - 0.005 <= stats.training_shift_norm(summary) <= middle[-1] + 0.005
    lms = [np.asarray(lm) for lm in by_source(metas, "landmarks")[metas[-1]["source_id"]]]
    lo, hi = region.shift_limits(lms)  # only the geometry clips, not the advisory range
    wanted = np.median(norm) * np.median([region.nose_length(lm) for lm in lms])
    expected = int(np.clip(round(wanted), lo, hi))
    assert stats.recommend_bbox_shift(frames, lms).shift == expected
    assert abs(stats.recommend_bbox_shift(summary, lms).shift - expected) <= 1


# ---------------------------------------------------------------------------------------------
# The bbox_shift=auto rule on a synthetic table


def video_landmarks(nose_lengths: list[float], up: float = 10.0) -> list[np.ndarray]:
    """Inference frames: lm27 at y=100, lm28 `up` px above lm29, lm30 at 100 + nose length."""
    out = []
    for length in nose_lengths:
        lm = np.zeros((68, 2))
        lm[:, 0] = np.linspace(50, 150, 68)
        lm[:, 1] = 100 + length + 40  # everything else below the nose
        lm[27, 1], lm[30, 1] = 100, 100 + length
        lm[29, 1] = 100 + length / 2
        lm[28, 1] = lm[29, 1] - up
        out.append(lm)
    return out


def table(norm: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"equivalent_shift_norm": norm, "face_backend": "dlib"})


def test_recommendation_is_median_norm_times_nose_length():
    # nose lengths 30 / 40 / 60 (median 40, mean 43.3): range [-10 ~ +21.7]; 0.3 x 40 -> 12 px
    lms = video_landmarks([30, 40, 60])
    assert region.shift_range(lms) == pytest.approx((-10, 65 / 3))
    rec = stats.recommend_bbox_shift(table([0.1, 0.2, 0.3, 0.5, 0.7, np.nan]), lms)
    assert rec.shift == 12
    shift, reason = rec
    assert isinstance(shift, int)
    assert "+12 px" in reason and "40.0 px" in reason and "+0.300 nose lengths" in reason
    assert "inside" in reason and "dlib" in reason and "detector" in reason


def test_recommendation_outside_the_range_is_kept_and_only_the_geometry_clips_it():
    """A training boundary outside MuseTalk's advisory range (landmarks 28..30) is what the model
    learnt: auto keeps it, says so, and clips only where the shift stops moving the boundary."""
    lms = video_landmarks([40, 40], up=9.5)  # range [-9.5 ~ +20], printed [-9 ~ 20]
    assert region.shift_limits(lms) == (-30, 59)  # box top at the frame top / lowest landmark
    high = stats.recommend_bbox_shift(table([0.9, 0.9, 1.0]), lms)  # wants +36 px
    assert high.shift == 36
    assert (
        "+36.0 px" in high.reason
        and "outside this video's adjustable range [-9 ~ 20]" in high.reason
    )
    assert "below landmark 30" in high.reason and "clipped" not in high.reason
    low = stats.recommend_bbox_shift(table([-0.5]), lms)  # wants -20 px
    assert low.shift == -20 and "above landmark 28" in low.reason
    beyond = stats.recommend_bbox_shift(table([2.0]), lms)  # wants +80 px: past the chin
    assert beyond.shift == 59 and "clipped to +59, the geometric limit [-30 ~ 59]" in beyond.reason
    assert stats.recommend_bbox_shift(table([-1.0]), lms).shift == -30


def test_recommendation_from_a_summary_or_a_number_and_frames_without_face():
    lms = [None, *video_landmarks([40, 40, 40]), None]
    summary = {"equivalent_shift_norm": {"q05": 0.0, "q50": 0.255, "q95": 1.0}}
    assert stats.recommend_bbox_shift(summary, lms).shift == 10  # 10.2 px
    assert stats.recommend_bbox_shift(-0.1, lms).shift == -4
    with pytest.raises(ValueError, match="q50"):
        stats.recommend_bbox_shift({"equivalent_shift_norm": None}, lms)
    with pytest.raises(ValueError, match="at least one frame"):
        stats.recommend_bbox_shift(0.5, [None, None])
    with pytest.raises(ValueError, match="not a number"):
        stats.recommend_bbox_shift(table([np.nan]), lms)


def test_shards_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.delenv(stats.SHARDS_ENV, raising=False)
    with pytest.raises(ValueError, match=f"{stats.SHARDS_ENV} is not set.*preprocess output"):
        stats.shards_dir_from_env()
    monkeypatch.setenv(stats.SHARDS_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        stats.shards_dir_from_env()
    monkeypatch.setenv(stats.SHARDS_ENV, str(tmp_path))
    assert stats.shards_dir_from_env() == tmp_path
