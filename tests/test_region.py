"""Region math: golden values worked out by hand from design.md section 3, and properties."""

from __future__ import annotations

import numpy as np
import pytest

from musetalk.face import region


def make_landmarks(
    *,
    x_range: tuple[float, float],
    y_max: float,
    nose: tuple[float, float, float, float],
    rest: tuple[float, float],
) -> np.ndarray:
    """68 points: lm0 at x min, lm16 at x max, lm8 (chin) at y max, lm27..30 the nose bridge.

    Every other point sits at `rest`, inside the extents, so the hand-computed values below only
    depend on the named points.
    """
    lms = np.tile(np.asarray(rest, dtype=np.float64), (68, 1))
    lms[0] = (x_range[0], rest[1])
    lms[16] = (x_range[1], rest[1])
    lms[8] = (rest[0], y_max)
    for k, y in zip((27, 28, 29, 30), nose, strict=True):
        lms[k] = (rest[0], y)
    return lms


# Face A: x 100..200, nose 27..30 at y 120/130/140/150, chin at 220.
LM_A = make_landmarks(x_range=(100, 200), y_max=220, nose=(120, 130, 140, 150), rest=(150, 160))
DET_A = (95, 90, 205, 225)
# Face B: x 50..180, nose at 188/200/212/226, chin at 300.
LM_B = make_landmarks(x_range=(50, 180), y_max=300, nose=(188, 200, 212, 226), rest=(110, 240))


def test_training_box_and_statistics_face_a():
    box = region.training_box(DET_A, LM_A)
    np.testing.assert_array_equal(box, [100, 90, 200, 220])
    assert region.mask_upper_bound(box) == 155.0
    # |155-130| = 25, |155-140| = 15, |155-150| = 5 -> landmark 30
    assert region.nearest_nose_landmark(155.0, LM_A) == 30
    assert region.equivalent_shift(DET_A, LM_A) == 15.0  # 155 - 140
    assert region.nose_length(LM_A) == 30.0  # 150 - 120
    assert region.normalized_shift(15.0, LM_A) == 0.5


@pytest.mark.parametrize(
    ("det_top", "bound", "nearest", "shift"),
    [
        (130, 215.0, 29, 3.0),  # (130+300)/2 = 215: |215-212| = 3 is the smallest
        (100, 200.0, 28, -12.0),  # (100+300)/2 = 200 = lm28.y
        (152, 226.0, 30, 14.0),  # (152+300)/2 = 226 = lm30.y
    ],
)
def test_training_statistics_face_b(det_top, bound, nearest, shift):
    det = (40, det_top, 190, 305)
    box = region.training_box(det, LM_B)
    np.testing.assert_array_equal(box, [50, det_top, 180, 300])
    assert region.mask_upper_bound(box) == bound
    assert region.nearest_nose_landmark(bound, LM_B) == nearest
    assert region.equivalent_shift(det, LM_B) == shift
    assert region.normalized_shift(shift, LM_B) == pytest.approx(shift / 38.0)


def test_nearest_nose_landmark_tie_goes_up():
    # 135 is equally far from lm28 (130) and lm29 (140)
    assert region.nearest_nose_landmark(135.0, LM_A) == 28


def test_inference_box_golden_face_a():
    # c = 140, y_max = 220 -> top = 2*140 - 220 = 60
    np.testing.assert_array_equal(region.inference_box(LM_A), [100, 60, 200, 220])
    # s = -4: c = 136 -> top = 52; s = +3: c = 143 -> top = 66
    np.testing.assert_array_equal(region.inference_box(LM_A, bbox_shift=-4), [100, 52, 200, 220])
    np.testing.assert_array_equal(region.inference_box(LM_A, bbox_shift=3), [100, 66, 200, 220])
    # v1.5 margin: 10 px more at the bottom; the mask boundary stays at c
    box_info = region.inference_region(LM_A, bbox_shift=0, extra_margin=10)
    np.testing.assert_array_equal(box_info.box, [100, 60, 200, 230])
    assert box_info.mask_upper_bound == 140.0
    assert not box_info.fallback and not box_info.clipped


def test_inference_box_top_clipped_at_zero():
    # s = -40: c = 100 -> 2c - y_max = -20 -> top 0, middle row 110 instead of 100
    box_info = region.inference_region(LM_A, bbox_shift=-40)
    np.testing.assert_array_equal(box_info.box, [100, 0, 200, 220])
    assert box_info.mask_upper_bound == 110.0
    assert box_info.clipped


def test_inference_box_clipped_to_frame():
    # frame 226 rows high: the 10 px margin below y_max = 220 is cut at 226
    box_info = region.inference_region(LM_A, extra_margin=10, frame_size=(226, 400))
    np.testing.assert_array_equal(box_info.box, [100, 60, 200, 226])
    assert box_info.clipped and not box_info.fallback


def test_landmarks_outside_frame_fall_back_to_detector_box():
    # face B's chin (y 300) is below a 280-row frame: landmark box is degenerate
    det = (40, 150, 190, 305)
    box_info = region.inference_region(LM_B, bbox_shift=5, frame_size=(280, 400), det_box=det)
    assert box_info.fallback and box_info.clipped
    np.testing.assert_array_equal(box_info.box, [40, 150, 190, 280])


@pytest.mark.parametrize(
    "landmarks",
    [
        np.full((68, 2), 50.0),  # zero size
        np.where(np.arange(68)[:, None] == 3, np.nan, LM_A),  # a non-finite point
        LM_A - np.array([150.0, 0.0]),  # negative x
        None,  # no landmarks at all
    ],
)
def test_degenerate_landmarks_use_detector_box_or_none(landmarks):
    box_info = region.inference_region(landmarks, det_box=DET_A)
    assert box_info is not None and box_info.fallback
    np.testing.assert_array_equal(box_info.box, DET_A)
    assert region.inference_box(landmarks) is None
    assert (
        region.inference_box(landmarks, det_box=(10, 10, 10, 20)) is None
    )  # zero-width detector box


def test_shift_range_and_format():
    # face A: up 10, down 10; face B: up 12, down 14 -> means 11 and 12
    assert region.shift_range([LM_A]) == (-10.0, 10.0)
    assert region.shift_range([LM_A, None, LM_B]) == (-11.0, 12.0)
    line = region.format_shift_range(3, region.shift_range([LM_A, None, LM_B]), -4)
    assert line == "Total frame: 3  Manually adjust range: [-11 ~ 12], the current value: -4"
    # bounds are truncated towards zero so the printed values stay inside the range
    assert "[-9 ~ 9]" in region.format_shift_range(1, (-9.7, 9.2), 0)
    with pytest.raises(ValueError, match="at least one frame"):
        region.shift_range([None, None])


def test_bad_inputs_raise_value_error_naming_the_problem():
    with pytest.raises(ValueError, match="68, 2"):
        region.training_box(DET_A, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="4 finite numbers"):
        region.mask_upper_bound((1, 2, 3))
    with pytest.raises(ValueError, match="no whole pixel"):
        region.crop(np.zeros((10, 10, 3), np.uint8), (3.2, 3.2, 3.4, 3.4))


def random_face(rng: np.random.Generator, frame_hw: tuple[int, int]) -> np.ndarray:
    """A plausible face: random size and position, nose bridge ordered top to bottom."""
    h, w = frame_hw
    size = rng.uniform(40, 300)
    cx, cy = rng.uniform(size, w - size), rng.uniform(size, h - size)
    lms = np.column_stack(
        [cx + rng.uniform(-0.5, 0.5, 68) * size, cy + rng.uniform(-0.3, 0.6, 68) * size]
    )
    lms[27:31, 1] = cy + np.sort(rng.uniform(-0.25, 0.25, 4)) * size
    lms[27:31, 0] = cx
    return lms


def test_properties_boundary_top_edge_and_frame():
    rng = np.random.default_rng(0)
    frame_hw = (1920, 1080)
    checked = 0
    for _ in range(300):
        lms = random_face(rng, frame_hw)
        s1, s2 = rng.integers(-25, 26, size=2)
        r1 = region.inference_region(lms, bbox_shift=s1, frame_size=frame_hw)
        r2 = region.inference_region(lms, bbox_shift=s2, frame_size=frame_hw)
        for s, r in ((s1, r1), (s2, r2)):
            # a shift that puts the boundary below the chin leaves no box (no detector fallback)
            assert (r is None) == (lms[29, 1] + s >= lms[:, 1].max())
            if r is None:
                break
            x1, y1, x2, y2 = r.box
            assert 0 <= x1 < x2 <= frame_hw[1] and 0 <= y1 < y2 <= frame_hw[0]
        if r1 is None or r2 is None or r1.clipped or r2.clipped:
            continue
        checked += 1
        # mask boundary at landmark 29 + shift, exactly; the top edge moves by 2 x shift
        assert r1.mask_upper_bound == pytest.approx(lms[29, 1] + s1, abs=1e-9)
        assert region.mask_upper_bound(r1.box) == pytest.approx(lms[29, 1] + s1, abs=1e-9)
        assert r2.box[1] - r1.box[1] == pytest.approx(2 * (s2 - s1), abs=1e-9)
        assert r2.box[3] == r1.box[3]
    assert checked > 200


def test_equivalent_shift_reproduces_training_boundary():
    """Inference with the equivalent shift puts the boundary where the training box had it."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        lms = random_face(rng, (1920, 1080))
        det = (lms[:, 0].min() - 5, lms[:, 1].min() - rng.uniform(0, 60), lms[:, 0].max() + 5, 1900)
        shift = region.equivalent_shift(det, lms)
        box_info = region.inference_region(lms, bbox_shift=shift)
        expected = region.mask_upper_bound(region.training_box(det, lms))
        if not box_info.clipped:
            assert box_info.mask_upper_bound == pytest.approx(expected, abs=1e-9)


def test_crop_is_exact_at_scale_one_and_resizes_otherwise():
    yy, xx = np.mgrid[0:200, 0:300]
    frame = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    out = region.crop(frame, (10, 20, 74, 84), size=64)
    np.testing.assert_array_equal(out, frame[20:84, 10:74])
    big = region.crop(frame, (10.4, 20.4, 74.4, 84.4), size=256)  # rounds to the same pixels
    assert big.shape == (256, 256, 3) and big.dtype == np.uint8
    # upscaled 4x: the top-left output pixel still shows column ~10, row ~20
    assert abs(int(big[0, 0, 0]) - 10) <= 2 and abs(int(big[0, 0, 1]) - 20) <= 2
    # a box partly outside the frame is clipped, not wrapped around
    edge = region.crop(frame, (-50, -50, 30, 30), size=30)
    np.testing.assert_array_equal(edge, frame[0:30, 0:30])


def test_pixel_rect_rounds_and_clips():
    assert region.pixel_rect((10.4, 20.6, 74.5, 84.49)) == (10, 21, 74, 84)
    assert region.pixel_rect((-5, -5, 500, 500), frame_size=(100, 200)) == (0, 0, 200, 100)


def test_shift_limits_keep_the_boundary_monotonic_and_never_fall_back():
    """Over -1000..1000 px, a shift clipped to `shift_limits` gives a landmark box (never the
    detector fallback) whose boundary is non-decreasing in the shift, and equals lm29 + shift
    exactly inside the limits; past them it stays at the limit's boundary."""
    rng = np.random.default_rng(2)
    frame_hw = (1920, 1080)
    for _ in range(100):
        lms = random_face(rng, frame_hw)
        det = (lms[:, 0].min() - 5, lms[:, 1].min() - 40, lms[:, 0].max() + 5, lms[:, 1].max())
        lo, hi = region.shift_limits([lms])
        assert lo < 0 < hi
        bounds = []
        for shift in range(-1000, 1001, 5):
            used = region.clip_shift(shift, (lo, hi))
            box_info = region.inference_region(lms, used, 10, frame_size=frame_hw, det_box=det)
            assert box_info is not None and not box_info.fallback, shift
            assert box_info.mask_upper_bound == pytest.approx(lms[29, 1] + used, abs=1e-9)
            assert (used == shift) == (lo <= shift <= hi)
            bounds.append(box_info.mask_upper_bound)
        assert np.all(np.diff(bounds) >= 0)
        # unclipped, MuseTalk's box vanishes past the lowest landmark (the silent fallback)
        assert region.inference_region(lms, hi + 2, det_box=det).fallback


def test_crop_is_opencv_lanczos_within_one_level_of_its_8_bit_path(shared_data):
    """region.crop computes Lanczos-4 in float32 and rounds once: on a real 1080x1920 frame and
    on noise, upscaled and downscaled, it stays within 1 level of OpenCV's 8-bit Lanczos-4 and
    differs on few pixels; a plain float->uint8 truncation instead would differ on about half."""
    import cv2

    from musetalk.video import VideoReader

    frame = next(VideoReader(shared_data / "talking_demo1.mp4").frames(0, 1))[1]
    noise = np.random.default_rng(3).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    cases = [(frame, (500, 640, 690, 850), 256), (frame, (300, 400, 900, 1100), 256)]
    cases += [(noise, (7, 11, 150, 120), 256), (noise, (0, 0, 420, 300), 64)]
    for image, box, size in cases:
        out = region.crop(image, box, size)
        x1, y1, x2, y2 = region.pixel_rect(box, image.shape[:2])
        eight_bit = cv2.resize(image[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LANCZOS4)
        assert out.shape == eight_bit.shape and out.dtype == np.uint8
        diff = np.abs(out.astype(int) - eight_bit)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.1, (box, diff.max(), (diff > 0).mean())
        truncated = cv2.resize(
            image[y1:y2, x1:x2].astype(np.float32), (size, size), interpolation=cv2.INTER_LANCZOS4
        ).astype(np.uint8)
        assert (truncated != eight_bit).mean() > 0.2  # the rounding is what makes them agree
