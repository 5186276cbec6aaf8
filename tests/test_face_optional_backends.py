"""Optional face backends (dwpose, fan), offline: tiny models with known outputs, real glue code.

No real weights can be had here. DWPose runs a tiny ONNX model exported in the test with DWPose's
input/output signature whose SimCC peaks follow a red dot, so the crop, normalisation, RGB order,
SimCC decoding, inverse mapping and face slice are all checked against known pixels. face-alignment
runs its real S3FD and FAN architectures with crafted state dicts whose outputs are known.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from musetalk.face.analyzer import FaceAnalyzer

# ---------------------------------------------------------------------------------------------
# DWPose

NUM_WHOLEBODY = 133
INPUT_W, INPUT_H = 288, 384  # DWPose-l wholebody input (width, height)
SHIFT_PX = 3  # tiny model: keypoint k's x peak sits SHIFT_PX input px left of keypoint k - 1's


def export_dot_follower(path: Path, num_keypoints: int = NUM_WHOLEBODY) -> Path:
    """Export a tiny DWPose stand-in: input (1, 3, 384, 288) -> simcc_x (1, K, 576), simcc_y
    (1, K, 768), split ratio 2, like dw-ll_ucoco_384.onnx.

    Every keypoint's SimCC peaks at the column/row holding the most red (above black); keypoint
    k's x peak is moved SHIFT_PX * (k - 23) input pixels left, so face keypoint j (k = 23 + j)
    lands 3 * j input pixels left of the dot.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    shifts = [2 * SHIFT_PX * (k - 23) for k in range(num_keypoints)]  # in SimCC bins
    pad = max(abs(s) for s in shifts)

    class DotFollower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shift = torch.nn.Conv1d(1, num_keypoints, 2 * pad + 1, padding=pad, bias=False)
            with torch.no_grad():
                self.shift.weight.zero_()
                for k, s in enumerate(shifts):  # out[k, b] = in[b + s]
                    self.shift.weight[k, 0, pad + s] = 1.0

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # Normalised black is -2.118 in the red channel: > 0 wherever red is above black.
            red = torch.relu(x[:, 0] + 2.1)  # (1, H, W)
            cols = red.sum(dim=1).repeat_interleave(2, dim=-1)[:, None]  # (1, 1, 2W)
            rows = red.sum(dim=2).repeat_interleave(2, dim=-1)[:, None]  # (1, 1, 2H)
            return self.shift(cols), rows.expand(-1, num_keypoints, -1)

    # The TorchScript exporter needs only `onnx` (the dynamo one also needs onnxscript) and takes
    # 0.1 s; torch 2.13 flags it as legacy.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            DotFollower().eval(),
            (torch.zeros(1, 3, INPUT_H, INPUT_W),),
            str(path),
            input_names=["input"],
            output_names=["simcc_x", "simcc_y"],
            dynamo=False,
        )
    return path


@pytest.fixture(scope="module")
def dot_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    return export_dot_follower(tmp_path_factory.mktemp("dwpose") / "dot.onnx")


def dot_frame(dot: tuple[int, int], half: int, distractor: tuple[int, int]) -> np.ndarray:
    """Black 640x480 RGB frame: a red square (side 2 * half + 1) at `dot`, a blue one at
    `distractor`."""
    frame = np.zeros((480, 640, 3), dtype=np.uint8)
    x, y = dot
    frame[y - half : y + half + 1, x - half : x + half + 1, 0] = 255
    bx, by = distractor
    frame[by - 4 : by + 5, bx - 4 : bx + 5, 2] = 255
    return frame


def input_pixel_size(pose_box: tuple[float, float, float, float]) -> float:
    """Frame pixels per model input pixel for a pose box (mmpose: pad 1.25, then 3:4 aspect)."""
    w = (pose_box[2] - pose_box[0]) * 1.25
    h = (pose_box[3] - pose_box[1]) * 1.25
    return max(w, h * INPUT_W / INPUT_H) / INPUT_W


def expected_face_points(dot: tuple[int, int], px: float) -> np.ndarray:
    """(68, 2): landmark j of the tiny model at the dot, moved 3 * j input pixels left."""
    j = np.arange(68)
    return np.stack([dot[0] - SHIFT_PX * j * px, np.full(68, float(dot[1]))], axis=-1)


class FixedBoxes(FaceAnalyzer):
    """A detector that reports given boxes (the collaborator of the backend under test)."""

    name = "fixed"

    def __init__(self, boxes: list[tuple[float, float, float, float]]) -> None:
        self.boxes = boxes

    def detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return [(np.array(b, dtype=np.float64), 0.9) for b in self.boxes]


@pytest.mark.parametrize(
    ("face_box", "dot", "distractor"),
    [
        ((300, 150, 380, 250), (440, 200), (330, 320)),
        # Near the top-left corner: the head-and-shoulders box leaves the frame (black padding).
        ((20, 10, 100, 110), (160, 80), (60, 200)),
    ],
)
def test_dwpose_face_points_land_on_the_dot(
    dot_model: Path,
    face_box: tuple[int, int, int, int],
    dot: tuple[int, int],
    distractor: tuple[int, int],
) -> None:
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    analyzer = DWPoseAnalyzer(dot_model, detector=FixedBoxes([face_box]), download=False)
    frame = dot_frame(dot, half=0, distractor=distractor)
    lms = analyzer.landmarks(frame, [np.array(face_box, dtype=np.float64)])

    x1, y1, x2, y2 = face_box
    w, h = x2 - x1, y2 - y1  # documented default expansion: (1, 0.75, 1, 1.75) face sizes
    px = input_pixel_size((x1 - w, y1 - 0.75 * h, x2 + w, y2 + 1.75 * h))
    assert lms.shape == (1, 68, 2)
    # The input column/row nearest the one-pixel dot wins: within half an input pixel. An
    # off-by-one face slice would be SHIFT_PX input pixels off, a BGR input would follow the blue
    # square, a crop or decoding off by one input pixel would exceed the tolerance.
    np.testing.assert_allclose(lms[0], expected_face_points(dot, px), atol=0.5 * px + 0.01)


def test_dwpose_frame_mode_uses_the_whole_frame_like_musetalk(dot_model: Path) -> None:
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    analyzer = DWPoseAnalyzer(dot_model, detector=FixedBoxes([]), pose_box="frame", download=False)
    dot = (560, 150)
    frame = dot_frame(dot, half=2, distractor=(100, 400))
    # The face box is ignored: MuseTalk runs DWPose on the whole frame.
    lms = analyzer.landmarks(frame, [np.array([0.0, 0.0, 10.0, 10.0])])
    px = input_pixel_size((0, 0, 640, 480))
    np.testing.assert_allclose(lms[0], expected_face_points(dot, px), atol=2 + 0.5 * px)

    two = [np.array([0.0, 0.0, 10.0, 10.0]), np.array([20.0, 20.0, 40.0, 40.0])]
    with pytest.raises(ValueError, match="one person per frame"):
        analyzer.landmarks(frame, two)


def test_dwpose_call_detects_with_the_configured_detector(dot_model: Path) -> None:
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    boxes = [(300, 150, 380, 250), (40, 300, 60, 325)]
    analyzer = DWPoseAnalyzer(dot_model, detector=FixedBoxes(boxes), download=False)
    frame = dot_frame((440, 200), half=0, distractor=(330, 320))
    faces = analyzer([frame, frame])

    assert [len(f) for f in faces] == [2, 2]
    big = faces[0][0]  # largest face first
    np.testing.assert_array_equal(big.box, boxes[0])
    np.testing.assert_allclose(big.landmarks, analyzer.landmarks(frame, [big.box])[0])
    assert analyzer.landmarks(frame, []).shape == (0, 68, 2)

    settings = analyzer.settings
    json.dumps(settings)
    assert settings["detector"] == "fixed"
    assert settings["input_size"] == [INPUT_W, INPUT_H]
    assert settings["model_sha256"][:12] in analyzer.version


def test_dwpose_builds_its_detector_by_backend_name(dot_model: Path) -> None:
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    analyzer = DWPoseAnalyzer(dot_model, download=False)  # default detector: dlib
    assert analyzer.detector.name == "dlib"
    assert analyzer.settings["detector_version"] == analyzer.detector.version
    assert analyzer([np.zeros((120, 160, 3), dtype=np.uint8)]) == [[]]
    with pytest.raises(ValueError, match="another backend"):
        DWPoseAnalyzer(dot_model, detector="dwpose")


def test_dwpose_crop_input_normalises_rgb_and_pads_black() -> None:
    pytest.importorskip("cv2")
    from musetalk.face.backends.dwpose import crop_input

    frame = np.zeros((100, 100, 3), dtype=np.uint8)
    frame[:] = (200, 100, 50)
    # A region twice the frame's width around its centre: the input's sides show padding.
    crop = crop_input(frame, np.array([50.0, 50.0]), np.array([200.0, 266.67]), (288, 384))
    assert crop.shape == (384, 288, 3)
    mean = np.array([123.675, 116.28, 103.53])
    std = np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(crop[192, 144], (np.array([200, 100, 50]) - mean) / std, atol=1e-5)
    np.testing.assert_allclose(crop[192, 5], -mean / std, atol=1e-5)


def test_dwpose_rejects_models_without_wholebody_keypoints(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    body_only = export_dot_follower(tmp_path / "body17.onnx", num_keypoints=17)
    with pytest.raises(ValueError, match="133"):
        DWPoseAnalyzer(body_only, detector=FixedBoxes([]), download=False)


def test_dwpose_bad_options_and_devices(dot_model: Path) -> None:
    import onnxruntime

    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    with pytest.raises(ValueError, match="pose_box"):
        DWPoseAnalyzer(dot_model, detector=FixedBoxes([]), pose_box="person")
    with pytest.raises(ValueError, match="face_box_expand"):
        DWPoseAnalyzer(dot_model, detector=FixedBoxes([]), face_box_expand=(1, 1, 1))
    with pytest.raises(ValueError, match="device"):
        DWPoseAnalyzer(dot_model, detector=FixedBoxes([]), device="tpu")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            DWPoseAnalyzer(dot_model, detector=FixedBoxes([]), device="cuda")


def test_dwpose_missing_weights_say_where_and_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("onnxruntime")
    from musetalk.face.backends import dwpose

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    missing = tmp_path / "nowhere.onnx"
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        dwpose.DWPoseAnalyzer(missing, detector=FixedBoxes([]))
    with pytest.raises(FileNotFoundError, match="dwpose_onnx=") as off:
        dwpose.DWPoseAnalyzer(detector=FixedBoxes([]), download=False)
    assert str(tmp_path / "torch") in str(off.value)

    # A download that fails (nothing listens on this loopback port) names the URL and the option.
    url = "http://127.0.0.1:9/dw-ll_ucoco_384.onnx"
    monkeypatch.setattr(dwpose, "DWPOSE_URL", url)
    with pytest.raises(FileNotFoundError, match="dwpose_onnx=") as failed:
        dwpose.DWPoseAnalyzer(detector=FixedBoxes([]))
    assert url in str(failed.value)
    assert not list((tmp_path / "torch").rglob("*.onnx"))


def test_dwpose_without_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from musetalk.face.backends.dwpose import DWPoseAnalyzer

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"\.\[dwpose\]"):
        DWPoseAnalyzer("any.onnx", detector=FixedBoxes([]))


# ---------------------------------------------------------------------------------------------
# face-alignment (S3FD + FAN)

S3FD_BOX = (16.0, 32.0, 80.0, 96.0)
S3FD_LOGIT = 3.0


@pytest.fixture(scope="module")
def fan_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(s3fd, fan) state dicts of face-alignment's own architectures with known outputs.

    S3FD: all weights zero except its coarsest level (stride 128, anchors 512 px), where only the
    anchor at grid (1, 1) scores face logit 3 and every anchor regresses to S3FD_BOX.
    FAN: its last heatmap layer outputs a constant, so every landmark is the first heatmap bin.
    """
    pytest.importorskip("face_alignment")
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    folder = tmp_path_factory.mktemp("fan")
    torch.manual_seed(0)
    det = s3fd()
    with torch.no_grad():
        for p in det.parameters():
            p.zero_()
        det.conv7_2.bias[0] = 1.0  # a constant feature map of ones in channel 0
        det.conv7_2_mbox_conf.weight[1, 0, 0, 0] = S3FD_LOGIT  # top-left tap: only cell (1, 1)
        prior_c, prior_s = 64 + 128, 512.0  # anchor of cell (1, 1): centre 192, side 4 * 128
        x1, y1, x2, y2 = S3FD_BOX
        det.conv7_2_mbox_loc.bias.copy_(
            torch.tensor(
                [
                    ((x1 + x2) / 2 - prior_c) / (0.1 * prior_s),
                    ((y1 + y2) / 2 - prior_c) / (0.1 * prior_s),
                    math.log((x2 - x1) / prior_s) / 0.2,
                    math.log((y2 - y1) / prior_s) / 0.2,
                ]
            )
        )
    fan = FAN(4)
    with torch.no_grad():
        fan.l3.weight.zero_()
        fan.l3.bias.fill_(1.0)
    torch.save(det.state_dict(), folder / "s3fd.pth")
    torch.save(fan.state_dict(), folder / "2DFAN4.pth.tar")
    return folder / "s3fd.pth", folder / "2DFAN4.pth.tar"


@pytest.fixture(scope="module")
def fan_analyzer(fan_weights: tuple[Path, Path]) -> FaceAnalyzer:
    from musetalk.face.backends.fan import FanAnalyzer

    s3fd, fan = fan_weights
    return FanAnalyzer(s3fd_weights=s3fd, fan_weights=fan, download=False)


def first_bin_landmark(box: tuple[float, float, float, float]) -> np.ndarray:
    """(2,) frame pixel of FAN's first heatmap bin for a face box (face-alignment's crop rule).

    The crop is centred on the box, raised by 0.12 box heights, with side 200 * (w + h) / 195;
    heatmap bin centre 0.5 of 64 maps into it, and face-alignment truncates to whole pixels.
    """
    x1, y1, x2, y2 = box
    side = 200.0 * ((x2 - x1) + (y2 - y1)) / 195.0
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2 - 0.12 * (y2 - y1)])
    return np.trunc(centre - side / 2 + 0.5 * side / 64)


def test_fan_detect_reports_s3fd_boxes_and_probabilities(fan_analyzer: FaceAnalyzer) -> None:
    frame = np.zeros((128, 128, 3), dtype=np.uint8)
    found = fan_analyzer.detect(frame)
    assert len(found) == 1
    box, score = found[0]
    np.testing.assert_allclose(box, S3FD_BOX, atol=1e-3)
    assert score == pytest.approx(1 / (1 + math.exp(-S3FD_LOGIT)), abs=1e-5)


def test_fan_call_fits_landmarks_in_each_detected_box(fan_analyzer: FaceAnalyzer) -> None:
    frame = np.zeros((128, 128, 3), dtype=np.uint8)
    faces = fan_analyzer([frame])
    assert len(faces) == 1 and len(faces[0]) == 1
    face = faces[0][0]
    assert face.landmarks.shape == (68, 2)
    np.testing.assert_allclose(face.landmarks, np.tile(first_bin_landmark(S3FD_BOX), (68, 1)))

    boxes = [(60.0, 40.0, 120.0, 100.0), (0.0, 0.0, 30.0, 50.0)]
    lms = fan_analyzer.landmarks(frame, [np.array(b) for b in boxes])
    assert lms.shape == (2, 68, 2) and lms.dtype == np.float64
    for fitted, box in zip(lms, boxes, strict=True):
        np.testing.assert_allclose(fitted, np.tile(first_bin_landmark(box), (68, 1)))
    assert fan_analyzer.landmarks(frame, []).shape == (0, 68, 2)


def test_fan_settings_name_the_weights(
    fan_analyzer: FaceAnalyzer, fan_weights: tuple[Path, Path]
) -> None:
    from musetalk.files import sha256_file

    settings = fan_analyzer.settings
    json.dumps(settings)
    assert settings["s3fd_sha256"] == sha256_file(fan_weights[0])
    assert settings["fan_sha256"] == sha256_file(fan_weights[1])
    assert settings["fan_sha256"][:12] in fan_analyzer.version


def test_fan_missing_weights_say_where_and_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fan_weights: tuple[Path, Path]
) -> None:
    import face_alignment.api

    from musetalk.face.backends.fan import FanAnalyzer

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match="s3fd_weights=") as off:
        FanAnalyzer(download=False)
    assert str(tmp_path / "torch") in str(off.value)
    with pytest.raises(FileNotFoundError, match="elsewhere.pth"):
        FanAnalyzer(s3fd_weights=fan_weights[0], fan_weights=tmp_path / "elsewhere.pth")

    url = "http://127.0.0.1:9/2DFAN4-11f355bf06.pth.tar"  # nothing listens: download fails
    monkeypatch.setitem(face_alignment.api.models_urls, "2DFAN-4", url)
    with pytest.raises(FileNotFoundError, match="fan_weights=") as failed:
        FanAnalyzer(s3fd_weights=fan_weights[0])
    assert url in str(failed.value)


def test_fan_without_face_alignment_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from musetalk.face.backends.fan import FanAnalyzer

    monkeypatch.setitem(sys.modules, "face_alignment", None)
    with pytest.raises(ImportError, match=r"\.\[fan\]"):
        FanAnalyzer()
