"""Training DataModule on shards from the real preprocessing of the shared talking video."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import tarfile
from collections import OrderedDict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from musetalk.audio import load_audio
from musetalk.audio.context import context_features
from musetalk.audio.mel import log_mel, mel_window
from musetalk.audio.whisper import WhisperEncoder
from musetalk.audio.windows import audio_windows
from musetalk.data.reader import decode_meta, iter_samples, resolve_shards
from musetalk.data.schema import ShardError
from musetalk.face import region
from musetalk.training.clips import context_audio_windows, finish_batch
from musetalk.training.crops import context_box
from musetalk.training.data import TalkingFaceDataModule
from musetalk.training.reference import (
    pose_mouth_descriptors,
    select_references,
    v15_candidates,
)

S = 256
MAX_FRAMES = 30  # 250 frames -> 8 samples of 30 (the last 10 frames are a short track)


@pytest.fixture(scope="module")
def whisper_dir(tiny_whisper_dir: Path) -> Path:
    return tiny_whisper_dir


@pytest.fixture(scope="module")
def shards(demo_whisper_shards: Path) -> Path:
    """The real preprocessing with cached (tiny) Whisper features: one tar of 8 samples."""
    return demo_whisper_shards


@pytest.fixture(scope="module")
def samples(shards: Path) -> dict:
    return {s.key: s for s in iter_samples(shards)}


def tar_samples(tar_path: Path) -> OrderedDict:
    """key -> [(member name, bytes)] in tar order."""
    out: OrderedDict = OrderedDict()
    with tarfile.open(tar_path) as tar:
        for info in tar:
            key = info.name.split(".", 1)[0]
            out.setdefault(key, []).append((info.name, tar.extractfile(info).read()))
    return out


def write_tar(path: Path, members: list) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def uneven_shards(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 8 samples split into 3 shards of 1, 2 and 5 samples."""
    out = tmp_path_factory.mktemp("uneven")
    by_key = list(tar_samples(next(shards.glob("*.tar"))).values())
    assert len(by_key) == 8
    start = 0
    for i, n in enumerate((1, 2, 5)):
        write_tar(out / f"{i:05d}.tar", [m for sample in by_key[start : start + n] for m in sample])
        start += n
    return out


def datamodule(shards: Path | str, **kwargs) -> TalkingFaceDataModule:
    kwargs.setdefault("num_workers", 0)
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("batches_per_epoch", 2)
    return TalkingFaceDataModule(str(shards), **kwargs)


def batches(dm: TalkingFaceDataModule, rank: int = 0) -> list[dict]:
    """The loader's batches, finished as the module finishes them (the batch contract)."""
    return [finish_batch(b) for b in dm.train_loader(rank)]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, S, S) in [-1, 1] -> (S, S, 3) uint8 (exact inverse of the loader's conversion)."""
    return ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)


def check_common(batch: dict, b: int, f: int, audio: str) -> None:
    assert len(batch["key"]) == b and all(isinstance(k, str) for k in batch["key"])
    for name in ("target", "reference"):
        x = batch[name]
        assert x.shape == (b, f, 3, S, S) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0.1
    for name in ("target_index", "reference_index"):
        assert batch[name].shape == (b, f) and batch[name].dtype == torch.int64
    t = batch["target_index"]
    assert torch.all(t[:, 1:] - t[:, :-1] == 1)  # consecutive frames
    assert torch.all((batch["reference_index"] - t).abs() >= 5)
    box = batch["mouth_box"]
    assert box.shape == (b, f, 4) and box.dtype == torch.float32
    assert torch.all(box[..., 2] > box[..., 0]) and torch.all(box[..., 3] > box[..., 1])
    assert box.min() >= 0 and box.max() <= S
    # MuseTalk's mouth box: height = width / 2 (where the crop edges did not cut it)
    inside = (box[..., 0] > 0) & (box[..., 1] > 0) & (box[..., 2] < S) & (box[..., 3] < S)
    width, height = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    assert inside.any() and torch.allclose(2 * height[inside], width[inside], atol=1e-3)
    assert batch["bottom_margin"].shape == (b,) and batch["shift_norm"].shape == (b,)
    if audio == "cached":
        assert batch["audio"].shape == (b, f, 10 * 3, 64) and batch["audio"].dtype == torch.float32
        assert "audio_wav" not in batch
    else:
        assert batch["audio_wav"].shape == (b, 480000) and batch["audio_wav"].dtype == torch.float32
        assert batch["audio_context"].shape == (b, 3)
        assert batch["audio_context"].dtype == torch.int64
        assert torch.all(batch["audio_wav"][:, -16000:] == 0)  # past the 10 s source: padding
        assert batch["audio_wav"][:, :16000].abs().max() > 0.01
        assert "audio" not in batch


def test_stage1_batches(shards: Path) -> None:
    dm = datamodule(shards, batch_size=8, batches_per_epoch=3)
    got = batches(dm)
    assert len(got) == 3
    for batch in got:
        check_common(batch, 8, 1, "cached")
        assert "mel" not in batch
        assert torch.all(batch["bottom_margin"] == 0) and torch.all(batch["shift_norm"].isnan())


def test_stage2_batches_wav_mode(shards: Path) -> None:
    dm = datamodule(
        shards,
        batch_size=2,
        frames_per_sample=16,
        sync_mel=True,
        bottom_margin={"mean": 10, "std": 10, "max": 20},
        audio_features="wav",
        shuffle_buffer=4,
        clips_per_sample=2,
    )
    got = batches(dm)
    assert len(got) == 2
    for batch in got:
        check_common(batch, 2, 16, "wav")
        assert batch["mel"].shape == (2, 80, 52) and batch["mel"].dtype == torch.float32
        assert batch["mel"].min() >= -4 and batch["mel"].max() <= 4
        margins = batch["bottom_margin"]
        assert torch.all((margins >= 0) & (margins <= 20))


def expected_crop(sample, t: int, margin: float = 0.0, shift_norm: float | None = None):
    """region.crop of the stored context image with the region module's box (test-side path)."""
    meta = sample.meta
    rect, size = meta["crop_rect"][t], meta["crop_size"][t]
    lms = region.points_to_crop(np.asarray(meta["landmarks"][t]), rect, size)
    det = region.box_to_crop(meta["det_box"][t], rect, size)
    px = margin * size[1] / (rect[3] - rect[1])
    if shift_norm is None:
        box = region.training_box(det, lms)
        box[3] += px
    else:
        shift = shift_norm * region.nose_length(lms)
        box = region.inference_box(lms, shift, px, frame_size=(size[1], size[0]), det_box=det)
    return region.crop(sample.frames[t], box, S), box, lms


def crop_row(y: float, box: np.ndarray, image_shape: tuple) -> float:
    """Row of the S x S crop showing context-crop row y."""
    _, y1, _, y2 = region.pixel_rect(box, image_shape[:2])
    return (y - y1) * S / (y2 - y1)


@pytest.mark.parametrize("margin", [False, True])
def test_crops_are_region_crops(shards: Path, samples: dict, margin: bool) -> None:
    """One code path: the loader's crops == region.crop(stored image, region-module box); with
    augmentation off the crop's middle row is the training box's mask upper bound."""
    dm = datamodule(
        shards,
        batch_size=6,
        batches_per_epoch=1,
        shuffle_buffer=0,
        clips_per_sample=3,
        bottom_margin={"mean": 10, "std": 10, "max": 20} if margin else None,
    )
    batch = batches(dm)[0]
    for b, key in enumerate(batch["key"]):
        sample = samples[key]
        m = float(batch["bottom_margin"][b])
        assert (m > 0) == margin or m == 0
        for name, index in (("target", "target_index"), ("reference", "reference_index")):
            t = int(batch[index][b, 0])
            crop, box, _ = expected_crop(sample, t, margin=m)
            np.testing.assert_array_equal(to_uint8(batch[name][b, 0]), crop)
        if not margin:
            t = int(batch["target_index"][b, 0])
            meta = sample.meta
            bound = region.points_to_crop(
                [[0.0, meta["mask_upper_bound"][t]]], meta["crop_rect"][t], meta["crop_size"][t]
            )[0, 1]
            _, box, _ = expected_crop(sample, t)
            assert abs(crop_row(bound, box, sample.frames[t].shape) - S / 2) <= 1.0


def test_bottom_margin_moves_y2(samples: dict) -> None:
    sample = next(iter(samples.values()))
    meta = sample.meta
    t = 3
    args = (meta["landmarks"][t], meta["det_box"][t], meta["crop_rect"][t], meta["crop_size"][t])
    plain = context_box(*args)
    moved = context_box(*args, bottom_margin=12.5)
    rect, size = meta["crop_rect"][t], meta["crop_size"][t]
    np.testing.assert_allclose(moved[:3], plain[:3])
    assert moved[3] - plain[3] == pytest.approx(12.5 * size[1] / (rect[3] - rect[1]))
    # the box without augmentation is the stored training box, mapped into the crop
    np.testing.assert_allclose(
        plain, region.box_to_crop(meta["training_box"][t], rect, size), atol=0.05
    )


def test_shift_augment_uses_inference_box(shards: Path, samples: dict) -> None:
    dm = datamodule(shards, batch_size=4, batches_per_epoch=1, shift_augment=True)
    batch = batches(dm)[0]
    for b, key in enumerate(batch["key"]):
        sample = samples[key]
        shift = float(batch["shift_norm"][b])
        norms = [v for v in sample.meta["equivalent_shift_norm"] if v is not None]
        assert min(abs(shift - v) for v in norms) < 1e-6  # drawn from the sample's own values
        t = int(batch["target_index"][b, 0])
        crop, box, lms = expected_crop(sample, t, shift_norm=shift)
        np.testing.assert_array_equal(to_uint8(batch["target"][b, 0]), crop)
        # mask boundary at landmark 29 + bbox_shift (in the crop)
        boundary = lms[29, 1] + shift * region.nose_length(lms)
        assert abs(crop_row(boundary, box, sample.frames[t].shape) - S / 2) <= 1.0


def synthetic_landmarks(num: int = 20) -> np.ndarray:
    """Frame 0 is the target. Frames 5-12 turn the head slightly, 13-19 strongly; odd frames
    open the mouth widely (more so the later), even frames barely."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, size=(68, 2))
    out = np.repeat(base[None], num, axis=0)
    for i in range(num):
        angle = 0.0 if i < 5 else 0.01 * (i - 4) if i <= 12 else 0.3 + 0.01 * i
        c, s = math.cos(angle), math.sin(angle)
        jaw = base[:17] - base[:17].mean(axis=0)
        out[i, :17] = jaw @ np.array([[c, -s], [s, c]]).T + base[:17].mean(axis=0)
        opening = (5.0 + i) if i % 2 else 0.01 * i
        out[i, 60:64, 1] -= opening  # upper inner lip up
        out[i, 64:68, 1] += opening  # lower inner lip down
    return out


def test_v15_rule_picks_from_the_intersection() -> None:
    lms = synthetic_landmarks()
    pose, mouth = pose_mouth_descriptors(lms)
    # 15 candidates (>= 5 away from frame 0): 8 most pose-similar = 5..12, 8 most
    # mouth-dissimilar = the odd frames 5..19 -> intersection {5, 7, 9, 11}
    np.testing.assert_array_equal(v15_candidates(pose, mouth, 0), [5, 7, 9, 11])
    rng = np.random.default_rng(1)
    picks = select_references(lms, np.zeros(400, dtype=np.int64), rng, "v15")
    assert set(picks.tolist()) == {5, 7, 9, 11}
    # invariant to where the face is and how big it is
    moved = lms * 3.7 + np.array([250.0, -40.0])
    np.testing.assert_array_equal(v15_candidates(*pose_mouth_descriptors(moved), 0), [5, 7, 9, 11])
    # an empty intersection (fraction 0.2: pose {5, 6, 7}, mouth {15, 17, 19}) falls back to random
    pose_mouth = pose_mouth_descriptors(lms)
    assert v15_candidates(*pose_mouth, 0, fraction=0.2).size == 0
    picks = select_references(lms, np.zeros(400, dtype=np.int64), rng, "v15", fraction=0.2)
    assert set(picks.tolist()) == set(range(5, 20))


def test_random_rule_and_gap() -> None:
    lms = synthetic_landmarks(12)
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(12), 50)
    for rule in ("random", "v15"):
        refs = select_references(lms, targets, rng, rule, min_gap=5)
        assert np.all(np.abs(refs - targets) >= 5)
    refs = select_references(lms, np.full(500, 6), rng, "random", min_gap=5)
    assert set(refs.tolist()) == {0, 1, 11}
    with pytest.raises(ValueError, match="no reference frame"):
        select_references(lms[:8], [4], rng, "random", min_gap=5)
    with pytest.raises(ValueError, match="reference rule"):
        select_references(lms, [0], rng, "v20")


def test_training_windows_equal_inference_windows(
    shards: Path, whisper_dir: Path, samples: dict, shared_data: Path
) -> None:
    """One audio context: for samples starting at source frames 0, 30, ..., 210, the tokens of
    sample frame j, from the cached states and from the module's wav path, equal inference's
    tokens of source frame f + j (Whisper on the whole file in 30 s windows from its start)."""
    encoder = WhisperEncoder(str(whisper_dir))
    source = encoder.encode(load_audio(shared_data / "talking_demo1.mp4"))
    starts = sorted(s.meta["frame_index"][0] for s in samples.values())
    assert starts[:3] == [0, 30, 60] and starts[-1] == 210
    for sample in samples.values():
        first, n = sample.meta["frame_index"][0], sample.meta["num_frames"]
        for t0 in (0, 1, n // 2, n - 16):
            want = audio_windows(source, 16, start_frame=first + t0)
            got = context_features(sample.whisper, sample.context, 16, start=t0)
            np.testing.assert_allclose(got.astype(np.float32), want, rtol=0, atol=4e-3)
    kwargs = dict(batch_size=3, batches_per_epoch=1, frames_per_sample=16, seed=5)
    cached = batches(datamodule(shards, audio_features="cached", **kwargs))[0]
    wav = batches(datamodule(shards, audio_features="wav", **kwargs))[0]
    assert cached["key"] == wav["key"]
    torch.testing.assert_close(cached["target"], wav["target"], rtol=0, atol=0)
    assert wav["audio_wav"].shape[1] % 480000 == 0 and wav["audio_context"].shape == (3, 3)
    # the module's wav path: encode each 30 s window of the context, then take its steps
    rows = wav["audio_wav"].reshape(-1, 480000).numpy()
    states = torch.stack([torch.from_numpy(encoder.encode_windows(r)) for r in rows])
    states = states.reshape(3, -1, *states.shape[2:])
    from_wav = context_audio_windows(states, wav["audio_context"], 16)
    for b, key in enumerate(wav["key"]):
        frame = samples[key].meta["frame_index"][0] + int(wav["target_index"][b, 0])
        want = torch.from_numpy(audio_windows(source, 16, start_frame=frame))
        # fp16 tolerance: context.wav is 16-bit PCM, whisper.npy float16
        torch.testing.assert_close(from_wav[b], want, rtol=0, atol=4e-3)
        torch.testing.assert_close(cached["audio"][b], want, rtol=0, atol=4e-3)


def test_mel_alignment_and_range() -> None:
    sr, seconds = 16000, 2.0
    audio = np.zeros(int(sr * seconds), dtype=np.float32)
    t = np.arange(len(audio)) / sr
    burst = (t >= 0.8) & (t < 0.88)  # video frames 20 and 21
    audio[burst] = 0.5 * np.sin(2 * np.pi * 1000 * t[burst])
    mel = log_mel(audio)
    assert mel.shape == (80, len(audio) // 200 + 1) and mel.dtype == np.float32
    assert mel.min() == -4 and mel.max() <= 4
    window = mel_window(mel, 16, 16)
    assert window.shape == (80, 52)
    loud = np.flatnonzero(window.max(axis=0) > -3.5)
    # frames 20-21 start 4 frames into the window: mel columns ~12.8 .. 19.2 (+-2.5 for the window)
    assert loud.min() >= 10 and loud.max() <= 22
    peak_bin = int(window[:, 15].argmax())
    assert 20 <= peak_bin <= 40  # 1 kHz is around mel bin 28 of 80 (55-7600 Hz, Slaney)
    assert mel_window(mel, 45, 16).shape == (80, 52)  # past the end: floor value
    assert mel_window(mel, 45, 16)[:, -1].max() == -4


def test_ranks_get_exact_batches_on_uneven_shards(uneven_shards: Path) -> None:
    """DDP safety: every rank yields exactly batches_per_epoch batches from resampled uneven
    shards; ranks draw different clips; the same rank and seed reproduce; epochs differ."""
    dm = datamodule(uneven_shards, batch_size=3, batches_per_epoch=5, clips_per_sample=2)
    assert len(resolve_shards(uneven_shards)) == 3

    def draws(loader) -> list:
        got = list(loader)
        assert len(got) == 5
        pairs = (zip(b["key"], b["target_index"][:, 0], strict=True) for b in got)
        return [(k, int(t)) for pair in pairs for k, t in pair]

    rank0, rank1 = dm.train_loader(0), dm.train_loader(1)
    assert len(rank0) == len(rank1) == 5
    first0, first1 = draws(rank0), draws(rank1)
    assert first0 != first1
    assert len({k for k, _ in first0 + first1}) > 2  # several samples, several shards
    assert draws(dm.train_loader(0)) == first0  # reproducible
    assert draws(rank0) != first0  # the next epoch draws anew


def stream(loader, n: int) -> list[tuple]:
    """n batches of a train loader over its epochs: (keys, target_index, target) per batch."""
    out = []
    while len(out) < n:
        for b in loader:
            out.append((b["key"], b["target_index"], b["target"]))
            if len(out) == n:
                break
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_state_continues_the_stream(uneven_shards: Path, workers: int) -> None:
    """A DataModule restored from another's state_dict after k batches yields that one's batches
    k + 1 .. N (mid-epoch, at and across the epoch boundary; with persistent workers too)."""
    kwargs = dict(batch_size=2, batches_per_epoch=3, clips_per_sample=2, num_workers=workers)
    reference = stream(datamodule(uneven_shards, **kwargs).train_loader(), 8)
    for k in (1, 2, 3, 4, 5):
        first = datamodule(uneven_shards, **kwargs)
        loader = first.train_loader()
        assert len(stream(loader, k)) == k
        state = first.state_dict()
        assert state == {"epoch": k // 3, "batches": k % 3}
        second = datamodule(uneven_shards, **kwargs)
        second.load_state_dict(state)
        assert second.state_dict() == state
        rest = stream(second.train_loader(), 8 - k)
        for (keys, index, target), (ref_keys, ref_index, ref_target) in zip(
            rest, reference[k:], strict=True
        ):
            assert keys == ref_keys
            assert torch.equal(index, ref_index) and torch.equal(target, ref_target)


def test_workers_start_after_opencv_threads_ran_in_the_main_process(uneven_shards: Path) -> None:
    # A validation pass (or any OpenCV call) in the main process starts OpenCV's thread pool;
    # workers forked after it used to hang forever in cv2.setNumThreads. A subprocess, as the
    # failure is a hang.
    script = f"""
import cv2, numpy as np
from musetalk.training.data import TalkingFaceDataModule
cv2.setNumThreads(2)
image = np.zeros((1080, 1920, 3), np.uint8)
for _ in range(3):
    cv2.resize(image, (2500, 2500), interpolation=cv2.INTER_LANCZOS4)
dm = TalkingFaceDataModule({str(uneven_shards)!r}, batch_size=2, batches_per_epoch=2, num_workers=2)
print(len(list(dm.train_loader())), "batches")
"""
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its loader workers too can be killed if it hangs
    )
    try:
        out, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail("the loader's workers hung after OpenCV threads ran in the main process")
    assert child.returncode == 0, err[-2000:]
    assert out.strip().endswith("2 batches")


def test_two_workers_and_lightning_fit(uneven_shards: Path) -> None:
    dm = datamodule(uneven_shards, batch_size=2, batches_per_epoch=3, num_workers=2)
    loader = dm.train_loader()
    assert len(loader) == 3 and len(list(loader)) == 3

    class Count(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.steps: list[int] = []
            self.val_batches = 0

        def training_step(self, batch: dict, index: int) -> torch.Tensor:
            self.steps.append(self.current_epoch)
            return self.weight * batch["target"].float().mean()

        def validation_step(self, batch: dict, index: int) -> None:
            self.val_batches += 1

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Count()
    dm = datamodule(
        uneven_shards, batch_size=2, batches_per_epoch=3, num_workers=2, val_fraction=0.3
    )
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert model.steps == [0, 0, 0, 1, 1, 1]
    assert len(dm.val_urls) == 1 and len(dm.train_urls) == 2
    # the held-out shard has 5 samples x 8 clips = 40 clips -> 20 batches per validation pass
    assert model.val_batches == 2 * 20


def test_validation_pass_is_deterministic(shards: Path) -> None:
    dm = datamodule(shards, val_shards=str(shards), val_batch_size=6, clips_per_sample=2)
    dm.setup()
    first = list(dm.val_dataloader())
    second = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in first) == 8 * 2  # every sample, clips_per_sample each
    assert [b["key"] for b in first] == [b["key"] for b in second]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a["target_index"], b["target_index"])
        assert torch.equal(a["target"], b["target"])
    assert datamodule(shards).val_dataloader() == []


def test_unknown_schema_version_is_refused(shards: Path, tmp_path: Path) -> None:
    members = [m for sample in tar_samples(next(shards.glob("*.tar"))).values() for m in sample]
    bad = []
    for name, data in members:
        if name.endswith(".json"):
            meta = json.loads(data)
            meta["schema_version"] = 99
            data = json.dumps(meta).encode()
        bad.append((name, data))
    write_tar(tmp_path / "00000.tar", bad)
    with pytest.raises(ShardError, match="schema_version 99"):
        datamodule(tmp_path).setup()  # audio "auto" reads the first sample
    with pytest.raises(ShardError, match="schema_version 99"):
        batches(datamodule(tmp_path, audio_features="wav"))


def test_shard_sources(shards: Path, uneven_shards: Path) -> None:
    tars = sorted(str(p) for p in uneven_shards.glob("*.tar"))
    assert resolve_shards(uneven_shards) == tars
    assert resolve_shards(str(uneven_shards / "0000{0..2}.tar")) == tars
    assert resolve_shards([tars[2], tars[0]]) == [tars[2], tars[0]]
    # an fsspec URL (the in-memory filesystem stands in for object storage)
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/musetalk-train/ds/00000.tar", next(shards.glob("*.tar")).read_bytes())
    urls = resolve_shards("memory://musetalk-train/ds")
    assert urls == ["memory:///musetalk-train/ds/00000.tar"]
    batch = batches(datamodule("memory://musetalk-train/ds", batches_per_epoch=1))[0]
    check_common(batch, 4, 1, "cached")
    with pytest.raises(ValueError, match="bottom_margin"):
        datamodule(shards, bottom_margin={"mean": 10})


def test_min_face_size_leaves_out_narrow_faces(shards: Path) -> None:
    """MuseTalk's filter: a sample whose first frame's face (detector box joined with the
    landmark extent) is narrower than min_face_size original px gives no clips."""
    from musetalk.training.clips import ClipOptions, face_width, make_clips

    raw = next(iter(tar_samples(next(shards.glob("*.tar"))).values()))
    sample = {"__key__": raw[0][0].split(".", 1)[0], "__url__": "x"}
    sample |= {name.split(".", 1)[1]: data for name, data in raw}
    meta = decode_meta(sample, "x")
    width = face_width(meta)
    lms, det = np.asarray(meta["landmarks"][0]), np.asarray(meta["det_box"][0])
    assert width == pytest.approx(max(det[2], lms[:, 0].max()) - min(det[0], lms[:, 0].min()))
    rng = np.random.default_rng(0)
    wide = ClipOptions(crop_size=64, clips_per_sample=1, min_face_size=width - 1)
    narrow = ClipOptions(crop_size=64, clips_per_sample=1, min_face_size=width + 1)
    assert len(make_clips(sample, rng, wide)) == 1
    assert make_clips(sample, rng, narrow) == []


def test_collate_ships_uint8_and_finish_batch_gives_the_contract() -> None:
    """collate keeps the crops' bytes (uint8, batch layout (B, F, 3, S, S)) and pads the context
    audio to the batch's longest only; finish_batch then gives x / 127.5 - 1 in float32 for
    every byte value (the values the loader used to make in its workers: a table computed by
    torch in float32) and whole 30 s windows, and leaves a finished batch as it is."""
    from musetalk.training.clips import collate

    rng = np.random.default_rng(0)
    items = []
    for k in range(3):
        image = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
        image.reshape(-1)[:256] = np.arange(256)  # every value
        wav = rng.standard_normal(1000 + 700 * k).astype(np.float32)
        items.append(
            {"key": f"k{k}", "target": image, "reference": image[::-1].copy(), "audio_wav": wav}
        )
    raw = collate(items)
    assert raw["audio_wav"].shape == (3, 2400)
    done = finish_batch(raw)
    table = torch.arange(256, dtype=torch.float32).div_(127.5).sub_(1.0)
    for name in ("target", "reference"):
        plain = torch.from_numpy(np.stack([item[name] for item in items])).permute(0, 1, 4, 2, 3)
        assert raw[name].dtype == torch.uint8 and torch.equal(raw[name], plain)
        assert done[name].dtype == torch.float32 and done[name].shape == (3, 2, 3, 24, 24)
        assert torch.equal(done[name], table[plain.long()])
    assert done["audio_wav"].shape == (3, 480000)
    for b, item in enumerate(items):
        n = len(item["audio_wav"])
        assert torch.equal(done["audio_wav"][b, :n], torch.from_numpy(item["audio_wav"]))
        assert not done["audio_wav"][b, n:].any()
    again = finish_batch(done)
    assert all(again[k] is done[k] for k in ("target", "reference", "audio_wav"))
