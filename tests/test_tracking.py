"""Face tracking on real video (talking_demo1) and on clips built from its face."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from musetalk.face.analyzer import Face, FaceAnalyzer, box_iou
from musetalk.face.backends.dlib_backend import DlibAnalyzer
from musetalk.face.tracking import FaceTracker, OneEuro, TrackingOptions, TrackSummary, main_track


def followed(**changes) -> TrackingOptions:
    """The settings these tests exercise: detection every 5 frames, a local check on every
    frame, detection on every faceless frame; `changes` override them."""
    return TrackingOptions(
        **{"detect_every": 5, "verify_every": 1, "idle_detect_every": 1, **changes}
    )


N_DEMO = 30


class CountingAnalyzer(FaceAnalyzer):
    """Delegates to a real analyzer and counts full-frame detections."""

    name = "counting"

    def __init__(self, inner: FaceAnalyzer) -> None:
        self.inner = inner
        self.full_detections = 0

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return self.inner.detect(frame)

    def landmarks(self, frame: np.ndarray, boxes: Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.landmarks(frame, boxes)

    def analyze(self, frame: np.ndarray) -> list[Face]:
        self.full_detections += 1
        return self.inner.analyze(frame)


@pytest.fixture(scope="module")
def analyzer() -> DlibAnalyzer:
    return DlibAnalyzer()


@pytest.fixture(scope="module")
def demo(shared_data: Path) -> list[np.ndarray]:
    """The first N_DEMO frames of talking_demo1 (1080x1920, one person talking)."""
    with av.open(str(shared_data / "talking_demo1.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in islice(container.decode(video=0), N_DEMO)]
    assert len(frames) == N_DEMO
    return frames


@pytest.fixture(scope="module")
def face_patch(analyzer: DlibAnalyzer, demo: list[np.ndarray]) -> np.ndarray:
    """A 240x240 crop of the real face (face ~100 px wide) to build synthetic clips."""
    (face,) = analyzer.analyze(demo[0])
    cx, cy = ((face.box[:2] + face.box[2:]) / 2).round().astype(int)
    crop = demo[0][cy - 240 : cy + 240, cx - 240 : cx + 240]
    return cv2.resize(crop, (240, 240), interpolation=cv2.INTER_AREA)


def paste(canvas_hw: tuple[int, int], patches: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """A grey frame with each (patch, x, y) pasted at its top-left corner (x, y)."""
    frame = np.full((*canvas_hw, 3), 70, np.uint8)
    for patch, x, y in patches:
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frame


def nme(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point distance of two (68, 2) landmark sets / inter-ocular distance of b."""
    return float(np.linalg.norm(a - b, axis=1).mean() / np.linalg.norm(b[36] - b[45]))


def jitter(seq: list[np.ndarray]) -> float:
    """Mean frame-to-frame landmark motion / inter-ocular distance."""
    return float(np.mean([nme(a, b) for a, b in zip(seq[1:], seq[:-1], strict=True)]))


def test_tracking_stays_close_to_per_frame_detection_with_fewer_detections(
    analyzer: DlibAnalyzer, demo: list[np.ndarray]
) -> None:
    reference = [analyzer.analyze(frame) for frame in demo]
    assert all(len(faces) == 1 for faces in reference)
    counting = CountingAnalyzer(analyzer)
    tracker = FaceTracker(counting, followed(detect_every=5))
    results = list(tracker.track(iter(demo)))  # streamed from an iterator
    assert counting.full_detections == N_DEMO // 5 == tracker.stats["detect_calls"]
    assert all(len(r) == 1 for r in results)
    assert {r[0].track_id for r in results} == {0}
    assert [r[0].detected for r in results] == [i % 5 == 0 for i in range(N_DEMO)]
    assert [r[0].new for r in results] == [i == 0 for i in range(N_DEMO)]
    errors = [
        nme(r[0].face.landmarks, ref[0].landmarks)
        for r, ref in zip(results, reference, strict=True)
    ]
    assert max(errors[::5]) < 1e-9  # key frames are exactly the detector's result
    assert np.mean(errors) < 0.01 and max(errors) < 0.03, errors
    face3 = results[3][0].face
    assert np.all(face3.box[:2] < face3.landmarks.min(axis=0) + 0.5 * np.ptp(face3.box))
    assert tracker.main_track_id() == 0
    summary = tracker.summaries[0]
    assert (summary.first_frame, summary.last_frame, summary.frames) == (0, N_DEMO - 1, N_DEMO)
    assert summary.detected_frames == N_DEMO // 5 and not summary.ended
    assert tracker.stats["faces_per_frame"] == {1: N_DEMO}


def test_two_faces_give_two_tracks_and_the_larger_is_main(
    analyzer: DlibAnalyzer, face_patch: np.ndarray
) -> None:
    small = cv2.resize(face_patch, (190, 190), interpolation=cv2.INTER_AREA)
    clip = [
        paste((300, 560), [(small, 20 + 2 * i, 60), (face_patch, 300 - 2 * i, 30 + i)])
        for i in range(12)
    ]
    tracker = FaceTracker(analyzer, followed(detect_every=4))
    results = [tracker.update(frame) for frame in clip]
    assert all(len(r) == 2 for r in results)
    ids = {tf.track_id for r in results for tf in r}
    assert len(ids) == 2
    large_id = results[0][0].track_id  # faces come largest first
    assert results[0][0].face.box[0] > 280  # the large one is on the right
    assert all(r[0].track_id == large_id and r[0].face.box[0] > 200 for r in results)
    assert tracker.main_track_id() == large_id
    assert tracker.stats["faces_per_frame"] == {2: 12}
    assert tracker.stats["detect_calls"] == 3


def test_blank_stretch_ends_the_track_and_a_new_one_starts(
    analyzer: DlibAnalyzer, face_patch: np.ndarray
) -> None:
    face = [paste((300, 400), [(face_patch, 80 + i, 30)]) for i in range(6)]
    blank = [np.full((300, 400, 3), 70, np.uint8)] * 3
    tracker = FaceTracker(analyzer, followed(detect_every=10))
    results = [tracker.update(frame) for frame in face + blank + face]
    counts = [len(r) for r in results]
    assert counts == [1] * 6 + [0] * 3 + [1] * 6
    first, second = results[0][0].track_id, results[-1][0].track_id
    assert first != second
    assert {r[0].track_id for r in results[9:]} == {second}
    assert results[9][0].new and results[9][0].detected
    assert tracker.summaries[first].ended and tracker.summaries[first].last_frame == 5
    assert tracker.summaries[second].first_frame == 9 and not tracker.summaries[second].ended


def test_lost_face_is_redetected_on_the_same_frame(
    analyzer: DlibAnalyzer, face_patch: np.ndarray
) -> None:
    """A face that jumps across the frame is found again at once, as a new track."""
    clip = [paste((300, 700), [(face_patch, 20, 30)])] * 3
    clip += [paste((300, 700), [(face_patch, 440, 30)])] * 3
    tracker = FaceTracker(analyzer, followed(detect_every=25))
    results = [tracker.update(frame) for frame in clip]
    assert [len(r) for r in results] == [1] * 6
    assert [r[0].track_id for r in results] == [0, 0, 0, 1, 1, 1]
    assert results[3][0].detected and tracker.stats["detect_calls"] == 2
    assert results[3][0].face.box[0] > 400
    assert tracker.summaries[0].ended


def test_fast_motion_keeps_the_track_and_accurate_landmarks(
    analyzer: DlibAnalyzer, face_patch: np.ndarray
) -> None:
    """~30% of the face width per frame: the followed fit drifts, the verification's local
    detection re-anchors it, the track id is kept."""
    clip = [paste((300, 800), [(face_patch, 20 + 32 * i, 30)]) for i in range(12)]
    tracker = FaceTracker(analyzer, followed(detect_every=25))
    results = [tracker.update(frame) for frame in clip]
    assert [len(r) for r in results] == [1] * 12
    assert {r[0].track_id for r in results} == {0}
    for r, frame in zip(results, clip, strict=True):
        (ref,) = analyzer.analyze(frame)
        assert nme(r[0].face.landmarks, ref.landmarks) < 0.05


def test_smoothing_reduces_jitter_on_a_still_face(
    analyzer: DlibAnalyzer, face_patch: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    still = paste((300, 400), [(face_patch, 80, 30)]).astype(np.int16)
    clip = [
        np.clip(still + rng.normal(0, 8, still.shape), 0, 255).astype(np.uint8) for _ in range(20)
    ]
    raw = [r[0] for r in FaceTracker(analyzer, followed()).track(clip)]
    smooth = [r[0] for r in FaceTracker(analyzer, followed(), smoothing=OneEuro()).track(clip)]
    for a, b in zip(raw, smooth, strict=True):
        np.testing.assert_allclose(a.raw_landmarks, b.raw_landmarks)
        np.testing.assert_allclose(a.face.landmarks, a.raw_landmarks)
    raw_jitter = jitter([tf.face.landmarks for tf in raw])
    smooth_jitter = jitter([tf.face.landmarks for tf in smooth])
    assert raw_jitter > 0.002  # the noise does move the raw landmarks
    assert smooth_jitter < 0.5 * raw_jitter

    def box_jitter(seq: list) -> float:
        return float(
            np.mean(
                [
                    np.abs(a.face.box - b.face.box).mean()
                    for a, b in zip(seq[1:], seq[:-1], strict=True)
                ]
            )
        )

    assert box_jitter(smooth) < 0.5 * box_jitter(raw)  # boxes are smoothed too


def test_smoothing_lag_is_small_on_real_talking(
    analyzer: DlibAnalyzer, demo: list[np.ndarray]
) -> None:
    tracker = FaceTracker(analyzer, followed(detect_every=5), smoothing=OneEuro(fps=25))
    results = [r[0] for r in tracker.track(demo)]
    gaps = [nme(tf.face.landmarks, tf.raw_landmarks) for tf in results]
    assert gaps[0] == 0 and 0 < np.mean(gaps) < 0.03


def test_one_euro_filter_converges_and_is_validated() -> None:
    f = OneEuro(min_cutoff=1.0, beta=0.0, fps=25).new_filter()
    start, end = np.zeros((3, 2)), np.full((3, 2), 10.0)
    assert np.array_equal(f(start, 100.0), start)
    out = [f(end, 100.0)[0, 0] for _ in range(60)]
    assert 0 < out[0] < 5 and np.all(np.diff(out) >= 0) and abs(out[-1] - 10) < 0.1
    with pytest.raises(ValueError, match="One-Euro"):
        OneEuro(min_cutoff=0)


def test_main_track_prefers_size_times_persistence() -> None:
    big_brief = TrackSummary(0, 0, 9, frames=10, area_sum=10 * 400.0)
    small_long = TrackSummary(1, 0, 99, frames=100, area_sum=100 * 100.0)
    assert main_track([big_brief, small_long]) == 1
    assert main_track([big_brief]) == 0
    assert main_track([]) is None


def test_box_iou() -> None:
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == 1.0
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([20, 20, 30, 30.0])) == 0.0
    assert box_iou(a, np.array([5, 5, 5, 5.0])) == 0.0


def test_invalid_settings_are_rejected(analyzer: DlibAnalyzer) -> None:
    with pytest.raises(ValueError, match="detect_every"):
        FaceTracker(analyzer, followed(detect_every=0))
    with pytest.raises(ValueError, match="verify_every"):
        FaceTracker(analyzer, followed(verify_every=0))
    settings = FaceTracker(analyzer, smoothing=OneEuro()).settings
    assert settings["smoothing"]["beta"] == OneEuro().beta


def test_scene_cut_ends_tracks_even_when_the_face_stays_in_place(
    analyzer: DlibAnalyzer, demo: list[np.ndarray]
) -> None:
    """A cut to a differently lit shot of the same framing: the landmark fit alone would follow
    the face across it; the cut check starts a new track on the first frame after the edit."""
    shot_b = [cv2.convertScaleAbs(f, alpha=0.6, beta=70) for f in demo[10:20]]
    frames = demo[:10] + shot_b
    tracker = FaceTracker(analyzer, followed())
    with_cut = [[t.track_id for t in tracker.update(f)] for f in frames]
    assert tracker.stats["cuts"] == 1
    assert {ids[0] for ids in with_cut[:10]} == {0} and {ids[0] for ids in with_cut[10:]} == {1}
    plain = FaceTracker(analyzer, followed(cut_threshold=None))
    without = [[t.track_id for t in plain.update(f)] for f in frames]
    assert {ids[0] for ids in without} == {0}
