"""Reliability: bad input, hostile input and user mistakes never lose or corrupt data.

Every case names its input and the outcome class it must end in: processed, skipped (with a
recorded reason), or refused (with a one-line message and a non-zero exit), and checks that
nothing else changed: the trees of the input and output are hashed before and after. The
bad-media zoo (zero bytes, truncated, not a video, no audio, odd fps, rotated, faceless, ...)
lives in test_preprocess.py and runs in the same suite.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import synth

from musetalk.config import parse
from musetalk.data.preprocess import PreprocessConfig, preprocess
from musetalk.errors import ConfigError, OutputRefusedError

REPO = Path(__file__).resolve().parents[1]
SECONDS = 2


# --------------------------------------------------------------------------- helpers


def tree(*roots: Path) -> dict[str, str]:
    """path -> sha1 of every file under the roots (what "nothing changed" compares)."""
    out = {}
    for root in map(Path, roots):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.name != ".musetalk.lock":
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def config(input_path, output, **over) -> PreprocessConfig:
    values = {"input": str(input_path), "output": str(output), "workers": 1, "progress": False}
    return parse(PreprocessConfig, {**values, **over})


def cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an entry point; returns the finished process (text stdout/stderr)."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sample_keys(output: Path) -> list[str]:
    keys = []
    for tar_path in sorted(output.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            keys += [m.name.split(".", 1)[0] for m in tar if m.name.endswith(".json")]
    return keys


@pytest.fixture(scope="module")
def face_frames(small_talking) -> list[np.ndarray]:
    """2 s of the real talking video at 360x640: small, fast, a real face."""
    return small_talking[0][: 25 * SECONDS]


@pytest.fixture(scope="module")
def speech(small_talking) -> np.ndarray:
    return small_talking[1][: 16000 * SECONDS]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, face_frames, speech) -> Path:
    """a.mp4, b.mp4, c.mp4: three short talking clips (mirrored / darkened copies)."""
    d = tmp_path_factory.mktemp("clips")
    synth.write_frames(d / "a.mp4", face_frames, 25, audio=speech)
    synth.write_frames(d / "b.mp4", [f[:, ::-1] for f in face_frames], 25, audio=speech)
    darker = [cv2.convertScaleAbs(f, alpha=0.8) for f in face_frames]
    synth.write_frames(d / "c.mp4", darker, 25, audio=speech)
    return d


# --------------------------------------------------------------------------- output safety


def test_foreign_output_dir_is_refused_and_untouched(clips, tmp_path):
    """Input: an output dir holding the user's own files. Outcome: refused with a message;
    every file keeps its bytes. With overwrite=true: processed beside them, but a name the run
    must write (stats.json) held by a user file is refused, again with nothing changed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000-interview.mp4").write_bytes(b"my interview")
    (out / "budget.tmp-2024.xlsx").write_bytes(b"my budget")
    before = tree(out, clips)
    with pytest.raises(OutputRefusedError, match="not empty and was not made by musetalk"):
        preprocess(config(clips / "a.mp4", out))
    assert tree(out, clips) == before

    summary = preprocess(config(clips / "a.mp4", out, overwrite=True))
    assert summary["samples"] == 1
    after = tree(out, clips)
    assert {k: after[k] for k in before} == before  # the user's files are untouched
    assert (out / "00000-000.tar").is_file() and (out / "config.json").is_file()
    assert preprocess(config(clips / "a.mp4", out, overwrite=True))["samples"] == 1
    after = tree(out, clips)
    assert {k: after[k] for k in before} == before

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "stats.json").write_text('{"mine": true}\n')
    before = tree(theirs, clips)
    with pytest.raises(OutputRefusedError, match="stats.json exists and was not written"):
        preprocess(config(clips / "a.mp4", theirs, overwrite=True))
    assert tree(theirs, clips) == before
    assert json.loads((theirs / "stats.json").read_text()) == {"mine": True}


def test_output_with_a_config_json_of_someone_else_is_refused_even_with_overwrite(clips, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"model": "mine"}\n')
    before = tree(out)
    for overwrite in (False, True):
        with pytest.raises(OutputRefusedError, match="config.json that musetalk"):
            preprocess(config(clips / "a.mp4", out, overwrite=overwrite))
    assert tree(out) == before


@pytest.mark.parametrize("layout", ["same", "output_in_input", "input_in_output"])
def test_input_and_output_must_not_nest(clips, tmp_path, layout):
    """Input: output=input dir, output inside the input dir, or input inside the output.
    Outcome: refused before anything is written; the input video survives."""
    d = tmp_path / "d"
    (d / "videos").mkdir(parents=True)
    shutil.copy(clips / "a.mp4", d / "videos" / "00000-a.mp4")
    input_path, output = {
        "same": (d, d),
        "output_in_input": (d, d / "shards"),
        "input_in_output": (d / "videos", d),
    }[layout]
    before = tree(d)
    with pytest.raises(ConfigError, match="inside"):
        preprocess(config(input_path, output))
    assert tree(d) == before and not (d / "shards").exists()


def test_foreign_file_in_our_output_survives_reruns(clips, tmp_path):
    """Input: our finished output, plus a file the user put there, a tar the user damaged-then
    -removed, and leftovers of a killed run. Outcome: the user's file survives; only our own
    leftovers are cleaned; the removed shard is redone."""
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clips / 'a.mp4'}\n{clips / 'b.mp4'}\n")
    preprocess(config(listing, out, sources_per_shard=1))
    clean = tree(out)
    (out / "notes.txt").write_text("mine")
    (out / "00001-000.tar.tmp-someoneelse-1234").write_text("not ours")
    record = json.loads((out / "config.json").read_text())
    (out / f"00001-000.tar.tmp-{record['output_id']}-deadbeef").write_text("our leftover")
    (out / "00001-000.tar").unlink()
    summary = preprocess(config(listing, out, sources_per_shard=1))
    assert summary["samples"] == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "00001-000.tar.tmp-someoneelse-1234").read_text() == "not ours"
    assert not list(out.glob(f"*{record['output_id']}-deadbeef"))
    now = tree(out)
    assert now[str(out / "00001-000.tar")] == clean[str(out / "00001-000.tar")]
    assert now[str(out / "00000-000.tar")] == clean[str(out / "00000-000.tar")]


def test_small_jobs_use_every_worker_and_the_frame_bar_has_a_total(clips, tmp_path, capfd):
    """Three inputs with the default sources_per_shard: three shards (not one shard on one
    core); the frames bar knows the total from the containers (3 x 2 s at 25 fps)."""
    from musetalk.data.sources import auto_sources_per_shard

    assert [auto_sources_per_shard(n) for n in (1, 3, 16, 17, 48, 49, 10_000)] == [
        1, 1, 1, 2, 3, 4, 4,
    ]  # fmt: skip
    summary = preprocess(config(clips, tmp_path / "out", progress=True))
    assert summary["samples"] == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [
        "00000-000.tar", "00001-000.tar", "00002-000.tar",
    ]  # fmt: skip
    err = capfd.readouterr().err
    assert f"{3 * 25 * SECONDS}/{3 * 25 * SECONDS}" in err.split("frames")[-1], err[-500:]


# --------------------------------------------------------------------------- growing input


def test_growing_input_dir_adds_new_shards_without_duplicates(clips, tmp_path):
    """Input: grow/ with b, c (sources_per_shard=2), then a.mp4 added, then c.mp4 changed.
    Outcome: the rerun processes a.mp4 into a new shard 00001 and leaves 00000 byte-identical;
    no key appears twice; a changed source of a finished shard is refused with nothing
    changed."""
    grow, out = tmp_path / "grow", tmp_path / "out"
    grow.mkdir()
    for name in ("b.mp4", "c.mp4"):
        shutil.copy(clips / name, grow / name)
    first = preprocess(config(grow, out, sources_per_shard=2))
    assert first["samples"] == 2 and sorted(p.name for p in out.glob("*.tar")) == ["00000-000.tar"]
    shard0 = tree(out)[str(out / "00000-000.tar")]

    shutil.copy(clips / "a.mp4", grow / "a.mp4")
    second = preprocess(config(grow, out, sources_per_shard=2))
    assert second["sources"] == 3 and second["samples"] == 3
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000-000.tar", "00001-000.tar"]
    assert tree(out)[str(out / "00000-000.tar")] == shard0
    keys = sample_keys(out)
    assert len(keys) == len(set(keys)) == 3
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {Path(m["video"]).name: m["shard"] for m in manifest} == {
        "a.mp4": 1,
        "b.mp4": 0,
        "c.mp4": 0,
    }

    shutil.copy(clips / "a.mp4", grow / "c.mp4")  # other content under a processed name
    before = tree(out, grow)
    with pytest.raises(OutputRefusedError, match=r"c\.mp4 changed since it was preprocessed"):
        preprocess(config(grow, out, sources_per_shard=2))
    assert tree(out, grow) == before


# --------------------------------------------------------------------------- settings


BAD_SETTINGS = [
    ("sample.crop_size=-5", "sample.crop_size=-5: input should be greater than or equal to 16"),
    ("sample.crop_size=1.5", "sample.crop_size=1.5: input should be a valid integer"),
    ("sample.crop_size=abc", "sample.crop_size='abc': input should be a valid integer"),
    ("sample.context=-1", "sample.context=-1: input should be greater than or equal to 0"),
    ("sample.multi_face_ratio=abc", "sample.multi_face_ratio='abc': input should be a valid"),
    (
        "tracking.detect_every=0",
        "tracking.detect_every=0: input should be greater than or equal to 1",
    ),
    ("sample.min_frames=300", "sample: min_frames (300) must be <= max_frames (250)"),
    ("executor.name=spark", "executor.name='spark': input should be 'local' or 'ray'"),
    ("+face.detect_size=abc", "face.detect_size='abc': input should be a valid integer"),
    ("face.backend=mediapipe", "face.backend='mediapipe': unknown backend"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_settings_are_one_line_and_exit_2_before_any_work(clips, tmp_path, override, message):
    """Input: one bad value. Outcome: refused: exit 2, one line naming key, value and what is
    allowed; no output dir is created, so the corrected command then runs."""
    out = tmp_path / "out"
    proc = cli("preprocess/run.py", f"input={clips / 'a.mp4'}", f"output={out}", override)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"preprocess: {message}"), proc.stderr
    assert not out.exists()


def test_config_json_is_written_only_once_a_run_is_valid(clips, tmp_path):
    """Input: a failed start (missing input), then the corrected command. Outcome: refused,
    no config.json; then processed (not refused as "a different configuration")."""
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preprocess(config(tmp_path / "missing", out))
    assert not (out / "config.json").exists()
    with pytest.raises(ConfigError):
        preprocess(config(clips / "a.mp4", out, face={"backend": "dlib", "detect_size": 10}))
    assert not (out / "config.json").exists()
    assert preprocess(config(clips / "a.mp4", out))["samples"] == 1


# --------------------------------------------------------------------------- odd media


def test_image_named_mp4_is_not_a_video_and_silence_is_a_warning(face_frames, tmp_path):
    """Input: JPEG bytes named .mp4, and a talking clip with a silent audio track. Outcome:
    the first skipped as not_a_video; the second processed with a silent_audio warning in the
    manifest and the summary."""
    src = tmp_path / "src"
    src.mkdir()
    ok, jpeg = cv2.imencode(".jpg", face_frames[0][..., ::-1])
    (src / "photo.mp4").write_bytes(jpeg.tobytes())
    silence = np.zeros(16000 * SECONDS, np.float32)
    synth.write_frames(src / "silent.mp4", face_frames, 25, audio=silence)
    summary = preprocess(config(src, tmp_path / "out"))
    manifest = {
        Path(m["video"]).name: m
        for m in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())
    }
    assert (manifest["photo.mp4"]["status"], manifest["photo.mp4"]["reason"]) == (
        "skipped",
        "not_a_video",
    )
    assert manifest["silent.mp4"]["status"] == "ok"
    assert manifest["silent.mp4"]["warnings"] == ["silent_audio"]
    assert summary["source_warnings"] == {"silent_audio": 1}


def test_missing_source_of_a_list_is_skipped_with_a_reason(clips, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{clips / 'a.mp4'}\n{tmp_path / 'gone.mp4'}\n")
    summary = preprocess(config(listing, tmp_path / "out"))
    assert summary["samples"] == 1 and summary["sources_skipped"] == {"missing": 1}


def test_sigkill_leftovers_are_ours_and_cleaned(clips, tmp_path):
    """A killed run leaves temp files named with the output id and a shard-json temp naming
    its parts; a rerun removes exactly those and nothing else."""
    out = tmp_path / "out"
    preprocess(config(clips / "a.mp4", out))
    oid = json.loads((out / "config.json").read_text())["output_id"]
    shard_json = json.loads((out / "00000.json").read_text())
    # what a kill between renaming the parts and the json leaves behind
    (out / "00000.json").rename(out / f"00000.json.tmp-{oid}-0badc0de")
    (out / "keep-me.tmp-1").write_text("user")
    preprocess(config(clips / "a.mp4", out))
    assert json.loads((out / "00000.json").read_text())["tars"] == shard_json["tars"]
    assert not list(out.glob(f"*.tmp-{oid}-*")) and (out / "keep-me.tmp-1").read_text() == "user"
    assert os.path.getsize(out / "00000-000.tar") > 0


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def speech_wav(speech, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    synth.write_audio(path, speech[:16000])
    return path


def infer_config(clips, speech_wav, out, **over):
    from musetalk.inference.run import InferenceConfig

    values = {
        "video": str(clips / "a.mp4"),
        "audio": str(speech_wav),
        "output": str(out),
        "infer_model": {"layout": "tiny"},
        "progress": False,
    }
    return parse(InferenceConfig, {**values, **over})


def test_large_bbox_shift_is_clipped_with_a_warning_and_recorded(clips, speech_wav, tmp_path):
    """Input: bbox_shift 50, 90, 200, 1000 (past the lowest landmark for this face). Outcome:
    processed with the shift clipped to the geometric limit, a warning naming both values, the
    used value in the range line and the sidecar; the boundary never moves up as the shift
    grows (MuseTalk silently fell back to the detector box there)."""
    from musetalk.face import region
    from musetalk.inference.run import build_pipeline, infer

    pipe = build_pipeline(infer_config(clips, speech_wav, tmp_path / "x.mp4"))
    used, bounds = {}, {}
    for shift in (50, 90, 200, 1000):
        avatar = pipe.prepare_avatar(clips / "a.mp4", shift, max_frames=25)  # = the audio
        lo, hi = region.shift_limits(avatar.main_landmarks())
        used[shift], bounds[shift] = avatar.bbox_shift, np.nanmean(avatar.mask_upper_bound)
        if shift > hi:
            assert avatar.bbox_shift == hi
            assert avatar.bbox_shift_reason.startswith(
                f"warning: bbox_shift={shift} is past this video's geometric limit [{lo} ~ {hi}]"
            )
            assert avatar.bbox_shift_reason.endswith(f"using bbox_shift={hi}")
        np.testing.assert_allclose(
            avatar.mask_upper_bound[avatar.has_face],
            avatar.landmarks[avatar.has_face, 29, 1] + avatar.bbox_shift,
        )
    assert used[1000] < 1000 and used[200] == used[1000]
    assert bounds[50] <= bounds[90] <= bounds[200] == bounds[1000]
    result = infer(infer_config(clips, speech_wav, tmp_path / "o.mp4", bbox_shift=1000), pipe)
    sidecar = json.loads((tmp_path / "o.mp4.json").read_text())
    assert sidecar["result"]["bbox_shift"] == result.bbox_shift == used[1000]
    assert f"the current value: {used[1000]}" in sidecar["result"]["range_line"]


def test_pickled_unet_is_refused_by_infer_in_one_line(clips, speech_wav, tmp_path):
    """Input: a released layout whose unet.pth is a pickled module. Outcome: refused: exit 1,
    one line naming the file and what is read; nothing is unpickled, no output written."""
    import torch
    from tiny_models import save_released_layout

    from musetalk.models import TINY_UNET, build_unet

    models = tmp_path / "models"
    models.mkdir()
    save_released_layout(models)
    torch.save(build_unet(TINY_UNET), models / "musetalkV15" / "unet.pth")  # a whole module
    proc = cli(
        "infer.py",
        f"models_dir={models}",
        f"video={clips / 'a.mp4'}",
        f"audio={speech_wav}",
        f"output={tmp_path / 'o.mp4'}",
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"infer: {models / 'musetalkV15' / 'unet.pth'}: refused"
    )
    assert "weights_only=False" not in proc.stderr and "safetensors" in lines[0]
    assert not (tmp_path / "o.mp4").exists()


# --------------------------------------------------------------------------- training data


def tar_members(path: Path) -> dict[str, list[tuple[str, bytes]]]:
    """key -> [(member name, bytes)] in tar order."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            out.setdefault(info.name.split(".", 1)[0], []).append(
                (info.name, tar.extractfile(info).read())
            )
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    import io

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def edited(members: list[tuple[str, bytes]], change) -> list[tuple[str, bytes]]:
    """The members with the json passed through `change(meta) -> meta or bytes`."""
    out = []
    for name, data in members:
        if name.endswith(".json"):
            new = change(json.loads(data))
            data = new if isinstance(new, bytes) else json.dumps(new).encode()
        out.append((name, data))
    return out


def edited_array(members: list[tuple[str, bytes]], name: str, change) -> list[tuple[str, bytes]]:
    """The members with the per-frame array `name` (`<key>.<name>.npy`) passed through
    `change(array) -> array`."""
    from musetalk.data.reader import decode_npy
    from musetalk.data.writer import encode_npy

    suffix = f".{name}.npy"
    return [
        (n, encode_npy(change(decode_npy(data).copy())) if n.endswith(suffix) else data)
        for n, data in members
    ]


@pytest.fixture(scope="module")
def damaged(both_videos_shards, tmp_path_factory) -> tuple[Path, Path, set[str]]:
    """(good dir, damaged dir, good keys): the damaged dir holds one good shard and one of each
    kind of damage the training reader must survive."""
    good = next(both_videos_shards.glob("*.tar"))
    samples = tar_members(good)
    keys = sorted(samples)
    one = samples[keys[0]]
    d = tmp_path_factory.mktemp("damaged")
    shutil.copy(good, d / "00-good.tar")
    (d / "01-zero.tar").write_bytes(b"")
    (d / "02-truncated.tar").write_bytes(good.read_bytes()[: good.stat().st_size // 3])

    def lie(meta):  # claims 250 frames, has the members of 100
        return {**meta, "num_frames": 250}

    def nan(landmarks):
        landmarks[3, 29, 1] = np.nan
        return landmarks

    def short(landmarks):
        return landmarks[:3]

    write_tar(d / "03-lies.tar", edited(one, lie))
    write_tar(d / "04-nan.tar", edited_array(one, "landmarks", nan))
    write_tar(d / "05-short.tar", edited_array(one, "landmarks", short))
    write_tar(d / "06-badjson.tar", edited(one, lambda meta: b"{not json"))
    garbage = [(n, b"not a jpeg" if n.endswith(".jpg") else v) for n, v in one]
    write_tar(d / "07-badjpg.tar", garbage)
    write_tar(d / "08-evil.tar", [("../../evil.json", b"{}"), *one])
    return both_videos_shards, d, set(keys)


def test_damaged_shards_and_samples_are_skipped_and_reported(damaged, tmp_path):
    """Input: a good shard beside a zero-byte, a truncated and a non-tar shard, and samples
    whose json lies about num_frames, holds NaN or short landmark arrays, is invalid JSON,
    whose JPEGs do not decode, and an unsafe member name. Outcome (on_bad_shard=skip): only
    good samples reach a batch; every damaged item is recorded with its shard, key and
    reason. With raise: stopped with a ShardError naming the first damaged shard."""
    from musetalk.errors import ShardError
    from musetalk.training.bad_data import BadDataLog
    from musetalk.training.data import TalkingFaceDataModule

    good_dir, bad_dir, good_keys = damaged
    before = tree(bad_dir)
    errors = tmp_path / "errors"
    dm = TalkingFaceDataModule(
        str(good_dir),
        val_shards=str(bad_dir),
        batch_size=2,
        crop_size=64,
        num_workers=0,
        errors_dir=str(errors),
    )
    dm.setup()
    batches = list(dm.val_dataloader())
    seen = {k for b in batches for k in b["key"]}
    assert seen and seen <= good_keys
    summary = BadDataLog("skip", errors).summarise()
    assert summary["shards_skipped"] == [
        str(bad_dir / n) for n in ("01-zero.tar", "02-truncated.tar")
    ]
    reasons = {
        Path(r["shard"]).name: r["reason"] for r in summary["records"] if r["kind"] == "sample"
    }
    assert "num_frames 250" in reasons["03-lies.tar"] or "(250" in reasons["03-lies.tar"]
    assert "landmarks holds NaN" in reasons["04-nan.tar"]
    assert "landmarks has shape (3, 68, 2)" in reasons["05-short.tar"]
    assert "not valid JSON" in reasons["06-badjson.tar"]
    assert "not a decodable JPEG" in reasons["07-badjpg.tar"]
    assert "unsafe member name '../../evil'" in reasons["08-evil.tar"]
    assert tree(bad_dir) == before

    strict = TalkingFaceDataModule(
        str(good_dir), val_shards=str(bad_dir), crop_size=64, num_workers=0, on_bad_shard="raise"
    )
    strict.setup()
    with pytest.raises(ShardError, match=r"01-zero\.tar: unreadable shard"):
        list(strict.val_dataloader())


def test_only_damaged_shards_stop_with_a_message_instead_of_looping(damaged, tmp_path):
    from musetalk.errors import ShardError
    from musetalk.training.data import TalkingFaceDataModule

    _, bad_dir, _ = damaged
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in ("01-zero.tar", "04-nan.tar"):
        shutil.copy(bad_dir / name, only_bad / name)
    with pytest.raises(ShardError, match="none of the 2 shard"):
        TalkingFaceDataModule(str(only_bad), num_workers=0).setup()


# --------------------------------------------------------------------------- train.py


def train_cfg(shards, out: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    quiet = ["+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "+experiment=tiny",
                f"data.shards={shards}",
                f"paths.output_dir={out}",
                *quiet,
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def train_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_user_errors_are_named_before_any_model_is_built(
    train_entry, both_videos_shards, tmp_path
):
    """Input: missing / empty / non-shard data.shards, a missing, empty or truncated ckpt_path,
    a pickled init_unet, a bad knob. Outcome: refused with the project's own error naming the
    path (the CLI prints it as one line, exit non-zero)."""
    from musetalk.errors import (
        CheckpointError,
        ConfigError,
        InputNotFoundError,
        ShardError,
        UnsafeFileError,
    )

    empty, videos = tmp_path / "empty", tmp_path / "videos"
    empty.mkdir()
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"x")
    (videos / "notashard.tar").write_bytes(b"this is no tar file at all" * 40)
    ckpt = tmp_path / "last.ckpt"
    cases = [
        ([], tmp_path / "nowhere", InputNotFoundError, "does not exist"),
        ([], empty, InputNotFoundError, "no .tar shards in"),
        ([], videos, ShardError, "none of the 1 shard"),
        ([f"ckpt_path={tmp_path / 'none.ckpt'}"], both_videos_shards, CheckpointError, "not found"),
        (["data.batch_size=0"], both_videos_shards, ConfigError, "data.batch_size=0"),
        (["trainer.max_steps=abc"], both_videos_shards, ConfigError, "trainer.max_steps='abc'"),
    ]
    for overrides, shards, error, match in cases:
        with pytest.raises(error, match=match):
            train_entry.train(train_cfg(shards, tmp_path / "run", *overrides))
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        train_entry.train(train_cfg(both_videos_shards, tmp_path / "run", f"ckpt_path={ckpt}"))
    ckpt.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        train_entry.train(train_cfg(both_videos_shards, tmp_path / "run", f"ckpt_path={ckpt}"))
    import torch

    from musetalk.models import TINY_UNET, build_unet

    torch.save(build_unet(TINY_UNET), tmp_path / "pickled.pth")
    with pytest.raises(UnsafeFileError, match=r"pickled\.pth: refused"):
        train_entry.train(
            train_cfg(
                both_videos_shards, tmp_path / "run", f"model.init_unet={tmp_path / 'pickled.pth'}"
            )
        )
    assert not (tmp_path / "run" / "config.json").exists()  # written only once all is valid

    proc = cli(
        "train.py",
        "+experiment=tiny",
        f"data.shards={tmp_path / 'nowhere'}",
        f"paths.output_dir={tmp_path / 'cli'}",
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"train: shard {tmp_path / 'nowhere'} does not exist"
    ]
    proc = cli(
        "train.py",
        "+experiment=stage2",
        f"paths.output_dir={tmp_path / 'cli'}",
        f"data.shards={both_videos_shards}",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("train: model.init_unet: required")


def test_damaged_shard_beside_good_ones_does_not_stop_training_and_resume_keeps_logs(
    train_entry, damaged, tmp_path
):
    """Input: the good shard with a zero-byte and a truncated one; then the README's resume
    command into the same run dir with more steps. Outcome: trains (the damaged shards are
    recorded in data_errors/); the resume continues at step 3 and keeps the first launch's
    metrics and config beside its own."""
    good_dir, bad_dir, _ = damaged
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("00-good.tar", "01-zero.tar", "02-truncated.tar"):
        shutil.copy(bad_dir / name, shards / name)
    run = tmp_path / "run"
    common = ["trainer.limit_val_batches=0", "callbacks.checkpoint.every_n_train_steps=2"]
    first = train_entry.train(train_cfg(shards, run, "trainer.max_steps=2", *common))
    assert first.global_step == 2
    summary = json.loads((run / "data_errors" / "summary.json").read_text())
    assert {Path(s).name for s in summary["shards_skipped"]} <= {"01-zero.tar", "02-truncated.tar"}
    assert summary["shards_skipped"]
    kept = tree(run / "csv", run / "config.json")
    resumed = train_entry.train(
        train_cfg(
            shards,
            run,
            "trainer.max_steps=4",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            *common,
        )
    )
    assert resumed.global_step == 4
    now = tree(run / "csv", run / "config.json")
    assert {k: now[k] for k in kept} == kept  # nothing of the first launch was lost

    with open(run / "csv" / "version_1" / "metrics.csv") as f:
        steps = {int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert steps == {3, 4}
    assert (run / "config.1.json").is_file()
