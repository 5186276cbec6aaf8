"""The job behind `python eval.py`: how close a lip-synced video is to its reference, and in sync.

Both videos are read at 25 fps and aligned by frame index (cut to the shorter, with a notice);
faces are tracked with the project's face backend (the largest face of each frame). On the frames
where both have a face: PSNR / SSIM of the 256x256 inference crop of the reference's landmarks
(bbox_shift 0, MuseTalk v1.5's 10 px margin) and of its lower half, the mouth landmark distance
(LMD, in inter-ocular distances), the correlation over time of the inner-lip opening, and an
offset curve: the LMD of generated frame t + k against reference frame t for k in [-15, 15]
(or, with SyncNet weights, syncnet_python's mean distance per audio offset), whose minimum is
the AV offset (positive: the generated mouth lags its audio). With `syncnet=` also LSE-C/LSE-D
(`musetalk.eval.syncnet`). Writes `<report>.json`, per-frame `<report>.csv` and `<report>.png`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field

from musetalk.config import Device, settings
from musetalk.errors import InputNotFoundError, MuseTalkError
from musetalk.eval.metrics import (
    image_scores,
    inter_ocular,
    lmd,
    mouth_opening,
    offset_curve,
    pearson,
)
from musetalk.eval.tracks import FaceTrack, read_track
from musetalk.face.analyzer import check_face
from musetalk.face.tracking import INFERENCE_TRACKING, TrackingOptions

__all__ = ["EvalConfig", "evaluate"]


@settings
class EvalConfig:
    """What `evaluate` compares. generated / reference: videos (reference None: sync only, which
    needs `syncnet`); audio: the audio the generated video was driven with (None: its own
    stream); syncnet: `syncnet_v2.model` for LSE-C/LSE-D; output: the report json path (csv and
    png beside it); face / tracking: as inference; max_offset: frames searched either way."""

    EXAMPLE: ClassVar[str] = "python eval.py generated=out.mp4 reference=in.mp4 output=report.json"

    generated: Annotated[str, Field(min_length=1)]
    output: Annotated[str, Field(min_length=1)]
    reference: str | None = None
    audio: str | None = None
    syncnet: str | None = None
    face: dict[str, Any] = field(default_factory=lambda: {"backend": "dlib"})
    tracking: TrackingOptions = field(default_factory=lambda: INFERENCE_TRACKING)
    max_offset: Annotated[int, Field(ge=1, le=50)] = 15
    device: Device = "cpu"
    progress: bool = True


class NothingToMeasure(MuseTalkError):
    """Neither video has a frame to measure (no face, no frames)."""


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Measure (see the module docstring); returns the report (also written as json)."""
    check_face(config.face)
    for path in (config.generated, config.reference, config.audio, config.syncnet):
        if path is not None and not Path(path).is_file():
            raise InputNotFoundError(f"{path} not found")
    if config.reference is None and config.syncnet is None:
        raise NothingToMeasure(
            "without reference= only sync can be measured, which needs syncnet=<syncnet_v2.model>"
        )
    notes: list[str] = []
    generated = read_track(config.generated, config.face, config.tracking, config.progress)
    reference = None
    if config.reference is not None:
        reference = read_track(config.reference, config.face, config.tracking, config.progress)
        n = min(len(generated), len(reference))
        if len(generated) != len(reference):
            notes.append(
                f"lengths differ (generated {len(generated)}, reference {len(reference)} frames "
                f"at 25 fps): both cut to the first {n}"
            )
        generated, reference = generated.head(n), reference.head(n)
    report: dict[str, Any] = {"generated": config.generated, "reference": config.reference}
    per_frame: dict[str, np.ndarray] = {"frame": np.arange(len(generated))}
    if reference is not None:
        report |= _reference_metrics(generated, reference, config.max_offset, per_frame)
    else:
        report["offset_measure"] = "syncnet"
    report |= _sync_metrics(generated, config, notes, report)
    if report.get("frames_measured", 1) == 0 and report.get("lse_c") is None:
        raise NothingToMeasure(
            f"no frame has a face in both videos ({config.generated}, {config.reference})"
        )
    report["notes"] = notes
    write_report(Path(config.output), report, per_frame)
    if config.progress:
        print(format_report(report))
    return report


def _reference_metrics(
    generated: FaceTrack, reference: FaceTrack, max_offset: int, per_frame: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Image, landmark and offset metrics against the reference (see the module docstring)."""
    valid = generated.has_face & reference.has_face
    scale = inter_ocular(np.nan_to_num(reference.landmarks, nan=0.0))
    scale = np.where(scale > 0, scale, np.nan)
    batches: dict[str, list[np.ndarray]] = {}
    for ref_crops, gen_crops in reference.crops_of(generated, valid):
        for name, values in image_scores(gen_crops, ref_crops).items():
            batches.setdefault(name, []).append(values)
    scores = {name: np.concatenate(values) for name, values in batches.items()}
    frame_lmd = np.full(len(valid), np.nan)
    frame_lmd[valid] = lmd(generated.landmarks[valid], reference.landmarks[valid], scale[valid])
    open_gen = mouth_opening(generated.landmarks, scale)
    open_ref = mouth_opening(reference.landmarks, scale)
    curve = offset_curve(generated.landmarks, reference.landmarks, scale, valid, max_offset)
    per_frame |= {"has_face": valid.astype(int), "lmd": frame_lmd}
    per_frame |= {"mouth_open_generated": open_gen, "mouth_open_reference": open_ref}
    for name, values in scores.items():
        column = np.full(len(valid), np.nan)
        column[valid] = values
        per_frame[name] = column
    finite = [k for k, v in curve.items() if v is not None]
    out: dict[str, Any] = {
        "frames": len(valid),
        "frames_measured": int(valid.sum()),
        "lmd": _mean(frame_lmd[valid]),
        "mouth_open_corr": pearson(open_gen[valid], open_ref[valid]),
        "offset_measure": "lmd",
        "offset_curve": curve,
        "av_offset": min(finite, key=lambda k: curve[k]) if finite else None,
    }
    for name, values in scores.items():
        out[name] = _mean(values)
    return out


def _sync_metrics(
    generated: FaceTrack, config: EvalConfig, notes: list[str], report: dict[str, Any]
) -> dict[str, Any]:
    """LSE-C / LSE-D (and the SyncNet offset curve) when weights are given, else nulls with
    the reason."""
    if config.syncnet is None:
        return {
            "lse_c": None,
            "lse_d": None,
            "lse_reason": "no SyncNet weights given (syncnet=<syncnet_v2.model>)",
        }
    from musetalk.audio import load_audio
    from musetalk.eval.sync import lse_of_track

    audio = load_audio(config.audio or config.generated)
    result, used = lse_of_track(generated, audio, config.syncnet, config.device, config.max_offset)
    if used < len(generated):
        notes.append(f"LSE over the first {used} frames (audio or faces end there)")
    out = {"lse_c": result.lse_c, "lse_d": result.lse_d, "lse_frames": used}
    if report.get("offset_measure") == "syncnet":
        out |= {"offset_curve": result.curve, "av_offset": result.av_offset}
    else:
        out |= {"syncnet_offset_curve": result.curve, "syncnet_av_offset": result.av_offset}
    return out


def _mean(values: np.ndarray) -> float | None:
    values = np.asarray(values, np.float64)
    if not len(values):
        return None
    mean = float(values.mean())
    return mean if np.isfinite(mean) or mean == float("inf") else None


def write_report(path: Path, report: dict[str, Any], per_frame: dict[str, np.ndarray]) -> None:
    """`<report>.json`, `<report>.csv` (one row per frame) and `<report>.png` (offset curve,
    per-frame LMD), each written under a temp name first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, json.dumps(report, indent=2, sort_keys=True, default=_json) + "\n")
    rows = [
        dict(zip(per_frame, values, strict=True))
        for values in zip(*per_frame.values(), strict=True)
    ]
    csv_path = path.with_suffix(".csv")
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(per_frame))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    from musetalk.eval.plot import plot_report

    plot_report(path.with_suffix(".png"), report, per_frame)


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def format_report(report: dict[str, Any]) -> str:
    """The report's numbers as a two-column table for the terminal."""
    keys = (
        "frames", "frames_measured", "psnr", "ssim", "psnr_mouth", "ssim_mouth", "lmd",
        "mouth_open_corr", "av_offset", "lse_c", "lse_d",
    )  # fmt: skip
    rows = [(k, report[k]) for k in keys if k in report]
    rows += [("note", n) for n in report.get("notes", [])]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        f"  {k:<{width}}  {f'{v:.4f}' if isinstance(v, float) else ('-' if v is None else v)}"
        for k, v in rows
    )
