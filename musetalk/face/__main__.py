"""Look at face-analysis results: `python -m musetalk.face IMAGE_OR_VIDEO --out vis.png`.

Draws the detector box, the 68 landmarks with their 0-based numbers, the training box, the
inference box for `--bbox-shift` and its mask boundary on one frame, and prints the region
facts. For a video, every frame is tracked first (with inference's tracker settings) and the
adjustable bbox_shift range over the main face's frames is printed the way inference prints it.
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
from musetalk.face.draw import draw_face
from musetalk.face.tracking import INFERENCE_TRACKING, FaceTracker, select_main_face
from musetalk.video import is_image, iter_frames, read_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m musetalk.face", description=__doc__)
    parser.add_argument("input", type=Path, help="an image or a video")
    parser.add_argument("--out", type=Path, default=Path("vis.png"), help="output image (PNG/JPG)")
    parser.add_argument("--frame", type=int, default=0, help="video frame to draw (25 fps index)")
    parser.add_argument("--bbox-shift", type=float, default=0.0, help="pixels; + moves down")
    parser.add_argument(
        "--extra-margin",
        type=float,
        default=region.EXTRA_MARGIN["v15"],
        help="px below the landmarks (MuseTalk v1.5: 10, v1.0: 0)",
    )
    parser.add_argument("--backend", default=DEFAULT_BACKEND, choices=sorted(BACKENDS))
    parser.add_argument("--no-numbers", action="store_true", help="do not label landmarks")
    return parser.parse_args(argv)


def analyse_video(path: Path, frame_index: int, tracker: FaceTracker):
    """Track every frame; returns (drawn frame, its faces, landmarks of the main face per frame:
    the main track's, else the frame's largest face, None without one)."""
    chosen, chosen_faces, per_frame = None, [], []
    for index, frame in iter_frames(path):
        tracked = tracker.update(frame)
        per_frame.append([(t.track_id, t.face.landmarks, t.face.box) for t in tracked])
        if index == frame_index:
            chosen, chosen_faces = frame, [t.face for t in tracked]
    if chosen is None:
        raise InputError(
            f"{path}: frame {frame_index} is past the end ({len(per_frame)} frames at 25 fps)"
        )
    landmarks, _, has_face = select_main_face(per_frame, tracker.main_track_id())
    return (
        chosen,
        chosen_faces,
        [lm if ok else None for lm, ok in zip(landmarks, has_face, strict=True)],
    )


def describe(face: Face, k: int, bbox_shift: float, extra_margin: float, frame_size) -> str:
    train = region.training_frame(face.box, face.landmarks)
    norm = train.equivalent_shift_norm
    box_info = region.inference_region(
        face.landmarks, bbox_shift, extra_margin, frame_size, face.box
    )
    lines = [
        f"face {k}: detector box {np.round(face.box, 1).tolist()} score {face.score:.2f}",
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        analyzer = build_analyzer(args.backend)
        if is_image(args.input):
            frame = read_image(args.input)
            faces = analyzer([frame])[0]
            main_landmarks = [faces[0].landmarks] if faces else []  # largest first
        else:
            tracker = FaceTracker(analyzer, INFERENCE_TRACKING)
            frame, faces, main_landmarks = analyse_video(args.input, args.frame, tracker)
    except MuseTalkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.input}: {len(faces)} face(s); landmarks 0-based iBUG-68, frame pixels")
    out = frame
    for k, face in enumerate(faces):
        print(describe(face, k, args.bbox_shift, args.extra_margin, frame.shape[:2]))
        out = draw_face(out, face, args.bbox_shift, args.extra_margin, not args.no_numbers)
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
