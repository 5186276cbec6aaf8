"""Look at face-analysis results: `python -m musetalk.face IMAGE_OR_VIDEO --out vis.png`.

Draws the detector box, the 68 landmarks with their 0-based numbers, the training box, the
inference box for `--bbox-shift` and its mask boundary on one frame, with a legend, and prints
the region facts. Faces are found as `infer.py` finds them: every frame tracked with inference's
tracker settings and landmark smoothing, the same main face (other faces are drawn in grey), the
same extra margin (`--version`). When the face is too small for readable landmark numbers, a
zoomed panel of it is added on the right. The adjustable bbox_shift range over the main face's
frames is printed the way inference prints it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from musetalk.errors import InputError, MuseTalkError
from musetalk.face import region
from musetalk.face.analyzer import BACKENDS, DEFAULT_BACKEND, Face, build_analyzer
from musetalk.face.draw import NUMBERS_MIN_FACE_PX, draw_face, face_panel, legend
from musetalk.face.tracking import INFERENCE_TRACKING, FaceTracker, OneEuro, select_main_face
from musetalk.video import is_image, iter_frames, read_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m musetalk.face", description=__doc__)
    parser.add_argument("input", type=Path, help="an image or a video")
    parser.add_argument("--out", type=Path, default=Path("vis.png"), help="output image (PNG/JPG)")
    parser.add_argument("--frame", type=int, default=0, help="video frame to draw (25 fps index)")
    parser.add_argument("--bbox-shift", type=float, default=0.0, help="pixels; + moves down")
    parser.add_argument(
        "--version", default="v15", choices=sorted(region.EXTRA_MARGIN), help="MuseTalk version"
    )
    parser.add_argument(
        "--extra-margin",
        type=float,
        default=None,
        help="px below the landmarks (default as inference: v15 10, v1 0)",
    )
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS))
    parser.add_argument("--no-numbers", action="store_true", help="do not label landmarks")
    args = parser.parse_args(argv)
    if args.extra_margin is None:
        args.extra_margin = float(region.EXTRA_MARGIN[args.version])
    return args


def analyse(path: Path, frame_index: int, tracker: FaceTracker):
    """Track every frame (an image is one frame), as inference does; returns (the drawn frame,
    its faces with the main one first, landmarks of the main face per frame: the main track's,
    else the frame's largest face, None without one)."""
    chosen, per_frame, tracks = None, [], []
    frames = [(0, read_image(path))] if is_image(path) else iter_frames(path)
    for index, frame in frames:
        tracked = tracker.update(frame)
        per_frame.append([(t.track_id, t.face.landmarks, t.face.box) for t in tracked])
        if index == frame_index:
            chosen, tracks = frame, tracked
    if chosen is None:
        raise InputError(
            f"{path}: frame {frame_index} is past the end ({len(per_frame)} frames at 25 fps)"
        )
    landmarks, _, has_face = select_main_face(per_frame, tracker.main_track_id())
    main_id = tracker.main_track_id()
    main = next((t for t in tracks if t.track_id == main_id), tracks[0] if tracks else None)
    faces = [t.face for t in ([main] if main else []) + [t for t in tracks if t is not main]]
    return chosen, faces, [lm if ok else None for lm, ok in zip(landmarks, has_face, strict=True)]


def describe(face: Face, k: int, bbox_shift: float, extra_margin: float, frame_size) -> str:
    train = region.training_frame(face.box, face.landmarks)
    norm = train.equivalent_shift_norm
    box_info = region.inference_region(
        face.landmarks, bbox_shift, extra_margin, frame_size, face.box
    )
    lines = [
        f"face {k}{' (main: the face infer.py lip-syncs)' if k == 0 else ''}: detector box "
        f"{np.round(face.box, 1).tolist()} score {face.score:.2f}",
        f"  training box {np.round(train.box, 1).tolist()}, mask boundary "
        f"y={train.mask_upper_bound:.1f} (nearest landmark {train.nearest_nose_landmark})",
        f"  equivalent bbox_shift {train.equivalent_shift:+.1f} px"
        + ("" if norm is None else f" ({norm:+.2f} nose lengths)"),
    ]
    if box_info is not None:
        lines.append(
            f"  inference box (bbox_shift={bbox_shift:g}) {np.round(box_info.box, 1).tolist()}, "
            f"mask boundary y={box_info.mask_upper_bound:.1f}"
            + (" [detector box fallback]" if box_info.fallback else "")
            + (" [clipped]" if box_info.clipped else "")
        )
    return "\n".join(lines)


def render(frame: np.ndarray, faces: list[Face], args: argparse.Namespace) -> np.ndarray:
    """The frame with every face drawn (the main one fully), a zoomed panel of the main face on
    the right when its landmark numbers would not be readable in the frame, and a legend
    strip below."""
    numbers = False if args.no_numbers else None
    out = frame
    for k, face in reversed(list(enumerate(faces))):  # the main face last, on top
        out = draw_face(out, face, args.bbox_shift, args.extra_margin, numbers, main=k == 0)
    small = faces and np.ptp(faces[0].landmarks[:, 1]) < NUMBERS_MIN_FACE_PX
    if small and not args.no_numbers:
        panel = face_panel(frame, faces[0], args.bbox_shift, args.extra_margin)
        height = max(out.shape[0], panel.shape[0])
        canvas = np.zeros((height, out.shape[1] + panel.shape[1], 3), np.uint8)
        canvas[: out.shape[0], : out.shape[1]] = out
        canvas[: panel.shape[0], out.shape[1] :] = panel
        out = canvas
    strip = legend(out.shape[1], args.backend, args.bbox_shift, args.extra_margin, len(faces))
    return np.concatenate([out, strip], axis=0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        analyzer = build_analyzer(args.backend)
        tracker = FaceTracker(analyzer, INFERENCE_TRACKING, smoothing=OneEuro())
        frame, faces, main_landmarks = analyse(args.input, args.frame, tracker)
    except MuseTalkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.input}: {len(faces)} face(s); landmarks 0-based iBUG-68, frame pixels")
    for k, face in enumerate(faces):
        print(describe(face, k, args.bbox_shift, args.extra_margin, frame.shape[:2]))
    out = render(frame, faces, args)
    with_face = [lm for lm in main_landmarks if lm is not None]
    if with_face:
        line = region.format_shift_range(
            len(main_landmarks), region.shift_range(with_face), args.bbox_shift
        )
        print(line)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(out, cv2.COLOR_RGB2BGR)):
        print(f"error: could not write {args.out}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
