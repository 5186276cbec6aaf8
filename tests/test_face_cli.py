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
    assert drawn.shape == frame.shape
    # the drawing changed pixels around the face and nowhere far from it
    diff = np.abs(drawn.astype(int) - cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)).sum(axis=2) > 40
    ys, xs = np.nonzero(diff)
    assert diff.sum() > 1000
    assert 400 < xs.mean() < 800 and 550 < ys.mean() < 950


def test_video_range_over_all_frames(shared_data, tmp_path, capsys):
    out = tmp_path / "vis.png"
    video = shared_data / "yongen_video_only.mp4"
    assert main([str(video), "--frame", "50", "--out", str(out), "--no-numbers"]) == 0
    text = capsys.readouterr().out
    assert "Total frame: 268  Manually adjust range: [" in text
    assert cv2.imread(str(out)).shape == (1216, 704, 3)


def test_no_face_and_bad_input(tmp_path, capsys):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 127, np.uint8))
    assert main([str(blank), "--out", str(tmp_path / "o.png")]) == 0
    assert "0 face(s)" in capsys.readouterr().out
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"garbage" * 100)
    assert main([str(broken), "--out", str(tmp_path / "p.png")]) == 1
    assert "error:" in capsys.readouterr().err
