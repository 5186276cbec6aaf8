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
from musetalk.data.reader import decode_npy, iter_samples
from musetalk.data.schema import (
    REGION_VERSION,
    SCHEMA_VERSION,
    ShardError,
    check_key,
    frame_member,
)
from musetalk.data.writer import ShardWriter, encode_npy, encode_wav


def make_meta(key: str, num_frames: int, **over) -> dict:
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


def make_members(key: str, num_frames: int, rng: np.random.Generator, **over) -> dict:
    members = {"json": json.dumps(make_meta(key, num_frames, **over)).encode()}
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


def test_keys_with_dots_are_rejected():
    assert check_key("abc_D-01") == "abc_D-01"
    with pytest.raises(ValueError, match="invalid sample key"):
        check_key("clip.mp4_0")
