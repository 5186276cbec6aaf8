"""Preprocessing end to end: real video, every bad-input kind, resume after SIGKILL, Ray."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import synth

from musetalk.audio import audio_for_frames, load_audio
from musetalk.config import parse
from musetalk.data import samples as samples_module
from musetalk.data.preprocess import PreprocessConfig, preprocess
from musetalk.data.reader import decode_wav, iter_samples
from musetalk.data.samples import SampleOptions, SourceProcessor
from musetalk.data.sources import Source
from musetalk.errors import NoAudioStream, OutputRefusedError
from musetalk.face import build_analyzer, region
from musetalk.face.analyzer import Face
from musetalk.face.tracking import FaceTracker, TrackedFace
from musetalk.video import probe

REPO = Path(__file__).resolve().parents[1]
SECONDS = 3  # length of the synthesised clips


def run_config(input_path, output, **over) -> PreprocessConfig:
    values = {"input": str(input_path), "output": str(output), "workers": 1, "progress": False}
    values.update(over)
    return parse(PreprocessConfig, values)


@pytest.fixture(scope="module")
def face_frames(small_talking) -> list[np.ndarray]:
    """3 s of the real talking video at 360x640 (face ~75 px wide): fast but real."""
    return small_talking[0][: 25 * SECONDS]


@pytest.fixture(scope="module")
def speech(small_talking) -> np.ndarray:
    return small_talking[1][: 16000 * SECONDS]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, face_frames, speech) -> Path:
    """A directory with one source of every kind preprocessing must handle."""
    d = tmp_path_factory.mktemp("zoo")
    synth.write_frames(d / "good.mp4", face_frames, fps=25, audio=speech)
    # the same 3 s shown at 30 and 60 fps (frames repeated to fill the time)
    for fps in (30, 60):
        idx = (np.arange(fps * SECONDS) * 25 // fps).tolist()
        synth.write_frames(d / f"fps{fps}.mp4", [face_frames[i] for i in idx], fps, audio=speech)
    # variable frame rate: irregular timestamps 20-60 ms apart
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.integers(20, 61, size=80)).tolist()
    pts = [0] + [p for p in pts if p < 1000 * SECONDS][:-1]
    vfr = [face_frames[min(len(face_frames) - 1, p * 25 // 1000)] for p in pts]
    synth.write_frames(d / "vfr.mp4", vfr, pts_ms=pts, audio=speech)
    # stored landscape with a display matrix that turns it upright
    stored = [np.ascontiguousarray(np.rot90(f, 1)) for f in face_frames]
    synth.write_frames(d / "rotated.mp4", stored, 25, rotation=-90, audio=speech)
    (d / "zero.mp4").write_bytes(b"")
    synth.truncate(d / "good.mp4", d / "truncated.mp4", 0.5)
    (d / "notvideo.mp4").write_text("this is not a video\n" * 50)
    synth.write_frames(d / "noaudio.mp4", face_frames, 25)
    synth.write_audio(d / "audioonly.mp4", speech)
    synth.write_frames(d / "short.mp4", face_frames[:15], 25, audio=speech[: 16000 * 15 // 25])
    noise = [rng.integers(0, 256, (640, 360, 3), dtype=np.uint8) for _ in range(40)]
    synth.write_frames(d / "noface.mp4", noise, 25, audio=speech[: 16000 * 40 // 25])
    two = [np.concatenate([f, f[:, ::-1]], axis=1) for f in face_frames[:40]]
    synth.write_frames(d / "twofaces.mp4", two, 25, audio=speech[: 16000 * 40 // 25])
    tiny = [cv2.resize(f, (180, 320), interpolation=cv2.INTER_AREA) for f in face_frames[:40]]
    synth.write_frames(d / "small.mp4", tiny, 25, audio=speech[: 16000 * 40 // 25])
    # an edit to a differently lit shot of the same framing: two samples, split at the cut
    shot_b = [cv2.convertScaleAbs(f, alpha=0.6, beta=70) for f in face_frames[40:75]]
    synth.write_frames(d / "cut.mp4", face_frames[:40] + shot_b, 25, audio=speech)
    # a faceless stretch in the middle: two samples instead of a lost source
    gap = face_frames[:40] + noise[:10] + face_frames[40:75]
    synth.write_frames(d / "gap.mp4", gap, 25, audio=np.tile(speech, 2)[: 16000 * 85 // 25])
    return d


@pytest.fixture(scope="module")
def zoo_run(zoo, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("zoo_out")
    summary = preprocess(run_config(zoo, out, workers=2, sources_per_shard=3))
    return out, summary


def manifest(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {Path(r["video"]).name: r for r in rows}


EXPECTED = {
    "good.mp4": ("ok", None),
    "fps30.mp4": ("ok", None),
    "fps60.mp4": ("ok", None),
    "vfr.mp4": ("ok", None),
    "rotated.mp4": ("ok", None),
    "gap.mp4": ("ok", None),
    "cut.mp4": ("ok", None),
    "zero.mp4": ("skipped", "zero_bytes"),
    "truncated.mp4": ("skipped", "truncated"),
    "notvideo.mp4": ("skipped", "not_a_video"),
    "noaudio.mp4": ("skipped", "no_audio"),
    "audioonly.mp4": ("skipped", "audio_only"),
    "short.mp4": ("skipped", "too_short"),
    "noface.mp4": ("skipped", "no_face"),
    "twofaces.mp4": ("skipped", "several_faces"),
    "small.mp4": ("skipped", "face_too_small"),
}


def test_every_source_processed_or_skipped_with_reason(zoo, zoo_run):
    out, summary = zoo_run
    rows = manifest(out)
    assert {name: (r["status"], r["reason"]) for name, r in rows.items()} == EXPECTED
    # 30/60 fps, VFR and rotated inputs are resampled/rotated to 25 fps, all frames kept
    for name in ("good.mp4", "fps30.mp4", "fps60.mp4", "rotated.mp4"):
        assert rows[name]["frames_decoded"] == 25 * SECONDS, name
    for name in ("good.mp4", "fps30.mp4", "fps60.mp4", "vfr.mp4", "rotated.mp4"):
        assert rows[name]["frames_in_samples"] == probe(zoo / name).num_frames, name
    assert rows["fps60.mp4"]["resampled"] and not rows["good.mp4"]["resampled"]
    assert rows["rotated.mp4"]["rotation"] == -90
    # the faceless stretch splits the clip into two samples; its frames are counted as dropped
    assert len(rows["gap.mp4"]["samples"]) == 2
    assert rows["gap.mp4"]["frames_dropped"] == {"no_face": 10}
    # the edit at frame 40 splits the clip: samples start at frames 0 and 40
    assert [k.rsplit("_", 1)[1] for k in rows["cut.mp4"]["samples"]] == ["000000", "000040"]
    skipped = {reason: 1 for status, reason in EXPECTED.values() if status == "skipped"}
    assert summary["sources_skipped"] == skipped
    assert summary["sources_ok"] == 7 and summary["samples"] == 9
    assert json.loads((out / "stats.json").read_text())["samples"] == 9


def test_samples_round_trip_through_reader(zoo_run, face_frames):
    out, summary = zoo_run
    samples = {s.key: s for s in iter_samples(out)}
    assert len(samples) == summary["samples"]
    frames_total = 0
    for s in samples.values():
        m = s.meta
        T = m["num_frames"]
        frames_total += T
        assert "." not in s.key and m["key"] == s.key
        assert m["fps"] == 25 and len(s.frames) == T and len(m["frame_index"]) == T
        assert np.all(np.diff(m["frame_index"]) == 1)  # one continuous track
        assert len(s.audio) == T * 640  # exactly T/25 s at 16 kHz
        assert np.asarray(m["landmarks"]).shape == (T, 68, 2)
        for name in ("det_box", "training_box", "crop_rect"):
            assert np.asarray(m[name]).shape == (T, 4), name
        for t in range(T):
            lms, det = np.asarray(m["landmarks"][t]), m["det_box"][t]
            np.testing.assert_allclose(
                m["training_box"][t], region.training_box(det, lms), atol=0.01
            )
            bound = m["mask_upper_bound"][t]
            assert m["nearest_nose_landmark"][t] == region.nearest_nose_landmark(bound, lms)
            assert m["equivalent_shift"][t] == pytest.approx(
                region.equivalent_shift(det, lms), abs=0.01
            )
            w, h = m["crop_size"][t]
            assert s.frames[t].shape == (h, w, 3)
        assert m["source_size"] in ([640, 360], [640, 720])
    assert frames_total == summary["frames"]
    # a stored crop, mapped back into the frame, shows the same pixels as the source frame
    good = next(s for s in samples.values() if s.meta["source"].endswith("good.mp4"))
    t = 30
    rect, size = good.meta["crop_rect"][t], good.meta["crop_size"][t]
    box = region.training_box(good.meta["det_box"][t], good.meta["landmarks"][t])
    from_crop = region.crop(good.frames[t], region.box_to_crop(box, rect, size), size=64)
    from_frame = region.crop(face_frames[good.meta["frame_index"][t]], box, size=64)
    assert np.abs(from_crop.astype(int) - from_frame.astype(int)).mean() < 6


def test_stats_match_the_samples(zoo_run):
    out, summary = zoo_run
    metas = [s.meta for s in iter_samples(out, images=False)]
    nearest = np.concatenate([m["nearest_nose_landmark"] for m in metas])
    counts = {k: int((nearest == int(k)).sum()) for k in ("28", "29", "30")}
    assert summary["nose_landmark_counts"] == counts
    shifts = np.concatenate([m["equivalent_shift"] for m in metas])
    assert summary["equivalent_shift_px"]["q50"] == pytest.approx(np.median(shifts), abs=0.5)
    lms = np.concatenate([np.asarray(m["landmarks"]) for m in metas])
    lo, hi = region.shift_range(lms)
    np.testing.assert_allclose(summary["shift_range"], [lo, hi], atol=1e-3)
    for name in ("sources", "frames_with_face", "region_version", "schema_version", "seconds"):
        assert name in summary
    assert json.loads((out / "config.json").read_text())["config"]["sources_per_shard"] == 3
    # per source: its own shares, median shift and range, from its own samples
    assert summary["face_backend"] == "dlib"
    rows = {r["source"]: r for r in summary["sources_region"]}
    assert sum(r["frames"] for r in rows.values()) == summary["frames"]
    good = [m for m in metas if m["source"].endswith("good.mp4")]
    good_lms = np.concatenate([np.asarray(m["landmarks"]) for m in good])
    np.testing.assert_allclose(
        rows["good.mp4"]["shift_range"], region.shift_range(good_lms), atol=1e-3
    )
    good_shifts = np.concatenate([m["equivalent_shift"] for m in good])
    assert rows["good.mp4"]["equivalent_shift_px_q50"] == pytest.approx(
        np.median(good_shifts), abs=0.5
    )


def test_summary_explains_a_boundary_outside_musetalks_range():
    """The printed table names the backend, prints ranges as [lo ~ hi], lists sources (20 at
    most) and, when the median boundary is below landmark 30, says what that means."""
    from musetalk.data.summary import boundary_notice, format_summary

    row = {"frames": 10, "nose_landmark_shares": {"28": 0.0, "29": 0.1, "30": 0.9}}
    summary = {
        "sources_ok": 25, "sources_partial": 0, "sources_skipped": {}, "source_warnings": {},
        "samples": 25, "frames": 250, "frames_decoded": 250, "shards": 7, "tars": ["a"] * 7,
        "nose_landmark_shares": {"28": 0.0, "29": 0.002, "30": 0.998},
        "equivalent_shift_px": {"q05": 15.6, "q50": 31.9, "q95": 43.6},
        "equivalent_shift_norm": {"q50": 0.58},
        "shift_range": [-13.666, 14.372], "seconds": 3.0, "face_backend": "dlib",
        "sources_region": [
            {**row, "source": f"v{i:02d}.mp4", "equivalent_shift_px_q50": 30.0 + i,
             "shift_range": [-10.5, 12.9]}
            for i in range(25)
        ],
    }  # fmt: skip
    summary["boundary_notice"] = boundary_notice(summary)
    text = format_summary(summary)
    assert "face backend                     dlib" in text
    assert "[-13 ~ 14]" in text and "14.372" not in text
    assert "v19.mp4: 10, 0% / 10% / 90%, +49.0, [-10 ~ 12]" in text and "v20.mp4" not in text
    assert "5 more in stats.json (sources_region)" in text
    notice = text.split("notice: ", 1)[1]
    assert "0.58 nose lengths below landmark 29" in notice and "below landmark 30" in notice
    assert "inpaint less of the face than MuseTalk's" in notice and "face=fan" in notice
    inside = {**summary, "equivalent_shift_px": {"q50": 3.0}, "face_backend": "fan"}
    assert boundary_notice(inside) is None
    above = {
        **inside,
        "equivalent_shift_px": {"q50": -20.0},
        "equivalent_shift_norm": {"q50": -0.4},
    }
    assert "inpaint more" in boundary_notice(above) and "face=fan" not in boundary_notice(above)


def test_video_only_file_with_separate_wav(shared_data, both_videos_shards, tmp_path):
    """Alone, a video without sound is skipped (no_audio); paired with its wav in a csv list
    (the session's `both_videos_shards`), its samples carry the wav's audio, aligned."""
    video, wav = shared_data / "yongen_video_only.mp4", shared_data / "yongen.wav"
    alone = preprocess(run_config(video, tmp_path / "alone"))
    assert alone["sources_skipped"] == {"no_audio": 1}
    manifest = [json.loads(line) for line in (both_videos_shards / "manifest.jsonl").open()]
    (paired,) = [m for m in manifest if m["video"] == str(video)]
    assert paired["status"] == "ok" and paired["audio"] == str(wav) and len(paired["samples"]) >= 2
    sample = next(
        s for s in iter_samples(both_videos_shards, images=False) if s.key in paired["samples"]
    )
    reference = load_audio(wav)
    start = sample.meta["frame_index"][0] * 640
    np.testing.assert_allclose(
        sample.audio, reference[start : start + len(sample.audio)], atol=2 / 32767
    )


def test_rerun_skips_finished_shards_and_refuses_other_config(zoo, tmp_path):
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(zoo / n) for n in ("good.mp4", "short.mp4", "zero.mp4")))
    first = preprocess(run_config(listing, out, sources_per_shard=1))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("0*")}
    second = preprocess(run_config(listing, out, sources_per_shard=1))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0*")} == before
    assert first["samples"] == second["samples"] == 1
    with pytest.raises(
        OutputRefusedError, match="different configuration.*sources_per_shard: 1 -> 2"
    ):
        preprocess(run_config(listing, out, sources_per_shard=2))


def cli(*args: str, **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "preprocess" / "run.py"), *args, "progress=false"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_clean_run(zoo, tmp_path):
    """Kill -9 in the middle of writing, rerun: the same shards as one clean run, no leftovers."""
    listing = tmp_path / "list.txt"
    names = ["good.mp4", "fps30.mp4", "gap.mp4", "rotated.mp4", "noface.mp4"]
    listing.write_text("\n".join(str(zoo / n) for n in names))
    common = [f"input={listing}", "workers=1", "sources_per_shard=1", "samples_per_shard=1"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert cli(*common, f"output={clean}").wait(timeout=300) == 0

    proc = cli(*common, f"output={killed}")
    deadline = time.time() + 120
    # sorted sources: shard 1 is gap.mp4 (two samples, so two tar parts); kill in between
    while not list(killed.glob("00001-000.tar*")) and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "stats.json").exists()
    assert (killed / "00000.json").exists() and not (killed / "00001.json").exists()

    rerun = cli(*common, f"output={killed}")
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()
    assert synth.tar_digest(killed) == synth.tar_digest(clean)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in clean.iterdir())
    stats = [json.loads((d / "stats.json").read_text()) for d in (clean, killed)]
    for key in ("samples", "frames", "nose_landmark_counts", "sources_skipped"):
        assert stats[0][key] == stats[1][key]


@pytest.mark.slow
def test_ray_executor_gives_the_same_dataset(zoo, tmp_path):
    pytest.importorskip("ray")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(zoo / n) for n in ("good.mp4", "gap.mp4", "zero.mp4")))
    local = preprocess(run_config(listing, tmp_path / "local", workers=2, sources_per_shard=1))
    on_ray = preprocess(
        run_config(
            listing, tmp_path / "ray", workers=2, sources_per_shard=1, executor={"name": "ray"}
        )
    )
    assert synth.tar_digest(tmp_path / "local") == synth.tar_digest(tmp_path / "ray")
    assert local["samples"] == on_ray["samples"] == 3
    assert local["sources_skipped"] == on_ray["sources_skipped"] == {"zero_bytes": 1}


def test_cli_exit_codes(zoo, tmp_path):
    ok = cli(f"input={zoo / 'zero.mp4'}", f"output={tmp_path / 'a'}")
    assert ok.wait(timeout=120) == 0  # completed, even though its only source was skipped
    bad = cli(f"input={zoo / 'good.mp4'}", f"output={tmp_path / 'b'}", "workers=0")
    assert bad.wait(timeout=120) == 2
    assert bad.stderr.read().decode().strip() == (
        "preprocess: workers=0: input should be greater than or equal to 1"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = cli(f"input={zoo / 'good.mp4'}", f"output={blocker / 'out'}")
    assert unwritable.wait(timeout=120) != 0
    assert b"preprocess:" in unwritable.stderr.read()
    missing = cli(f"input={tmp_path / 'nothing'}", f"output={tmp_path / 'c'}")
    assert missing.wait(timeout=120) != 0 and b"does not exist" in missing.stderr.read()


def test_wav_member_is_plain_16k_pcm(zoo_run, tmp_path):
    out, _ = zoo_run
    with tarfile.open(next(out.glob("*.tar"))) as tar:
        member = next(m for m in tar if m.name.endswith(".wav"))
        (tmp_path / "a.wav").write_bytes(tar.extractfile(member).read())
    info = sf.info(str(tmp_path / "a.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


def test_cached_whisper_features(zoo, tmp_path):
    """audio_features=whisper stores (T50, L+1, d) float16 features from the encoder named by
    `whisper_model` (a tiny random WhisperModel saved like real weights)."""
    from tiny_models import save_tiny_whisper

    from musetalk.audio.whisper import WhisperEncoder

    model = save_tiny_whisper(tmp_path / "whisper", layers=2, dim=32)
    config = run_config(
        zoo / "good.mp4", tmp_path / "out", audio={"features": "whisper", "model": str(model)}
    )
    assert preprocess(config)["samples"] == 1
    sample = next(iter_samples(tmp_path / "out"))
    T = sample.meta["num_frames"]
    assert sample.whisper.shape == (2 * T, 3, 32) and sample.whisper.dtype == np.float16
    assert sample.meta["audio_features"]["model"] == str(model)
    expected = WhisperEncoder(str(model)).encode(sample.audio)
    np.testing.assert_allclose(sample.whisper.astype(np.float32), expected, rtol=1e-2, atol=1e-2)


def test_fsspec_output_and_cli_audio_group(zoo, tmp_path):
    """Output to an fsspec URL (the in-memory filesystem stands in for object storage)."""
    import fsspec

    summary = preprocess(run_config(zoo / "good.mp4", "memory://musetalk-test/ds"))
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls("/musetalk-test/ds", detail=False))
    assert names == ["00000-000.tar", "00000.json", "config.json", "manifest.jsonl", "stats.json"]
    with fs.open("/musetalk-test/ds/stats.json") as f:
        assert json.load(f)["samples"] == summary["samples"] == 1
    local = tmp_path / "00000-000.tar"
    local.write_bytes(fs.cat("/musetalk-test/ds/00000-000.tar"))
    assert len(list(iter_samples([str(local)], images=False))) == 1
    config = parse(
        PreprocessConfig,
        {"input": "x", "output": "y", "audio": {"features": "whisper", "model": "/m"}},
    )
    assert (config.audio.features, config.audio.model) == ("whisper", "/m")


# ---------------------------------------------------------------- audio shorter than the video


def test_audio_shorter_than_video_ends_the_samples(face_frames, speech, tmp_path):
    """3 s of video with 2 s of audio (own AAC track, or a separate wav): the samples stop
    where the audio does, the frames after it are past_audio_end."""
    video = synth.write_frames(tmp_path / "short_track.mp4", face_frames, 25, audio=speech[:32000])
    silent = synth.write_frames(tmp_path / "silent.mp4", face_frames, 25)
    wav = synth.write_audio(tmp_path / "two_seconds.wav", speech[:32000])
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        csv.writer(f).writerows([["video", "audio"], [str(video), ""], [str(silent), str(wav)]])
    summary = preprocess(run_config(listing, tmp_path / "out"))
    assert summary["sources_ok"] == 2
    # AAC decodes to a little more than 2 s (encoder padding): 32768 samples, 51 whole frames
    covered = {"short_track.mp4": len(load_audio(video)) // 640, "silent.mp4": 50}
    assert covered["short_track.mp4"] == 51
    rows = manifest(tmp_path / "out")
    samples = {s.meta["source"]: s for s in iter_samples(tmp_path / "out", images=False)}
    for name, n in covered.items():
        row = rows[name]
        assert row["frames_decoded"] == 75 and row["frames_with_face"] == 75, name
        assert row["frames_in_samples"] == n and row["frames_dropped"] == {"past_audio_end": 75 - n}
        (sample,) = [s for s in samples.values() if Path(s.meta["source"]).name == name]
        assert (
            sample.meta["frame_index"].tolist() == list(range(n)) and len(sample.audio) == n * 640
        )
        assert "audio" in row["stage_seconds"]
    reference = load_audio(wav)
    np.testing.assert_allclose(samples[str(silent)].audio, reference, atol=1 / 32767)


FAKE_LMS = np.tile([150.0, 160.0], (68, 1))
FAKE_LMS[[0, 16, 8]] = [(100, 160), (200, 160), (150, 220)]
FAKE_LMS[27:31] = [(150, 120), (150, 130), (150, 140), (150, 150)]


class FixedFaceTracker:
    """Stands in for FaceTracker: one face (track 0) on every frame; counts the frames seen."""

    def __init__(self) -> None:
        self.updates = 0

    def reset(self) -> None:
        pass

    def update(self, frame: np.ndarray) -> list[TrackedFace]:
        self.updates += 1
        face = Face(np.array([95.0, 90.0, 205.0, 225.0]), FAKE_LMS, 0.9)
        return [TrackedFace(0, face, True, self.updates == 1, FAKE_LMS)]


@pytest.mark.parametrize(
    ("max_frames", "min_frames", "expected", "dropped"),
    [
        (250, 25, [(0, 50)], {"past_audio_end": 25}),
        # second run [30, 60) cut at 50: 20 frames < min_frames; 60.. arrive after the end
        (30, 25, [(0, 30)], {"short_track": 20, "past_audio_end": 25}),
        (20, 10, [(0, 20), (20, 20), (40, 10)], {"past_audio_end": 25}),
        # [25, 50) ends exactly at the audio's end, which is only seen with run [50, 75)
        (25, 25, [(0, 25), (25, 25)], {"past_audio_end": 25}),
    ],
)
def test_runs_cut_at_the_audio_end(tmp_path, max_frames, min_frames, expected, dropped):
    """75 frames, 2 s of audio (50 frames) in a separate wav: exact cuts and counts."""
    video = synth.write_video(tmp_path / "v.mp4", n_frames=75, fps=25, size=(320, 240))
    audio = synth.tone_burst(2.0, 0.5, 1.0)
    wav = synth.write_audio(tmp_path / "a.wav", audio)
    options = SampleOptions(max_frames=max_frames, min_frames=min_frames)
    processor = SourceProcessor(Source(str(video), str(wav)), FixedFaceTracker(), options, {})
    samples = list(processor.samples())
    starts = [(s.meta["frame_index"][0], s.meta["num_frames"]) for s in samples]
    assert starts == expected
    report = processor.report
    assert report.frames_dropped == dropped and report.status == "ok"
    assert report.frames_in_samples == sum(n for _, n in expected)
    reference = load_audio(wav)
    for sample, (start, n) in zip(samples, expected, strict=True):
        wav_member = decode_wav(sample.members["wav"])
        assert sample.meta["audio"]["num_samples"] == len(wav_member) == n * 640
        want = audio_for_frames(reference, start, n)
        np.testing.assert_allclose(wav_member, want, atol=1 / 32767)


def test_no_audio_raised_before_decoding_frames(tmp_path):
    video = synth.write_video(tmp_path / "v.mp4", n_frames=40, fps=25, size=(320, 240))
    tracker, progress = FixedFaceTracker(), []
    processor = SourceProcessor(
        Source(str(video)), tracker, SampleOptions(), {}, progress=progress.append
    )
    with pytest.raises(NoAudioStream):
        next(processor.samples())
    assert tracker.updates == 0 and not progress and processor.report.frames_decoded == 0


# ---------------------------------------------------------------- pipelined frame loop


@pytest.mark.parametrize("ahead", [1, samples_module.ENCODE_AHEAD])
def test_pipelined_frame_loop_gives_the_same_samples(zoo, monkeypatch, ahead):
    """Decode ahead + crops encoded in a thread behind the face analysis: byte for byte the
    samples (and counts) of the same loop run in one thread, with at most `ahead` crops (each
    holding its frame) in flight."""
    monkeypatch.setattr(samples_module, "ENCODE_AHEAD", ahead)
    in_flight = []
    submit = samples_module._Encoder.submit

    def counted(self, frame, face):
        future = submit(self, frame, face)
        in_flight.append(len(self.inflight))
        return future

    monkeypatch.setattr(samples_module._Encoder, "submit", counted)
    tracker = FaceTracker(build_analyzer("dlib"))
    runs = {}
    for pipelined in (False, True):
        for name in ("gap.mp4", "cut.mp4"):
            processor = SourceProcessor(
                Source(str(zoo / name)), tracker, SampleOptions(), {}, pipelined=pipelined
            )
            samples = [(s.key, s.members) for s in processor.samples()]
            report = processor.report.to_json()
            report.pop("stage_seconds")
            runs[pipelined, name] = samples, report
    for name in ("gap.mp4", "cut.mp4"):
        assert len(runs[True, name][0]) == 2
        assert runs[True, name] == runs[False, name]
    assert max(in_flight) <= ahead and len(in_flight) >= 4 * 75


def test_worker_thread_budget():
    """A pool worker's start-up (`limit_threads(cores // workers)`), in a fresh process like the
    workers: OpenCV 1 thread, FFmpeg decoding the budget, and no torch imported (it is only for
    Whisper features; once imported it gets the budget too)."""
    code = (
        "import sys, cv2\n"
        "from musetalk.data import preprocess\n"
        "from musetalk.data.shard_task import _limit_torch_threads, limit_threads\n"
        "from musetalk.video import reader\n"
        "limit_threads(1)\n"
        "print('torch' in sys.modules, cv2.getNumThreads(), reader._decode_threads)\n"
        "import torch\n"
        "_limit_torch_threads()\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "1", "1", "1"]
