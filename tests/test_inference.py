"""Inference: end to end with tiny random models (released layout, export, CLI), bbox_shift,
faceless frames, ping-pong cycling, avatar cache, blending, errors.

Real media: talking_demo1.mp4 (a 183 px face in 1080x1920) and speech_en_16k.wav. Small clips
are cut around the face from the demo's first frames, with each frame's index stamped into the
top-left corner (tests/synth.py patterns), so which source frame an output frame shows can be
read back.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from diffusers import AutoencoderKL
from synth import pattern_frame, read_index
from tiny_models import save_released_layout

from musetalk.audio import load_audio
from musetalk.config import parse
from musetalk.data.schema import SCHEMA_VERSION
from musetalk.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    MediaError,
    NoFaceError,
    ShardVersionError,
)
from musetalk.face import region
from musetalk.face.blend import FaceParsing, feather_mask, lower_face_mask, paste
from musetalk.inference.pipeline import MuseTalkPipeline
from musetalk.inference.run import InferenceConfig, infer
from musetalk.inference.weights import MissingWeightsError, export_files
from musetalk.models import TINY_UNET, TINY_VAE, build_unet, export_unet
from musetalk.video import VideoReader, VideoWriter
from musetalk.video.writer import nvenc_problem, select_encoder

REPO = Path(__file__).resolve().parents[1]
SR = 16000
CLIP_RECT = (365, 380, 845, 1020)  # x1, y1, x2, y2 around the demo's face: 480x640 clips
STAMP_H, STAMP_W = 48, 64


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def demo_faces(shared_data: Path) -> list[np.ndarray]:
    """The demo's first 24 frames (25 fps) cut to 480x640 around the face."""
    x1, y1, x2, y2 = CLIP_RECT
    reader = VideoReader(shared_data / "talking_demo1.mp4")
    return [np.ascontiguousarray(f[y1:y2, x1:x2]) for _, f in reader.frames(0, 24)]


def stamped(frame: np.ndarray, index: int) -> np.ndarray:
    out = frame.copy()
    out[:STAMP_H, :STAMP_W] = pattern_frame(index, STAMP_W, STAMP_H)
    return out


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    with VideoWriter(path, fps=25) as writer:
        for k, frame in enumerate(frames):
            writer.write(stamped(frame, k))
    return path


def decoded(path: Path) -> list[np.ndarray]:
    return [f for _, f in VideoReader(path).frames()]


@pytest.fixture(scope="module")
def speech(shared_data: Path) -> np.ndarray:
    return load_audio(shared_data / "speech_en_16k.wav")


@pytest.fixture(scope="module")
def audio_2s(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech_2s.wav"
    sf.write(path, speech[: 2 * SR], SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def tiny_pipe() -> MuseTalkPipeline:
    return MuseTalkPipeline.tiny(seed=0, batch_size=8)


@pytest.fixture(scope="module")
def face_clip(demo_faces: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 face frames, stamped 0..7."""
    return write_clip(tmp_path_factory.mktemp("clip") / "face8.mp4", demo_faces[:8])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_released_layout(root)
    return root


RANGE_LINE = re.compile(
    r"Total frame: (\d+)  Manually adjust range: \[(-?\d+) ~ (-?\d+)\], the current value: (\S+)"
)


def probe_output(path: Path) -> tuple[int, list[str], float]:
    """(video frames decoded, stream types, audio seconds) of an mp4."""
    with av.open(str(path)) as container:
        types = [s.type for s in container.streams]
        audio = container.streams.audio[0]
        audio_s = float(audio.duration * audio.time_base) if audio.duration else 0.0
        frames = sum(1 for _ in container.decode(video=0))
    return frames, types, audio_s


# ---------------------------------------------------------------------------------------------
# End to end


def test_end_to_end_released_layout(models_dir, audio_2s, shared_data, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    config = InferenceConfig(
        video=str(shared_data / "talking_demo1.mp4"),
        audio=str(audio_2s),
        output=str(out),
        models_dir=str(models_dir),
        bbox_shift=-3,
        progress=False,
    )
    result = infer(config)
    printed = capsys.readouterr().out
    match = RANGE_LINE.search(printed)
    assert match, printed
    assert match.group(1) == "50" and match.group(4) == "-3"
    lo, hi = int(match.group(2)), int(match.group(3))
    assert lo < 0 < hi
    # the printed line comes before generation ends (it is the first thing printed)
    assert printed.index("Total frame") < printed.index("wrote ")

    audio_s = sf.info(audio_2s).duration
    frames, types, muxed_s = probe_output(out)
    assert frames == math.floor(audio_s * 25) == result.num_frames == 50
    assert types.count("audio") == 1 and types.count("video") == 1
    assert muxed_s == pytest.approx(audio_s, abs=0.05)
    assert result.frames_with_face == 50
    sidecar = json.loads((tmp_path / "out.mp4.json").read_text())
    assert sidecar["model"]["layout"] == "released" and sidecar["model"]["version"] == "v15"
    assert sidecar["extra_margin"] == 10 and sidecar["audio_positional_encoding"] is True
    assert sidecar["result"]["encoder"] == result.encoder == select_encoder("auto")


def test_released_layout_loads_the_files_given(models_dir, tmp_path):
    pipe = MuseTalkPipeline.from_models_dir(models_dir)
    saved = torch.load(models_dir / "musetalkV15" / "unet.pth", weights_only=True)
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, saved[k]), k
    vae = AutoencoderKL.from_pretrained(models_dir / "sd-vae")
    for k, v in pipe.vae.state_dict().items():
        assert torch.equal(v, vae.state_dict()[k]), k
    assert pipe.extra_margin == 10 and pipe.audio_positional_encoding

    v1 = tmp_path / "v1"
    save_released_layout(v1, "v1", seed=3)
    pipe1 = MuseTalkPipeline.from_models_dir(v1, version="v1")
    assert pipe1.extra_margin == 0
    key = "conv_in.weight"
    assert not torch.equal(pipe1.unet.state_dict()[key], pipe.unet.state_dict()[key])


def test_export_dir_uses_its_training_settings(models_dir, tmp_path):
    torch.manual_seed(5)
    unet = build_unet(TINY_UNET)
    export = export_unet(unet, tmp_path / "export")
    training = {
        "audio_positional_encoding": False,
        "shift_stats": {"equivalent_shift_norm": {"q50": 0.5}},
        "vae": str(models_dir / "sd-vae"),  # what training used, usable here: taken
        "whisper": str(models_dir / "whisper"),
    }
    (export / "training.json").write_text(json.dumps(training))
    pipe = MuseTalkPipeline.from_export_dir(export)
    assert pipe.model_info["vae"] == str(models_dir / "sd-vae")
    assert pipe.audio_positional_encoding is False
    assert pipe.shift_stats == {"equivalent_shift_norm": {"q50": 0.5}}
    assert pipe.extra_margin == 10
    for k, v in pipe.unet.state_dict().items():
        assert torch.equal(v, unet.state_dict()[k]), k
    gone = {**training, "vae": str(tmp_path / "gone" / "sd-vae"), "whisper": "openai/whisper-tiny"}
    (export / "training.json").write_text(json.dumps(gone))
    files = export_files(export)
    assert (files.vae, files.whisper) == ("stabilityai/sd-vae-ft-mse", "openai/whisper-tiny")
    # without training.json: positional encoding on, and bbox_shift=auto has nothing to go on
    (export / "training.json").unlink()
    pipe = MuseTalkPipeline.from_export_dir(
        export, vae=str(models_dir / "sd-vae"), whisper=str(models_dir / "whisper")
    )
    assert pipe.audio_positional_encoding is True and pipe.builtin_shift is None


def test_export_records_of_the_frozen_networks(models_dir, tmp_path, monkeypatch):
    """training.json format 2: a hub id keeps the commit found in the local HF cache, a local
    directory its weight hashes (a change warns, a missing one is an error naming the override),
    a random network is saved into the export."""
    from musetalk.errors import CheckpointError
    from musetalk.models.provenance import frozen_record, resolve_frozen

    # a hub id: the revision is the snapshot from_pretrained read (a real cache layout)
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cache / "models--org--tiny-vae" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--tiny-vae" / "refs").mkdir()
    (cache / "models--org--tiny-vae" / "refs" / "main").write_text(commit)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # as HF_HUB_CACHE=
    hub = frozen_record("org/tiny-vae", tmp_path, "vae", lambda p: None)
    assert hub == {"source": "org/tiny-vae", "revision": commit}
    assert resolve_frozen(hub, tmp_path, "VAE", "infer_model.vae", "x/y") == (
        "org/tiny-vae",
        commit,
    )
    assert frozen_record("org/not-cached", tmp_path, "vae", lambda p: None)["revision"] is None

    # a local directory: hashes recorded; same files pass, changed files warn, gone is an error
    vae_dir = tmp_path / "sd-vae"
    shutil.copytree(models_dir / "sd-vae", vae_dir)
    local = frozen_record(str(vae_dir), tmp_path, "vae", lambda p: None)
    assert local["source"] == str(vae_dir.resolve()) and len(local["sha256"]) == 1
    assert resolve_frozen(local, tmp_path, "VAE", "infer_model.vae", "x/y") == (str(vae_dir), None)
    weights = next(vae_dir.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.warns(UserWarning, match="differ from the ones the export was trained with"):
        resolve_frozen(local, tmp_path, "VAE", "infer_model.vae", "x/y")
    shutil.rmtree(vae_dir)
    with pytest.raises(MissingWeightsError, match="pass infer_model.vae="):
        resolve_frozen(local, tmp_path, "VAE", "infer_model.vae", "x/y")

    # random init: saved under the export, resolved relative to wherever the export now is
    export = tmp_path / "export"
    export.mkdir()
    vae = AutoencoderKL(**TINY_VAE)
    bundled = frozen_record(None, export, "vae", vae.save_pretrained)
    assert bundled["bundled"] is True and (export / "vae" / "config.json").is_file()
    moved = tmp_path / "moved"
    export.rename(moved)
    assert resolve_frozen(bundled, moved, "VAE", "infer_model.vae", "x/y") == (
        str(moved / "vae"),
        None,
    )
    # format 1 (a plain string) and nothing recorded still resolve; garbage does not
    assert resolve_frozen(None, moved, "VAE", "o", "default/id") == ("default/id", None)
    assert resolve_frozen("org/x", moved, "VAE", "o", "default/id") == ("org/x", None)
    with pytest.raises(CheckpointError, match="unreadable VAE record"):
        resolve_frozen({"revision": 3}, moved, "VAE", "o", "default/id")


def test_cli_tiny_model_image_input_and_auto_shift(demo_faces, speech, tmp_path):
    image = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(image), cv2.cvtColor(demo_faces[0], cv2.COLOR_RGB2BGR))
    audio = tmp_path / "a.wav"
    sf.write(audio, speech[: round(0.6 * SR)], SR, subtype="PCM_16")
    out = tmp_path / "img.mp4"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "infer.py"),
            f"video={image}",
            f"audio={audio}",
            f"output={out}",
            "infer_model=tiny",
            "bbox_shift=auto",
            "fps=25",
            "batch_size=4",
            "progress=false",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    match = RANGE_LINE.search(proc.stdout)
    assert match and match.group(1) == "1" and match.group(4) == "0", proc.stdout
    assert "bbox_shift=auto -> +0 px: random weights" in proc.stdout
    frames, types, _ = probe_output(out)
    assert frames == math.floor(0.6 * 25) and "audio" in types
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("*.log"))


# ---------------------------------------------------------------------------------------------
# Region: bbox_shift, cache


def test_bbox_shift_moves_top_edge_twice_and_boundary_once(tiny_pipe, face_clip, tmp_path):
    cache = tmp_path / "avatar"
    a0 = tiny_pipe.prepare_avatar(face_clip, bbox_shift=0, cache_dir=cache)
    a4 = tiny_pipe.prepare_avatar(face_clip, bbox_shift=-4, cache_dir=cache)
    assert a0.has_face.all() and a4.has_face.all()
    np.testing.assert_array_equal(a0.landmarks, a4.landmarks)  # the same landmarks
    np.testing.assert_allclose(a0.boxes[:, 1] - a4.boxes[:, 1], 8.0)
    np.testing.assert_allclose(a0.mask_upper_bound - a4.mask_upper_bound, 4.0)
    np.testing.assert_allclose(a0.boxes[:, [0, 2, 3]], a4.boxes[:, [0, 2, 3]])
    np.testing.assert_allclose(a0.mask_upper_bound, a0.landmarks[:, 29, 1])
    np.testing.assert_allclose(a0.boxes[:, 3], a0.landmarks[:, :, 1].max(axis=1) + 10)
    assert a4.range_line().endswith("the current value: -4")
    assert not np.array_equal(a0.latents, a4.latents)


def test_avatar_cache_reused_and_invalidated(tiny_pipe, demo_faces, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", demo_faces[:6])
    cache = tmp_path / "cache"
    first = tiny_pipe.prepare_avatar(clip, bbox_shift=2, cache_dir=cache)
    assert first.cache_status == "created"
    meta = json.loads((cache / "avatar.json").read_text())
    assert meta["regions_key"]["bbox_shift"] == 2
    assert meta["faces_key"]["face"]["backend"] == "dlib"
    assert not list(cache.glob("*.pkl")) and not list(cache.glob("*.pickle"))

    again = tiny_pipe.prepare_avatar(clip, bbox_shift=2, cache_dir=cache)
    assert again.cache_status == "loaded"
    assert isinstance(again.frames, np.memmap)
    np.testing.assert_array_equal(again.latents, first.latents)
    np.testing.assert_array_equal(again.masks, first.masks)

    shifted = tiny_pipe.prepare_avatar(clip, bbox_shift=-2, cache_dir=cache)
    assert shifted.cache_status == "updated"  # faces reused, boxes/latents/masks rebuilt
    fresh = tiny_pipe.prepare_avatar(clip, bbox_shift=-2)
    np.testing.assert_array_equal(shifted.boxes, fresh.boxes)
    np.testing.assert_array_equal(shifted.latents, fresh.latents)
    assert json.loads((cache / "avatar.json").read_text())["regions_key"]["bbox_shift"] == -2

    margin = tiny_pipe.prepare_avatar(clip, bbox_shift=-2, extra_margin=0, cache_dir=cache)
    assert margin.cache_status == "updated"
    np.testing.assert_allclose(shifted.boxes[:, 3] - margin.boxes[:, 3], 10)

    other = MuseTalkPipeline.tiny(seed=7)  # another VAE: cached latents are stale
    assert other.prepare_avatar(clip, bbox_shift=-2, cache_dir=cache).cache_status == "updated"

    write_clip(clip, demo_faces[6:12])  # same name, new content
    changed = tiny_pipe.prepare_avatar(clip, bbox_shift=-2, cache_dir=cache)
    assert changed.cache_status == "created"
    assert read_index(changed.frames[0][:STAMP_H, :STAMP_W]) == 0
    assert not np.array_equal(changed.landmarks, shifted.landmarks)


# ---------------------------------------------------------------------------------------------
# Frames: faceless pass-through, ping-pong, avatar mode


def test_faceless_frames_pass_through_bit_identical(tiny_pipe, demo_faces, speech, tmp_path):
    rng = np.random.default_rng(0)
    blank = np.full_like(demo_faces[0], 128)
    noise = [rng.integers(0, 256, demo_faces[0].shape, dtype=np.uint8) for _ in range(3)]
    frames = demo_faces[:6] + [blank] * 3 + noise + demo_faces[6:12]
    clip = write_clip(tmp_path / "gap.mp4", frames)
    reference = decoded(clip)
    expected_face = np.array([True] * 6 + [False] * 6 + [True] * 6)

    avatar = tiny_pipe.prepare_avatar(clip)
    np.testing.assert_array_equal(avatar.has_face, expected_face)
    audio = speech[: 18 * 640]
    out = list(tiny_pipe.generate(avatar, audio))
    assert len(out) == 18
    for k, frame in enumerate(out):
        assert read_index(frame[:STAMP_H, :STAMP_W]) == k  # no index drift
        if not expected_face[k]:
            np.testing.assert_array_equal(frame, reference[k])
            continue
        x1, y1, x2, y2 = avatar.rects[k]
        changed = np.any(frame != reference[k], axis=2)
        assert changed[y1:y2, x1:x2].any()
        changed[y1:y2, x1:x2] = False
        assert not changed.any(), f"frame {k} changed outside its crop"


def test_audio_longer_than_video_cycles_forward_then_backward(tiny_pipe, demo_faces, tmp_path):
    clip = write_clip(tmp_path / "five.mp4", demo_faces[:5])
    avatar = tiny_pipe.prepare_avatar(clip)
    audio = np.zeros(SR, np.float32)  # 1 s -> 25 frames over 5 source frames
    shown = [read_index(f[:STAMP_H, :STAMP_W]) for f in tiny_pipe.generate(avatar, audio)]
    assert shown == [0, 1, 2, 3, 4, 3, 2, 1] * 3 + [0]
    later = [
        read_index(f[:STAMP_H, :STAMP_W])
        for f in tiny_pipe.generate(avatar, audio[: 4 * 640], start_frame=6)
    ]
    assert later == [2, 1, 0, 1]
    with pytest.raises(ValueError, match="shorter than one frame"):
        tiny_pipe.generate(avatar, np.zeros(100, np.float32))  # checked at the call


def test_avatar_mode_equals_normal_mode(tiny_pipe, face_clip, speech, tmp_path):
    audio = speech[5 * SR : 5 * SR + 11 * 640]  # 11 frames over 8 source frames
    normal = list(tiny_pipe(face_clip, audio))
    prepared = tiny_pipe.prepare_avatar(face_clip, cache_dir=tmp_path / "avatar")
    from_cache = tiny_pipe.prepare_avatar(face_clip, cache_dir=tmp_path / "avatar")
    assert from_cache.cache_status == "loaded"
    for avatar, ahead in ((prepared, 0), (from_cache, 4)):
        frames = list(tiny_pipe.generate(avatar, audio, prefetch=ahead))
        assert len(frames) == len(normal) == 11
        for a, b in zip(frames, normal, strict=True):
            np.testing.assert_array_equal(a, b)
    silent = list(tiny_pipe.generate(prepared, np.zeros_like(audio)))
    assert any(not np.array_equal(a, b) for a, b in zip(silent, normal, strict=True))


# ---------------------------------------------------------------------------------------------
# bbox_shift=auto


def test_auto_shift_from_stats_file_and_builtin_default(models_dir, face_clip, tmp_path):
    pipe = MuseTalkPipeline.from_models_dir(models_dir)
    builtin = pipe.prepare_avatar(face_clip, bbox_shift="auto", max_frames=3)
    assert builtin.bbox_shift == 0 and "63%" in builtin.bbox_shift_reason

    stats = tmp_path / "stats.json"
    versions = {"schema_version": SCHEMA_VERSION, "region_version": region.REGION_VERSION}
    stats.write_text(json.dumps({**versions, "equivalent_shift_norm": {"q50": 0.25}}))
    avatar = pipe.prepare_avatar(face_clip, bbox_shift="auto", max_frames=3, auto_stats=stats)
    nose = np.median(avatar.landmarks[:, 30, 1] - avatar.landmarks[:, 27, 1])
    lo, hi = avatar.shift_range()
    assert avatar.bbox_shift == min(max(round(0.25 * nose), int(lo)), int(hi)) != 0
    assert str(stats) in avatar.bbox_shift_reason
    np.testing.assert_allclose(
        avatar.mask_upper_bound, avatar.landmarks[:, 29, 1] + avatar.bbox_shift
    )
    (tmp_path / "bad.json").write_text(json.dumps(versions))
    with pytest.raises(InputError, match="equivalent_shift_norm"):
        pipe.prepare_avatar(face_clip, bbox_shift="auto", auto_stats=tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"equivalent_shift_norm": {"q50": 0.25}}))
    with pytest.raises(ShardVersionError, match="schema_version None"):
        pipe.prepare_avatar(face_clip, bbox_shift="auto", auto_stats=tmp_path / "old.json")


# ---------------------------------------------------------------------------------------------
# Blending


def test_lower_face_mask_is_zero_on_the_border_and_upper_half():
    lms = np.zeros((68, 2))
    t = np.linspace(0, np.pi, 17)
    lms[:17] = np.stack([150 + 100 * np.cos(np.pi - t), 300 + 120 * np.sin(t)], axis=1)
    lms[17:] = [150, 330]
    rect = (40, 180, 260, 440)
    mask = lower_face_mask(lms, rect, 256)
    assert mask.dtype == np.uint8 and mask.shape == (256, 256)
    assert not mask[:129].any()
    assert not mask[:, 0].any() and not mask[:, -1].any() and not mask[-1].any()
    assert mask[200, 128] == 255
    moved = lower_face_mask(lms + [30, 0], rect, 256)
    assert not np.array_equal(moved, mask)

    frame = np.random.default_rng(1).integers(0, 256, (480, 320, 3), dtype=np.uint8)
    crop = np.full((256, 256, 3), 7, np.uint8)
    out = paste(frame, crop, rect, mask)
    x1, y1, x2, y2 = rect
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    np.testing.assert_array_equal(out[outside], frame[outside])
    np.testing.assert_array_equal(out[y1 : y1 + (y2 - y1) // 2], frame[y1 : y1 + (y2 - y1) // 2])
    assert (out[y1 + 200 * (y2 - y1) // 256, (x1 + x2) // 2] == 7).all()


def full_frame_blend(frame, crop, rect, mask) -> np.ndarray:
    """The straightforward blend `paste` must equal: the crop and mask resized into the rect
    on full-frame canvases, one weighted sum over the whole frame."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in rect)
    size = (x2 - x1, y2 - y1)
    patch = np.zeros_like(frame)
    alpha = np.zeros(frame.shape[:2], np.uint8)
    patch[y1:y2, x1:x2] = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
    alpha[y1:y2, x1:x2] = cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR)
    weights = alpha.astype(np.float32) * (1.0 / 255.0)
    return cv2.blendLinear(patch, frame, weights, 1.0 - weights)


def test_paste_blends_only_inside_the_mask_box_with_the_full_frame_result():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (360, 300, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    area = np.zeros((256, 256), np.uint8)
    area[100:, 30:200] = 1
    masks = [
        feather_mask(area),  # lower face, feathered
        np.zeros((256, 256), np.uint8),  # nothing to paste
        np.full((256, 256), 255, np.uint8),  # the whole crop, up to the rect's edges
        (rng.random((256, 256)) < 0.01).astype(np.uint8) * 255,  # scattered pixels
    ]
    rects = [(0, 0, 300, 360), (17, 40, 201, 317), (120, 200, 299, 359), (5, 5, 9, 9)]
    for mask in masks:
        for rect in rects:
            out = paste(frame, crop, rect, mask)
            np.testing.assert_array_equal(out, full_frame_blend(frame, crop, rect, mask))
    assert not np.shares_memory(paste(frame, crop, rects[1], masks[1]), frame)


def test_generated_frames_are_the_full_frame_blend_of_the_model_crops(tiny_pipe, face_clip, speech):
    avatar = tiny_pipe.prepare_avatar(face_clip)
    audio = speech[2 * SR : 2 * SR + 10 * 640]  # 10 frames: a batch of 8, then 2
    frames = tiny_pipe.generate(avatar, audio)
    features = tiny_pipe.encode_audio(audio)
    for b, count in ((0, 8), (8, 2)):
        sources = [avatar.source_index(b + j) for j in range(count)]
        tokens = tiny_pipe.audio_tokens(features, count, b, avatar.fps)
        latents = torch.from_numpy(np.stack([avatar.latents[s] for s in sources]))
        crops = tiny_pipe.decode_latents(tiny_pipe.predict_latents(latents, tokens))
        for s, crop in zip(sources, crops, strict=True):
            got = next(frames)
            assert isinstance(got, np.ndarray) and got.shape == avatar.frames[s].shape
            expected = full_frame_blend(avatar.frames[s], crop, avatar.rects[s], avatar.masks[s])
            np.testing.assert_array_equal(got, expected)
    assert next(frames, None) is None


def _parsing_onnx(path: Path, winner: int, size: int = 512) -> Path:
    """A 1x1-conv 'face parser' of BiSeNet's signature whose logits make `winner` win."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((19, 3, 1, 1), np.float32)
    bias = np.zeros(19, np.float32)
    bias[winner] = 5.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["out"])],
        "parser",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 19, size, size])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_face_parsing_blend_with_onnx_model(tmp_path, face_clip):
    pytest.importorskip("onnxruntime")
    skin = FaceParsing(_parsing_onnx(tmp_path / "skin.onnx", winner=1))
    crop = np.zeros((256, 256, 3), np.uint8)
    assert skin.input_size == 512
    np.testing.assert_array_equal(skin.mask(crop), feather_mask(np.ones((256, 256), bool)))
    hair = FaceParsing(_parsing_onnx(tmp_path / "hair.onnx", winner=17))
    assert not hair.mask(crop).any()

    pipe = MuseTalkPipeline.tiny(blend="parsing", parsing_model=tmp_path / "hair.onnx")
    avatar = pipe.prepare_avatar(face_clip, max_frames=2)
    assert avatar.has_face.all() and not avatar.masks.any()
    out = list(pipe.generate(avatar, np.zeros(2 * 640, np.float32)))
    for frame, source in zip(out, avatar.frames, strict=True):
        np.testing.assert_array_equal(frame, source)  # nothing to blend: frames unchanged
    with pytest.raises(ValueError, match="parsing_model"):
        MuseTalkPipeline.tiny(blend="parsing")


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_weight_file_names_the_file_and_layout(models_dir, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(models_dir, broken)
    (broken / "musetalkV15" / "unet.pth").unlink()
    with pytest.raises(MissingWeightsError) as err:
        MuseTalkPipeline.from_models_dir(broken)
    text = str(err.value)
    assert str(broken / "musetalkV15" / "unet.pth") in text and "released layout" in text
    assert "sd-vae" in text and "whisper" in text

    with pytest.raises(MissingWeightsError, match=r"musetalk/pytorch_model\.bin"):
        MuseTalkPipeline.from_models_dir(models_dir, version="v1")

    shutil.copy(models_dir / "musetalkV15" / "unet.pth", broken / "musetalkV15" / "unet.pth")
    (broken / "sd-vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="diffusion_pytorch_model"):
        MuseTalkPipeline.from_models_dir(broken)

    old_whisper = tmp_path / "v1whisper"
    old_whisper.mkdir()
    (old_whisper / "tiny.pt").write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match="tiny.pt"):
        MuseTalkPipeline.from_models_dir(models_dir, whisper=str(old_whisper))

    config = json.loads((models_dir / "musetalkV15" / "musetalk.json").read_text())
    (broken / "musetalkV15" / "musetalk.json").write_text(
        json.dumps({**config, "block_out_channels": [32, 96]})
    )
    AutoencoderKL(**TINY_VAE).save_pretrained(broken / "sd-vae")
    with pytest.raises(CheckpointError, match="wrong shapes"):
        MuseTalkPipeline.from_models_dir(broken)


def test_unreadable_inputs_and_no_face(tiny_pipe, tmp_path, face_clip, audio_2s):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(MediaError):
        tiny_pipe.prepare_avatar(text)
    with pytest.raises(FileNotFoundError):
        tiny_pipe.prepare_avatar(tmp_path / "missing.mp4")
    config = InferenceConfig(
        video=str(face_clip),
        audio=str(text),
        output=str(tmp_path / "o.mp4"),
        infer_model={"layout": "tiny"},
        progress=False,
    )
    with pytest.raises(MediaError):
        infer(config, pipeline=tiny_pipe)

    rng = np.random.default_rng(2)
    noise = [rng.integers(0, 256, (640, 480, 3), dtype=np.uint8) for _ in range(3)]
    clip = write_clip(tmp_path / "noface.mp4", noise)
    with pytest.raises(NoFaceError, match="no face found in any of 3 frames"):
        tiny_pipe.prepare_avatar(clip)

    nvenc = InferenceConfig(
        video=str(face_clip),
        audio=str(audio_2s),
        output=str(tmp_path / "nvenc.mp4"),
        infer_model={"layout": "tiny"},
        encoder="h264_nvenc",
        progress=False,
    )
    if nvenc_problem() is not None:  # refused before any work, not replaced by libx264
        with pytest.raises(ConfigError, match="encoder=h264_nvenc: not usable here"):
            infer(nvenc, pipeline=tiny_pipe)
        assert not list(tmp_path.glob("*nvenc*"))
    with pytest.raises(ConfigError, match="encoder"):
        parse(InferenceConfig, {"video": "v", "audio": "a", "output": "o.mp4", "encoder": "x265"})
    with pytest.raises(ConfigError, match="bbox_shift='up'"):
        parse(InferenceConfig, {"video": "v", "audio": "a", "output": "o.mp4", "bbox_shift": "up"})
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        MuseTalkPipeline.tiny(dtype=torch.float16)
    with pytest.raises(ConfigError, match="needs models_dir"):
        parse(InferenceConfig, {"video": "v", "audio": "a", "output": "o.mp4", "models_dir": None})
    with pytest.raises(ConfigError, match="fp16 is for real weights"):
        parse(
            InferenceConfig,
            {
                "video": "v",
                "audio": "a",
                "output": "o.mp4",
                "infer_model": {"layout": "tiny"},
                "fp16": True,
            },
        )


def test_region_math_is_the_preprocessing_one(tiny_pipe, face_clip):
    avatar = tiny_pipe.prepare_avatar(face_clip, bbox_shift=3, max_frames=2)
    for i in range(2):
        box = region.inference_box(
            avatar.landmarks[i], 3, 10, frame_size=avatar.frame_size, det_box=avatar.det_boxes[i]
        )
        np.testing.assert_array_equal(avatar.boxes[i], box)
        assert tuple(avatar.rects[i]) == region.pixel_rect(box, avatar.frame_size)


def test_audio_tokens_follow_the_positional_encoding_switch(tiny_pipe, speech):
    features = tiny_pipe.encode_audio(speech[: 3 * 640])
    with_pe = tiny_pipe.audio_tokens(features, 3, 0, 25)
    off = MuseTalkPipeline.tiny(audio_positional_encoding=False)
    without = off.audio_tokens(features, 3, 0, 25)
    assert with_pe.shape == (3, 10 * tiny_pipe.audio_encoder.num_hidden_states, 384)
    pos = torch.arange(with_pe.shape[1], dtype=torch.float64)[:, None]
    angle = pos / 10000 ** (torch.arange(0, 384, 2, dtype=torch.float64) / 384)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(with_pe.shape[1], 384)
    torch.testing.assert_close(with_pe - without, table.float().expand_as(with_pe))
