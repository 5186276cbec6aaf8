"""Shard writer and reader: atomic writes, round trip, version checks, no pickles."""

from __future__ import annotations

import io
import json
import pickle
import tarfile

import cv2
import numpy as np
import pytest

from musetalk.audio.context import context_of
from musetalk.data.output import Output
from musetalk.data.reader import decode_npy, iter_metas, iter_samples
from musetalk.data.schema import (
    FRAME_ARRAYS,
    REGION_VERSION,
    SCHEMA_VERSION,
    ShardError,
    array_member,
    check_key,
    frame_member,
)
from musetalk.data.writer import ShardWriter, encode_npy, encode_wav


def make_meta(key: str, num_frames: int, **over) -> dict:
    """A sample's facts in the schema 2 layout: per-frame arrays as json lists."""
    meta = {
        "schema_version": SCHEMA_VERSION,
        "region_version": REGION_VERSION,
        "key": key,
        "source": "video.mp4",
        "fps": 25,
        "num_frames": num_frames,
        "frame_index": list(range(num_frames)),
        "source_size": [64, 48],
        "landmarks": np.zeros((num_frames, 68, 2)).tolist(),
        "det_box": [[0, 0, 10, 10]] * num_frames,
        "training_box": [[0, 0, 10, 10]] * num_frames,
        "mask_upper_bound": [5.0] * num_frames,
        "nearest_nose_landmark": [29] * num_frames,
        "equivalent_shift": [0.0] * num_frames,
        "equivalent_shift_norm": [0.0] * num_frames,
        "crop_rect": [[0, 0, 32, 32]] * num_frames,
        "crop_size": [[32, 32]] * num_frames,
        "audio_context": context_of(0, num_frames, num_frames * 2).to_json(),
    }
    meta.update(over)
    return meta


def split_meta(meta: dict) -> dict[str, bytes]:
    """json + `<name>.npy` members of facts (schema 3 layout): arrays out of the json."""
    scalars = {k: v for k, v in meta.items() if k not in FRAME_ARRAYS}
    members = {"json": json.dumps(scalars).encode()}
    for name, (_, dtype) in FRAME_ARRAYS.items():
        if name in meta:
            values = meta[name]
            if isinstance(values, list):
                values = [np.nan if v is None else v for v in values]
            members[array_member(name)] = encode_npy(np.asarray(values, dtype=dtype))
    return members


def make_members(key: str, num_frames: int, rng: np.random.Generator, schema=3, **over) -> dict:
    meta = make_meta(key, num_frames, **{"schema_version": schema, **over})
    members = split_meta(meta) if schema >= 3 else {"json": json.dumps(meta).encode()}
    audio = rng.uniform(-0.5, 0.5, num_frames * 640).astype(np.float32)
    members["wav"] = encode_wav(audio)
    members["context.wav"] = encode_wav(audio)  # the source is this sample alone
    for i in range(num_frames):
        img = np.full((32, 32, 3), (10 * i, 100, 200), np.uint8)
        members[frame_member(i)] = cv2.imencode(".jpg", img[..., ::-1])[1].tobytes()
    return members, audio


def test_round_trip_and_atomic_names(tmp_path):
    rng = np.random.default_rng(0)
    out = Output(tmp_path, "t")
    expected = {}
    with ShardWriter(out, "00000.tar") as writer:
        # until closed, only a temp name exists
        assert not (tmp_path / "00000.tar").exists()
        for n, key in ((3, "vid-a_t0_000000"), (5, "vid-b_t1_000250")):
            members, audio = make_members(key, n, rng)
            members["whisper.npy"] = encode_npy(np.ones((2 * n, 5, 384), np.float16))
            writer.write(key, members)
            expected[key] = (n, audio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar"]
    # a plain tar tool sees <key>.<field> members
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = tar.getnames()
    assert "vid-a_t0_000000.json" in names and "vid-b_t1_000250.000004.jpg" in names

    samples = list(iter_samples(tmp_path))
    assert [s.key for s in samples] == list(expected)
    for s in samples:
        n, audio = expected[s.key]
        assert len(s.frames) == n and s.frames[0].shape == (32, 32, 3)
        # frame i was painted red = 10 * i (JPEG tolerance)
        assert abs(int(s.frames[-1][..., 0].mean()) - 10 * (n - 1)) <= 3
        np.testing.assert_allclose(s.audio, audio, atol=1 / 32767 + 1e-6)
        assert s.whisper.shape == (2 * n, 5, 384) and s.whisper.dtype == np.float16


def test_tar_bytes_are_webdatasets(tmp_path):
    """The writer lays tars out itself (no webdataset, hence no torch, in preprocessing
    workers): byte for byte what webdataset's TarWriter writes for the same samples."""
    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(1)
    samples = [("vid-a_t0_000000", make_members("vid-a_t0_000000", 3, rng)[0])]
    samples.append(("vid-b_t1_000250", make_members("vid-b_t1_000250", 2, rng)[0]))
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        for key, members in samples:
            writer.write(key, members)
    expected = io.BytesIO()
    tar = wds.TarWriter(expected, encoder=False, mtime=0)
    for key, members in samples:
        tar.write({"__key__": key, **members})
    tar.close()
    assert (tmp_path / "00000.tar").read_bytes() == expected.getvalue()


def test_aborted_writer_leaves_nothing(tmp_path):
    out = Output(tmp_path, "t")
    with pytest.raises(RuntimeError), ShardWriter(out, "00001.tar") as writer:
        writer.write("k0", {"json": b"{}"})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("schema_version", 99, "schema_version 99"),
        ("region_version", 0, "region_version 0"),
    ],
)
def test_reader_refuses_unknown_versions(tmp_path, field, value, match):
    rng = np.random.default_rng(1)
    members, _ = make_members("k", 2, rng, **{field: value})
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        writer.write("k", members)
    with pytest.raises(ShardError, match=match):
        list(iter_samples(tmp_path))


def test_reader_never_unpickles(tmp_path):
    """A pickle member (or an object .npy) in a shard is refused, not executed."""
    rng = np.random.default_rng(2)
    members, _ = make_members("k", 1, rng)
    members["pyd"] = pickle.dumps({"x": 1})
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        writer.write("k", members)
    with pytest.raises(ShardError, match="unknown members"):
        list(iter_samples(tmp_path))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        decode_npy(buf.getvalue())


def facts(num_frames: int, rng: np.random.Generator) -> dict:
    """Varied per-frame facts as schema 2 wrote them: lists rounded like its json, null for
    no value."""
    n = num_frames
    box = lambda: np.round(rng.uniform(0, 1900, (n, 4)), 2).tolist()  # noqa: E731
    return {
        "frame_index": list(range(100, 100 + n)),
        "landmarks": np.round(rng.uniform(0, 1900, (n, 68, 2)), 2).tolist(),
        "det_box": box(),
        "det_score": np.round(rng.uniform(0, 1, n), 4).tolist(),
        "detected": [bool(v) for v in rng.integers(0, 2, n)],
        "training_box": box(),
        "mask_upper_bound": np.round(rng.uniform(0, 1900, n), 2).tolist(),
        "nearest_nose_landmark": rng.integers(28, 31, n).tolist(),
        "nose_length": np.round(rng.uniform(20, 90, n), 3).tolist(),
        "equivalent_shift": np.round(rng.uniform(-40, 40, n), 3).tolist(),
        "equivalent_shift_norm": [None, *np.round(rng.uniform(-1, 1, n - 1), 5).tolist()],
        "crop_rect": rng.integers(0, 1900, (n, 4)).tolist(),
        "crop_size": [[32, 32]] * n,
        "audio_context": context_of(100, n, None).to_json(),
    }


def test_schema_2_and_3_decode_to_the_same_sample(tmp_path):
    """The same facts in the schema 2 layout (json lists) and the schema 3 one (json scalars +
    `<name>.npy` members) decode to equal metas: `FRAME_ARRAYS` dtypes, NaN for null, scalars
    unchanged; `iter_metas` (json and arrays only) agrees with `iter_samples`."""
    rng = np.random.default_rng(3)
    values = facts(6, rng)
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        for schema in (2, 3):
            members, _ = make_members(f"k{schema}", 6, rng, schema=schema, **values)
            writer.write(f"k{schema}", members)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        names = set(tar.getnames())
    assert "k3.landmarks.npy" in names and "k2.landmarks.npy" not in names
    v2, v3 = (s.meta for s in iter_samples(tmp_path, images=False))
    assert [m for _, m in iter_metas(tmp_path)][1].keys() == v3.keys()
    assert v2.keys() == v3.keys()
    for name, value in v2.items():
        if name in FRAME_ARRAYS:
            assert value.dtype == v3[name].dtype == FRAME_ARRAYS[name][1], name
            assert value.shape[0] == 6
            np.testing.assert_array_equal(value, v3[name])
        elif name not in ("key", "schema_version"):
            assert value == v3[name], name
    assert np.isnan(v3["equivalent_shift_norm"][0])
    assert v2["detected"].tolist() == values["detected"]
    # float32 keeps schema 2's 0.01 px rounding
    assert np.abs(v3["landmarks"] - np.asarray(values["landmarks"])).max() < 0.001


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda m: m.pop("landmarks.npy"), "no landmarks.npy member"),
        (lambda m: m.update({"det_box.npy": b"not npy"}), "det_box.npy: not a plain numeric"),
        (lambda m: m.update({"det_box.npy": encode_npy(np.zeros((2, 5)))}), "det_box has shape"),
        (lambda m: m.update({"crop_size.npy": encode_npy(np.zeros((2, 2)))}), "crop_size must"),
        (
            lambda m: m.update({"landmarks.npy": encode_npy(np.full((2, 68, 2), np.nan))}),
            "landmarks holds NaN",
        ),
    ],
)
def test_reader_refuses_damaged_array_members(tmp_path, damage, match):
    members, _ = make_members("k", 2, np.random.default_rng(4))
    damage(members)
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        writer.write("k", members)
    with pytest.raises(ShardError, match=match):
        list(iter_samples(tmp_path))
    with pytest.raises(ShardError, match=match):
        list(iter_metas(tmp_path))


def test_object_array_member_is_refused(tmp_path):
    """A pickled (object) array in a per-frame member is refused, not unpickled."""
    members, _ = make_members("k", 1, np.random.default_rng(5))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    members["frame_index.npy"] = buf.getvalue()
    with ShardWriter(Output(tmp_path, "t"), "00000.tar") as writer:
        writer.write("k", members)
    with pytest.raises(ShardError, match="frame_index.npy: not a plain numeric array"):
        list(iter_samples(tmp_path))


def test_keys_with_dots_are_rejected():
    assert check_key("abc_D-01") == "abc_D-01"
    with pytest.raises(ValueError, match="invalid sample key"):
        check_key("clip.mp4_0")
