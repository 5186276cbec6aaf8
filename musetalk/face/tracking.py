"""Face tracking for video: detect on some frames, follow faces by their landmarks in between.

Full-frame detection is the expensive step (~35 ms at 1080x1920 with the dlib backend); fitting
landmarks in a known box is cheap (~1-2 ms). So `FaceTracker` runs the analyzer's full
detection only on key frames (every `detect_every` frames), when a track is lost, and while no
face is tracked; in between it fits each face's landmarks in a box predicted from its previous
landmarks. A followed face is kept only if its new landmark box did not jump or degenerate and
a detector run on a small crop around it still finds a face there (`verify_every`).

Streaming: `update(frame)` per frame (or `track(frames)` over any iterable) returns that frame's
faces with their track ids; nothing is kept per frame, only per-track summaries, so long videos
are never held in memory. `main_track_id()` picks the face with the largest total area over the
frames seen (size x persistence). The number of faces seen in a frame is `len(update(frame))`.

Landmarks are 0-based iBUG-300W (68, 2) in original-frame pixels; boxes (x1, y1, x2, y2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import Field

from musetalk.config import settings
from musetalk.face.analyzer import Face, FaceAnalyzer, box_iou, check_frame
from musetalk.timebase import FPS


@dataclass(frozen=True)
class TrackedFace:
    """One tracked face in one frame.

    face: box, landmarks (smoothed when the tracker smooths) and score. On frames where the
        face was followed, `box` is the detector-equivalent box derived from the landmarks and
        `score` the last detector score seen for it (the verification crop's, if any).
    detected: landmarks fitted in a detector box this frame (else followed from the previous).
    new: first frame of this track.
    raw_landmarks: (68, 2) landmarks before smoothing (the same as face.landmarks without it).
    """

    track_id: int
    face: Face
    detected: bool
    new: bool
    raw_landmarks: np.ndarray


@dataclass
class TrackSummary:
    """What the tracker remembers of one track (frame indices count from 0, inclusive)."""

    track_id: int
    first_frame: int
    last_frame: int
    frames: int = 0
    detected_frames: int = 0
    area_sum: float = 0.0  # sum over frames of the box area, square pixels
    ended: bool = False


def main_track(summaries: Iterable[TrackSummary]) -> int | None:
    """Id of the main face: the largest total box area (size x persistence); None if none."""
    best = max(summaries, key=lambda s: (s.area_sum, -s.track_id), default=None)
    return None if best is None else best.track_id


@dataclass(frozen=True)
class OneEuro:
    """Settings of a causal One-Euro filter on landmarks (Casiez et al., CHI 2012).

    The cutoff frequency rises with speed: cutoff = min_cutoff + beta * speed, speed in face
    sizes per second (face size = sqrt of the landmark-extent area), so the same settings work
    for any face size. Lower min_cutoff = less jitter on a still face but more lag when it
    starts moving; higher beta = less lag on fast motion (talking lips) but more jitter kept.
    Lag matters for lip-sync (crop and mask follow the face), so the defaults favour low lag.
    Measured with the dlib backend at 25 fps: on a still face with pixel noise, frame-to-frame
    jitter falls from 0.0066 to 0.0012 of the inter-ocular distance; on talking_demo1 the
    smoothed landmarks stay within 0.012 (mean; max 0.032) of the raw ones.

    min_cutoff: Hz, at rest. beta: Hz per (face size / s). d_cutoff: Hz, for the speed estimate.
    fps: frame rate of the video, frames per second.
    """

    min_cutoff: float = 0.5
    beta: float = 20.0
    d_cutoff: float = 1.0
    fps: float = FPS

    def __post_init__(self) -> None:
        if min(self.min_cutoff, self.d_cutoff, self.fps) <= 0 or self.beta < 0:
            raise ValueError(f"One-Euro settings must be positive (beta >= 0), got {self}")

    def new_filter(self) -> OneEuroFilter:
        """Fresh filter state for one track."""
        return OneEuroFilter(self)


class OneEuroFilter:
    """State of a One-Euro filter over (N, 2) point arrays; one per track."""

    def __init__(self, settings: OneEuro) -> None:
        self.settings = settings
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    def _alpha(self, cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * self.settings.fps)

    def __call__(self, points: np.ndarray, scale: float) -> np.ndarray:
        """Filter (N, 2) points of one frame; `scale` = face size in pixels. Returns (N, 2)."""
        points = np.asarray(points, dtype=np.float64)
        if self._x is None or self._dx is None:
            self._x, self._dx = points.copy(), np.zeros_like(points)
            return points.copy()
        s = self.settings
        dx = (points - self._x) * s.fps
        self._dx = self._dx + self._alpha(s.d_cutoff) * (dx - self._dx)
        speed = np.linalg.norm(self._dx, axis=1, keepdims=True) / max(scale, 1e-6)
        a = self._alpha(s.min_cutoff + s.beta * speed)
        self._x = self._x + a * (points - self._x)
        return self._x.copy()


@dataclass
class _Track:
    id: int
    landmarks: np.ndarray  # (68, 2) raw
    box: np.ndarray  # (4,) detector (or detector-equivalent) box
    score: float
    rel: np.ndarray  # (4,) detector box relative to the landmark extent, see _relation
    smoother: OneEuroFilter | None
    since_verify: int = 0


@dataclass
class _Step:
    """A track's candidate for the current frame."""

    landmarks: np.ndarray
    box: np.ndarray
    score: float
    detected: bool


def landmark_extent(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (2,) and size (2,) of the bounding box of (68, 2) landmarks, pixels."""
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    return (lo + hi) / 2, hi - lo


def _relation(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Detector box as (dx, dy, w, h) relative to the landmark extent (centre, size)."""
    c, s = landmark_extent(landmarks)
    s = np.maximum(s, 1e-6)
    return np.concatenate([((box[:2] + box[2:]) / 2 - c) / s, (box[2:] - box[:2]) / s])


def _centre_offset(a: np.ndarray, b: np.ndarray) -> float:
    """Distance between two box centres / sqrt of the area of b."""
    size = math.sqrt(max(1e-12, (b[2] - b[0]) * (b[3] - b[1])))
    return float(np.linalg.norm((a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2) / size)


def _box_from(landmarks: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Detector-equivalent box of landmarks, given a relation from `_relation`."""
    c, s = landmark_extent(landmarks)
    centre, size = c + rel[:2] * s, rel[2:] * s
    return np.concatenate([centre - size / 2, centre + size / 2])


@settings
class TrackingOptions:
    """How `FaceTracker` trades detector runs for landmark following (one source of defaults).

    The defaults suit preprocessing (a vanished face is noticed within `verify_every` frames);
    `INFERENCE_TRACKING` checks every frame, since inference must not paste a mouth where the
    face has gone.

    detect_every: full-frame detection on every this many frames while faces are tracked
        (1 = detect every frame, i.e. the analyzer alone, with track ids).
    idle_detect_every: the same while no face is tracked (1 = a face is found on the frame it
        appears; larger values save time on faceless stretches).
    verify_every: check every this many frames that a followed face is still a face, by running
        the detector on a small crop around it (`verify_size` px face); this is what notices a
        face that vanished (the landmark fit alone always returns a shape). None = only on key
        frames where the full detection missed it, so a vanished face is still reported until
        the next key frame.
    match_iou: minimum IoU to associate a detection with a track.
    min_step_iou: a followed face whose new box overlaps the box it was fitted in by less than
        this is lost (the landmarks jumped).
    reanchor_offset: when the verification finds the face with its centre off the followed
        box's by more than this fraction of the face size, the landmarks are refitted in the
        detected box (on real talking heads the offset stays below ~0.2, mostly below 0.12).
    min_face: smallest followed face (box side, pixels) before the track is lost.
    max_faces: keep at most this many tracks (the largest new detections first); None = all.
    cut_threshold: a scene cut (mean absolute difference of 32x32 grey thumbnails of
        consecutive frames above this, in grey levels) ends every track and forces a full
        detection, so faces on both sides of an edit never share a track. Consecutive frames
        of a talking head differ by ~0.2-1.5, cuts by ~30-70. None = off.
    """

    detect_every: Annotated[int, Field(ge=1)] = 25
    idle_detect_every: Annotated[int, Field(ge=1)] = 3
    verify_every: Annotated[int, Field(ge=1)] | None = 5
    verify_size: Annotated[int, Field(ge=16)] = 100
    match_iou: Annotated[float, Field(gt=0, le=1)] = 0.3
    min_step_iou: Annotated[float, Field(ge=0, le=1)] = 0.5
    reanchor_offset: Annotated[float, Field(gt=0)] = 0.15
    min_face: Annotated[float, Field(gt=0)] = 16.0
    max_faces: Annotated[int, Field(ge=1)] | None = None
    cut_threshold: Annotated[float, Field(gt=0)] | None = 12.0


#: Inference: a local check on every frame (a face that leaves is noticed at once) and detection
#: on every faceless frame (a face is used from the frame it appears).
INFERENCE_TRACKING = TrackingOptions(verify_every=1, idle_detect_every=1)


class FaceTracker:
    """Streaming multi-face tracker over a `FaceAnalyzer`.

    options: `TrackingOptions` (detection, verification and scene-cut settings).
    smoothing: One-Euro settings to smooth landmarks and boxes causally per track; None = off.
    """

    def __init__(
        self,
        analyzer: FaceAnalyzer,
        options: TrackingOptions | None = None,
        smoothing: OneEuro | None = None,
    ) -> None:
        self.analyzer = analyzer
        self.options = options if options is not None else TrackingOptions()
        self.smoothing = smoothing
        self.reset()

    @property
    def settings(self) -> dict[str, Any]:
        """JSON-serialisable tracker settings (recorded with the landmarks)."""
        return {
            **asdict(self.options),
            "smoothing": None if self.smoothing is None else asdict(self.smoothing),
        }

    def reset(self) -> None:
        """Forget all tracks and counters (start of a new video)."""
        self.frame_index = -1
        self.summaries: dict[int, TrackSummary] = {}
        self.stats: dict[str, Any] = {
            "frames": 0,
            "detect_calls": 0,
            "verify_calls": 0,
            "lost": 0,
            "cuts": 0,
            "faces_per_frame": {},
        }
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._since_detect = math.inf
        self._thumb: np.ndarray | None = None

    def main_track_id(self) -> int | None:
        """The main face so far: largest total box area over the frames seen."""
        return main_track(self.summaries.values())

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[list[TrackedFace]]:
        """`update` over an iterable of frames, lazily: one list of faces per frame."""
        for frame in frames:
            yield self.update(frame)

    def update(self, frame: np.ndarray) -> list[TrackedFace]:
        """Faces of the next RGB uint8 frame (H, W, 3), largest first."""
        frame = check_frame(frame)
        self.frame_index += 1
        self._since_detect += 1
        cut = self._scene_cut(frame)
        if cut:
            for track in self._tracks:
                self.summaries[track.id].ended = True
            self._tracks = []
            self.stats["cuts"] += 1
        steps: dict[int, _Step | None] = {t.id: self._follow(frame, t) for t in self._tracks}
        every = self.options.detect_every if self._tracks else self.options.idle_detect_every
        must_detect = cut or self._since_detect >= every or any(s is None for s in steps.values())
        if not must_detect:
            self._verify_due(frame, steps, forced=False)
            must_detect = any(s is None for s in steps.values())
        new_faces: list[Face] = []
        if must_detect:
            new_faces = self._detect_and_match(frame, steps)
        out: list[TrackedFace] = []
        survivors = []
        for track in self._tracks:
            step = steps[track.id]
            if step is None:
                self.summaries[track.id].ended = True
                self.stats["lost"] += 1
                continue
            survivors.append(track)
            out.append(self._advance(track, step, new=False))
        self._tracks = survivors
        for face in new_faces:
            if self.options.max_faces is not None and len(self._tracks) >= self.options.max_faces:
                break
            out.append(self._start(face))
        out.sort(key=lambda tf: -tf.face.area)
        self.stats["frames"] += 1
        counts = self.stats["faces_per_frame"]
        counts[len(out)] = counts.get(len(out), 0) + 1
        return out

    def _scene_cut(self, frame: np.ndarray) -> bool:
        """True when this frame differs from the previous one like an edit does."""
        if self.options.cut_threshold is None:
            return False
        step = max(1, min(frame.shape[:2]) // 128)  # subsample first: large frames stay cheap
        grey = cv2.cvtColor(np.ascontiguousarray(frame[::step, ::step]), cv2.COLOR_RGB2GRAY)
        thumb = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
        previous, self._thumb = self._thumb, thumb
        return (
            previous is not None
            and float(np.abs(thumb - previous).mean()) > self.options.cut_threshold
        )

    def _follow(self, frame: np.ndarray, track: _Track) -> _Step | None:
        """Fit the track's face in a box predicted from its last landmarks; None if lost."""
        box_in = _box_from(track.landmarks, track.rel)
        lms = self.analyzer.landmarks(frame, [box_in])[0]
        box = _box_from(lms, track.rel)
        h, w = frame.shape[:2]
        centre = (box[:2] + box[2:]) / 2
        if (
            not np.all(np.isfinite(box))
            or min(box[2] - box[0], box[3] - box[1]) < self.options.min_face
            or not (0 <= centre[0] < w and 0 <= centre[1] < h)
            or box_iou(box, box_in) < self.options.min_step_iou
        ):
            return None
        return _Step(lms, box, track.score, detected=False)

    def _verify_due(self, frame: np.ndarray, steps: dict[int, _Step | None], forced: bool) -> None:
        """Check followed faces that are due (or all, if forced) with a local detection.

        No face in the crop: the track is lost (None). A face there whose centre is off the
        followed box's by more than `reanchor_offset`: the landmarks lagged behind (fast
        motion), refit them in the detected box.
        """
        for track in self._tracks:
            step = steps.get(track.id)
            if step is None or step.detected:
                continue
            track.since_verify += 1
            due = (
                self.options.verify_every is not None
                and track.since_verify >= self.options.verify_every
            )
            if not (forced or due):
                continue
            track.since_verify = 0
            found = self._verify(frame, step.box)
            if found is None:
                steps[track.id] = None
            elif _centre_offset(found[0], step.box) > self.options.reanchor_offset:
                lms = self.analyzer.landmarks(frame, [found[0]])[0]
                steps[track.id] = _Step(lms, found[0], found[1], detected=True)
            else:
                step.score = found[1]

    def _verify(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float] | None:
        """The detection (box in frame pixels, score) overlapping `box` most, in a crop around
        it scaled to a `verify_size` px face; None if none overlaps by `match_iou`."""
        self.stats["verify_calls"] += 1
        side = max(box[2] - box[0], box[3] - box[1])
        centre = (box[:2] + box[2:]) / 2
        h, w = frame.shape[:2]
        x0, y0 = (max(0, math.floor(v - side)) for v in centre)
        x1, y1 = min(w, math.ceil(centre[0] + side)), min(h, math.ceil(centre[1] + side))
        crop = frame[y0:y1, x0:x1]
        scale = self.options.verify_size / side
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        crop = cv2.resize(crop, size, interpolation=interp)
        offset = np.array([x0, y0, x0, y0], dtype=np.float64)
        found = [(b / scale + offset, score) for b, score in self.analyzer.detect(crop)]
        best = max(found, key=lambda bs: box_iou(bs[0], box), default=None)
        if best is None or box_iou(best[0], box) < self.options.match_iou:
            return None
        return best

    def _detect_and_match(self, frame: np.ndarray, steps: dict[int, _Step | None]) -> list[Face]:
        """Full detection; matched tracks take the detected face; returns unmatched faces."""
        self.stats["detect_calls"] += 1
        self._since_detect = 0
        faces = self.analyzer.analyze(frame)
        pairs = []
        for track in self._tracks:
            step = steps[track.id]
            ref = track.box if step is None else step.box
            for j, face in enumerate(faces):
                iou = box_iou(ref, face.box)
                if iou >= self.options.match_iou:
                    pairs.append((iou, track.id, j))
        used_tracks: set[int] = set()
        used_faces: set[int] = set()
        for _, tid, j in sorted(pairs, reverse=True):
            if tid in used_tracks or j in used_faces:
                continue
            used_tracks.add(tid)
            used_faces.add(j)
            face = faces[j]
            steps[tid] = _Step(face.landmarks, face.box, face.score, detected=True)
        unmatched = {t.id: steps[t.id] for t in self._tracks if t.id not in used_tracks}
        self._verify_due(frame, unmatched, forced=True)
        steps.update(unmatched)
        return [f for j, f in enumerate(faces) if j not in used_faces]

    def _start(self, face: Face) -> TrackedFace:
        smoother = None if self.smoothing is None else self.smoothing.new_filter()
        track = _Track(
            self._next_id,
            face.landmarks,
            face.box,
            face.score,
            _relation(face.box, face.landmarks),
            smoother,
        )
        self._next_id += 1
        self._tracks.append(track)
        self.summaries[track.id] = TrackSummary(track.id, self.frame_index, self.frame_index)
        return self._advance(track, _Step(face.landmarks, face.box, face.score, True), new=True)

    def _advance(self, track: _Track, step: _Step, new: bool) -> TrackedFace:
        track.landmarks, track.box, track.score = step.landmarks, step.box, step.score
        if step.detected:
            track.rel = _relation(step.box, step.landmarks)
            track.since_verify = 0
        landmarks, box = step.landmarks, step.box
        if track.smoother is not None:
            _, size = landmark_extent(step.landmarks)
            points = track.smoother(
                np.vstack([landmarks, box.reshape(2, 2)]), math.sqrt(size.prod())
            )
            landmarks, box = points[:-2], points[-2:].reshape(4)
        summary = self.summaries[track.id]
        face = Face(box, landmarks, step.score)
        summary.last_frame = self.frame_index
        summary.frames += 1
        summary.detected_frames += int(step.detected)
        summary.area_sum += face.area
        return TrackedFace(track.id, face, step.detected, new, step.landmarks)


def select_main_face(
    per_frame: Iterable[list[tuple[int, np.ndarray, np.ndarray]]], main_id: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame, the main track's face, else the largest face of that frame.

    per_frame: for each frame a list of (track id, landmarks (68, 2), detector box (4,)),
    largest first. A speaker who gets a new track id after a scene cut is still lip-synced.
    Returns landmarks (N, 68, 2), det_boxes (N, 4) (NaN without a face) and has_face (N,).
    """
    frames = list(per_frame)
    n = len(frames)
    landmarks = np.full((n, 68, 2), np.nan)
    det_boxes = np.full((n, 4), np.nan)
    has_face = np.zeros(n, bool)
    for i, faces in enumerate(frames):
        if not faces:
            continue
        chosen = next((f for f in faces if f[0] == main_id), faces[0])
        landmarks[i], det_boxes[i], has_face[i] = chosen[1], chosen[2], True
    return landmarks, det_boxes, has_face
