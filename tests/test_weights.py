"""`python -m musetalk.weights`: `check` on a real (tiny) released layout and on broken copies of
it, `download` without network, where each file goes, and the hint every MissingWeightsError
ends with. The weights are tiny random models saved with the real classes (tests/tiny_models.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_models import save_released_layout

from musetalk.errors import WEIGHTS_HINT, MissingWeightsError
from musetalk.files import hub_cache_path
from musetalk.inference.weights import released_files
from musetalk.weights import main, registry, select

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("released") / "models"
    save_released_layout(root)
    return root


@pytest.fixture
def models(released: Path, tmp_path: Path) -> Path:
    """A copy of the released layout this test may break."""
    return Path(shutil.copytree(released, tmp_path / "models"))


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache and no hub access, for in-process runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "torch"


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TORCH_HOME": str(home / "torch"),
        "HF_HOME": str(home / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "musetalk.weights", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def rows(text: str) -> dict[str, str]:
    """Table row text by weight-set name."""
    return {line.split()[0]: line for line in text.splitlines() if line.strip()}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`main(args)` in this process: exit code, stdout, stderr."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_passes_on_the_released_layout(released: Path, tmp_path: Path) -> None:
    done = cli("check", "--dir", str(released), home=tmp_path)
    assert done.returncode == 0, done.stderr
    table = rows(done.stdout)
    assert table["name"].split() == ["name", "path", "status", "license"]
    for name, where in (
        ("unet-v15", "musetalkV15"),
        ("sd-vae", "sd-vae"),
        ("whisper-tiny", "whisper"),
    ):
        assert str(released / where) in table[name] and " ok " in table[name]
    assert "MIT" in table["sd-vae"] and "OpenRAIL-M" in table["unet-v15"]
    assert "all 3 ok" in done.stdout and "Traceback" not in done.stderr


def test_check_names_a_missing_file(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (models / "whisper" / "preprocessor_config.json").unlink()
    code, out, err = run(capsys, "check", "--dir", str(models))
    assert code == 1
    assert "missing: preprocessor_config.json" in rows(out)["whisper-tiny"]
    assert " ok " in rows(out)["unet-v15"] and " ok " in rows(out)["sd-vae"]
    assert f"download --what inference --dir {models}" in err.strip().splitlines()[-1]

    shutil.rmtree(models)
    code, out, _ = run(capsys, "check", "--dir", str(models))
    assert code == 1 and "missing: unet.pth, musetalk.json" in rows(out)["unet-v15"]


@pytest.mark.parametrize(
    ("file", "name"),
    [
        ("musetalkV15/unet.pth", "unet-v15"),
        ("sd-vae/diffusion_pytorch_model.safetensors", "sd-vae"),
        ("whisper/model.safetensors", "whisper-tiny"),
    ],
)
def test_check_names_a_truncated_file(
    models: Path, capsys: pytest.CaptureFixture[str], file: str, name: str
) -> None:
    path = models / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, out, err = run(capsys, "check", "--dir", str(models))
    assert code == 1
    assert f"damaged: {Path(file).name}" in rows(out)[name]
    assert sum(" ok " in line for line in out.splitlines()) == 2
    assert err.strip().splitlines()[-1].endswith("--force")


def test_check_finds_an_empty_file(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (models / "musetalkV15" / "musetalk.json").write_bytes(b"")
    code, out, _ = run(capsys, "check", "--dir", str(models))
    assert code == 1 and "damaged: musetalk.json: empty file (0 bytes)" in rows(out)["unet-v15"]


def test_check_matches_unet_shapes_to_its_config(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = models / "musetalkV15" / "musetalk.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "block_out_channels": [32, 96]}))
    code, out, _ = run(capsys, "check", "--dir", str(models))
    assert code == 1
    row = rows(out)["unet-v15"]
    assert "damaged: unet.pth" in row and "does not match the UNet config" in row
    assert "wrong shapes" in row


class RunsCode:
    """Pickles as a call of exec: unpickling it would create `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize(
    ("what", "file"), [("inference", "musetalkV15/unet.pth"), ("eval", "syncnet/syncnet_v2.model")]
)
def test_check_refuses_pickled_objects_without_running_them(
    models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, file: str
) -> None:
    marker = tmp_path / "ran"
    path = models / file
    path.parent.mkdir(exist_ok=True)
    torch.save({"conv.weight": torch.zeros(2), "extra": RunsCode(marker)}, path)
    code, out, _ = run(capsys, "check", "--dir", str(models), "--what", what)
    assert code == 1 and not marker.exists()
    row = rows(out)[{"inference": "unet-v15", "eval": "syncnet-v2"}[what]]
    assert f"damaged: {Path(file).name}: refused" in row and "(it holds exec)" in row


def test_check_face_weights_in_the_torch_hub_cache(
    offline_torch_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = offline_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"conv1_1.weight": torch.zeros(3)}, cache / "s3fd-619a316812.pth")
    (cache / "dw-ll_ucoco_384.onnx").write_bytes(b"not an onnx model")
    code, out, _ = run(capsys, "check", "--what", "face")
    assert code == 1
    table = rows(out)
    assert str(cache / "s3fd-619a316812.pth") in table["s3fd"]
    assert "damaged: s3fd-619a316812.pth: tensors do not match the network" in table["s3fd"]
    assert "missing: 2DFAN4-11f355bf06.pth.tar" in table["fan-2d"]
    assert "damaged: dw-ll_ucoco_384.onnx" in table["dwpose"]


def test_download_offline_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out" / "models"
    done = cli("download", "--dir", str(target), home=tmp_path / "home")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("weights: could not download ")
    assert "musetalkV15/unet.pth" in lines[0] and "huggingface.co/TMElyralab/MuseTalk" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_download_keeps_files_that_are_present(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()}
    code, out, _ = run(capsys, "download", "--dir", str(models))
    assert code == 0 and out.count("ok, kept") == 3
    assert "whisper-tiny: infer.py reads it from models_dir" in out
    assert {p: p.stat().st_mtime_ns for p in models.rglob("*") if p.is_file()} == before

    broken = models / "whisper" / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])
    code, out, err = run(capsys, "download", "--dir", str(models))
    assert code == 1 and "not replaced (rerun with --force" in out
    assert broken.stat().st_size == 100 and err.strip().endswith("--force")


def test_download_from_a_url_renames_a_complete_file(tmp_path: Path) -> None:
    """The real download path (torch.hub.download_url_to_file) on a file:// URL in place of
    syncnet_v2's: the file lands where eval.py's option points, is checked, nothing else stays."""
    from musetalk.errors import DownloadError
    from musetalk.eval.syncnet import SyncNetV2
    from musetalk.weights import FileSpec, check_set, download_set

    source = tmp_path / "published" / "syncnet_v2.model"
    source.parent.mkdir()
    torch.save(SyncNetV2().state_dict(), source)
    (syncnet,) = select("eval")
    local = replace(syncnet, files=(FileSpec("syncnet_v2.model", source.as_uri()),))
    models = tmp_path / "models"
    status = download_set(local, models, force=False)
    assert status.ok and status.path == models / "syncnet" / "syncnet_v2.model"
    assert [p.name for p in (models / "syncnet").iterdir()] == ["syncnet_v2.model"]
    assert download_set(local, models, force=False).ok  # present and loadable: kept

    gone = replace(syncnet, files=(FileSpec("syncnet_v2.model", (tmp_path / "no").as_uri()),))
    with pytest.raises(DownloadError, match="could not download .*syncnet_v2.model from file:"):
        download_set(gone, tmp_path / "other", force=False)
    assert not (tmp_path / "other").exists()
    assert check_set(gone, tmp_path / "other").state == "missing"


def test_face_parsing_is_a_manual_step_then_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    models = tmp_path / "models"
    code, out, err = run(capsys, "download", "--what", "parsing", "--dir", str(models))
    target = models / "face-parse-bisent" / "79999_iter.onnx"
    assert code == 1 and "no automatic download" in out and str(target) in out
    assert "manual step" in err and not models.exists()

    # any ONNX with an image input opens (FaceParsing checks the logits when it runs)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    target.parent.mkdir(parents=True)
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), target
    )
    code, out, _ = run(capsys, "check", "--what", "parsing", "--dir", str(models))
    assert code == 0 and " ok " in rows(out)["face-parsing"]
    target.write_bytes(target.read_bytes()[:10])
    code, out, _ = run(capsys, "check", "--what", "parsing", "--dir", str(models))
    assert code == 1 and "damaged: 79999_iter.onnx" in rows(out)["face-parsing"]


def test_every_file_goes_where_the_code_looks(tmp_path: Path) -> None:
    from musetalk.face.backends.dwpose import DWPOSE_URL
    from musetalk.losses.perceptual import VGG19_URL
    from musetalk.losses.sync import LATENTSYNC_SYNCNET_URL

    fa_api = pytest.importorskip("face_alignment.api")
    from face_alignment.detection.sfd.sfd_detector import models_urls as s3fd_urls

    code_urls = {
        "vgg19": VGG19_URL,
        "latentsync-syncnet": LATENTSYNC_SYNCNET_URL,
        "dwpose": DWPOSE_URL,
        "s3fd": s3fd_urls["s3fd"],
        "fan-2d": fa_api.models_urls["2DFAN-4"],
    }
    sets = {w.name: w for w in registry()}
    for name, url in code_urls.items():
        assert sets[name].targets(tmp_path) == [hub_cache_path(url)], name
    released = released_files.__module__
    assert released == "musetalk.inference.weights"
    assert sets["unet-v15"].targets(tmp_path) == [
        tmp_path / "musetalkV15" / "unet.pth",
        tmp_path / "musetalkV15" / "musetalk.json",
    ]
    assert [w.name for w in select("inference")] == ["unet-v15", "sd-vae", "whisper-tiny"]
    assert {w.name for w in select("all")} == set(sets)
    for w in sets.values():
        assert w.license and w.used_for and w.use and all(f.remote for f in w.files)


def test_list_names_sources_and_places(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--dir", "models")
    assert code == 0
    assert (
        "huggingface.co/stabilityai/sd-vae-ft-mse config.json -> models/sd-vae/config.json" in out
    )
    assert "eval.py syncnet=models/syncnet/syncnet_v2.model" in out
    assert "no automatic download" in out


def test_missing_weights_errors_end_with_the_command(tmp_path: Path, released: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        released_files(tmp_path / "nowhere")
    text = str(err.value)
    assert text.startswith(f"models directory not found: {tmp_path / 'nowhere'}")
    assert text.endswith(WEIGHTS_HINT) and "python -m musetalk.weights download" in text

    broken = Path(shutil.copytree(released, tmp_path / "models"))
    (broken / "sd-vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(MissingWeightsError) as err:  # re-raised with the layout added
        released_files(broken)
    text = str(err.value)
    assert text.count(WEIGHTS_HINT) == 1 and text.endswith(WEIGHTS_HINT)
    assert "diffusion_pytorch_model" in text and "released layout" in text
