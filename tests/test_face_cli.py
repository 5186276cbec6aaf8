"""`python -m musetalk.face`: the drawing CLI on a real frame, a real video and bad input."""

from __future__ import annotations

import cv2
import numpy as np

from musetalk.face.__main__ import main
from musetalk.video import iter_frames


def test_image_prints_region_facts_and_draws(shared_data, tmp_path, capsys):
    frame = next(f for _, f in iter_frames(shared_data / "talking_demo1.mp4", start=100, end=101))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "vis.png"
    assert main([str(image), "--out", str(out), "--bbox-shift", "-4"]) == 0
    text = capsys.readouterr().out
    assert "1 face(s)" in text and "inference box (bbox_shift=-4)" in text
    assert "Total frame: 1  Manually adjust range: [" in text and "current value: -4" in text
    drawn = cv2.imread(str(out))
    # the frame, then a zoomed panel of the face (about 210 px tall in 1920: numbers unreadable),
    # then the legend strip below
    assert drawn.shape[0] > frame.shape[0] and drawn.shape[1] > frame.shape[1]
    assert drawn[-5:, -5:].max() <= 30  # the legend strip's background
    # the drawing changed pixels around the face and nowhere far from it
    left = drawn[: frame.shape[0], : frame.shape[1]].astype(int)
    diff = np.abs(left - cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)).sum(axis=2) > 40
    ys, xs = np.nonzero(diff)
    assert diff.sum() > 1000
    assert 400 < xs.mean() < 800 and 550 < ys.mean() < 950
    assert "face 0 (main: the face infer.py lip-syncs)" in text


def test_large_face_has_numbers_in_the_frame_and_no_panel(shared_data, tmp_path, capsys):
    frame = next(f for _, f in iter_frames(shared_data / "yongen_video_only.mp4", end=1))
    frame = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)  # a close-up
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "vis.png"
    bottoms = {}
    for version in ("v1", "v15"):  # extra margin as inference: 0 for v1, 10 for v1.5
        assert main([str(image), "--out", str(out), "--version", version]) == 0
        text = capsys.readouterr().out
        box = text.split("inference box (bbox_shift=0) [", 1)[1].split("]", 1)[0]
        bottoms[version] = float(box.split(",")[3])
    assert bottoms["v15"] - bottoms["v1"] == 10
    drawn = cv2.imread(str(out))
    assert drawn.shape[1] == frame.shape[1] and drawn.shape[0] > frame.shape[0]  # legend only


def test_the_cli_sees_the_face_inference_sees(shared_data, tmp_path, capsys):
    """Same tracking, smoothing and main face as infer.py: the same range line."""
    import synth

    from musetalk.inference.pipeline import MuseTalkPipeline

    frames = [f for _, f in iter_frames(shared_data / "yongen_video_only.mp4", end=20)]
    clip = tmp_path / "clip.mp4"
    synth.write_frames(clip, frames, 25)
    assert main([str(clip), "--frame", "10", "--out", str(tmp_path / "vis.png")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Total frame"))
    avatar = MuseTalkPipeline.tiny().prepare_avatar(clip, bbox_shift=0)
    assert line == avatar.range_line()


def test_video_range_over_all_frames(shared_data, tmp_path, capsys):
    out = tmp_path / "vis.png"
    video = shared_data / "yongen_video_only.mp4"
    assert main([str(video), "--frame", "50", "--out", str(out), "--no-numbers"]) == 0
    text = capsys.readouterr().out
    assert "Total frame: 268  Manually adjust range: [" in text
    drawn = cv2.imread(str(out))  # --no-numbers: no zoomed panel, the frame and the legend
    assert drawn.shape[1] == 704 and drawn.shape[0] > 1216


def test_no_face_and_bad_input(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 127, np.uint8))
    assert main([str(blank), "--out", str(tmp_path / "o.png")]) == 0
    assert "0 face(s)" in capsys.readouterr().out
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"garbage" * 100)
    assert main([str(broken), "--out", str(tmp_path / "p.png")]) == 1
    assert "error:" in capsys.readouterr().err
