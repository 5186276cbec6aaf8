"""Every weight file the project can use (what uses it, source, license, place), and
`python -m musetalk.weights download|check|list [--dir models] [--what GROUP]`.

Files go where the code looks by default: MuseTalk's released layout under `--dir`, or the torch
hub cache (`files.hub_cache_path`); files the code only takes as an option (eval.py `syncnet=`,
the face-parsing ONNX) go under `--dir`, and `download` prints the option to pass. `check`
(offline) loads every file as the code does, never unpickling objects (safetensors or
weights-only torch.load; ONNX via onnxruntime when installed, else size only), matching tensors
to their configs with the project's loaders. `download` writes to a temporary name and renames
it when complete; a present file is replaced only when it fails the check and `--force` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musetalk.errors import CheckpointError, DownloadError, MuseTalkError, user_errors

GROUPS = ("inference", "v1", "training", "eval", "face", "parsing", "all")
DEFAULT_DIR = "models"

# face-alignment's own URLs (the fan backend reads them from that package; a test compares).
S3FD_URL = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"
FAN_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
SYNCNET_V2_URL = "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
FACE_PARSING_SOURCE = "https://drive.google.com/open?id=154JgKpzCPW82qINcVieuPH3fZ2e0P812"


class Damaged(Exception):
    """A present file that does not load (or does not match its config): `reason` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class FileSpec:
    """One file: `local` under the set's place, `remote` its path in the HF repo or its URL,
    `accepts` other local names that serve instead (e.g. a .bin for a .safetensors)."""

    local: str
    remote: str
    accepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightSet:
    """Files that are used together.

    repo: Hugging Face repo id (files' `remote` are paths in it); None: `remote` is a URL.
    subdir: place under `--dir`; None: the torch hub cache. use: how the code finds the files.
    verify: loads the present files (in `files` order), raising `Damaged`; may return a note.
    manual: set when there is no automatic download: what to do instead.
    """

    name: str
    used_for: str
    groups: tuple[str, ...]
    license: str
    files: tuple[FileSpec, ...]
    repo: str | None = None
    subdir: str | None = None
    use: str = ""
    verify: Callable[[list[Path]], str | None] | None = None
    manual: str = ""

    def root(self, models_dir: str | os.PathLike[str]) -> Path:
        if self.subdir is None:
            import torch.hub

            return Path(torch.hub.get_dir()) / "checkpoints"
        return Path(models_dir).expanduser() / self.subdir

    def targets(self, models_dir: str | os.PathLike[str]) -> list[Path]:
        """Where each file goes."""
        return [self.root(models_dir) / f.local for f in self.files]

    def source(self, spec: FileSpec) -> str:
        return f"huggingface.co/{self.repo} {spec.remote}" if self.repo else spec.remote

    def where(self, models_dir: str | os.PathLike[str]) -> Path:
        """The file, or the directory holding the files (the table's path column)."""
        targets = self.targets(models_dir)
        return targets[0] if len(targets) == 1 else Path(os.path.commonpath(targets))


# --- Checks: each step that fails becomes Damaged(file, reason) ---


def _reason(exc: BaseException, path: Path) -> str:
    """One short line: the exception's first line without the path it starts with."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    for prefix in (f"{path}: ", f"{path} "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if not isinstance(exc, MuseTalkError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 150 else text[:147] + "..."


def _step(path: Path, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(*args, **kwargs); any failure (but running out of memory) is `path` being damaged."""
    try:
        return fn(*args, **kwargs)
    except (Damaged, MemoryError):
        raise
    except Exception as exc:
        raise Damaged(path, _reason(exc, path)) from None


def _tensors(path: Path) -> dict[str, Any]:
    """The file's tensors, read safely (`models.unet.read_weights`); a Lightning-style
    {"state_dict": ...} is unwrapped."""
    import torch

    from musetalk.models.unet import read_weights

    state = _step(path, read_weights, path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Damaged(path, "not a state dict of tensors")
    return state


def _match(path: Path, own: dict[str, Any], state: dict[str, Any]) -> None:
    """Damaged unless `state` has exactly the keys and shapes of `own` (a module's state dict)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    found = {"missing": missing, "unexpected": unexpected, "wrong shapes": wrong}
    problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in found.items() if keys]
    if problems:
        raise Damaged(path, "tensors do not match the network: " + "; ".join(problems))


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers / diffusers without their info logs and progress bars."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    levels = tlog.get_verbosity(), dlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled(), dlog.is_progress_bar_enabled()
    tlog.set_verbosity_error(), dlog.set_verbosity_error()
    tlog.disable_progress_bar(), dlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(levels[0]), dlog.set_verbosity(levels[1])
        for module, enabled in zip((tlog, dlog), bars, strict=True):
            (module.enable_progress_bar if enabled else module.disable_progress_bar)()


def _from_pretrained(cls: Any, directory: Path, **kwargs: Any) -> None:
    """`cls.from_pretrained(directory)` as the code loads it; missing or misshaped tensors are
    an error (extra tensors, e.g. a decoder nothing uses, are not)."""
    with _quiet():
        _model, info = cls.from_pretrained(str(directory), output_loading_info=True, **kwargs)
    problems = [
        f"{len(info[key])} {key.replace('_', ' ')} (e.g. {sorted(map(str, info[key]))[0]})"
        for key in ("missing_keys", "mismatched_keys")
        if info.get(key)
    ]
    problems += [str(m).splitlines()[0] for m in info.get("error_msgs") or []]
    if problems:
        raise CheckpointError("; ".join(problems))


def verify_unet(paths: list[Path]) -> None:
    """musetalk.json builds a UNet; the weights load strictly into it (`models.unet`)."""
    import torch

    from musetalk.models.unet import build_unet, load_unet, read_unet_config

    weights, config_path = paths
    config = _step(config_path, read_unet_config, config_path)
    with torch.device("meta"):  # the config must build a UNet (no memory used)
        _step(config_path, build_unet, config)
    _step(weights, load_unet, weights, config)


def verify_vae(paths: list[Path]) -> None:
    """A diffusers AutoencoderKL dir (`models.vae.check_vae_dir`), loaded as `load_vae` does."""
    from diffusers import AutoencoderKL

    from musetalk.models.vae import check_vae_dir

    config, weights = paths
    _step(config, check_vae_dir, config.parent)
    _step(config, AutoencoderKL.load_config, str(config.parent))
    _tensors(weights)  # a clear reason, and pickled objects refused before diffusers reads it
    _step(weights, _from_pretrained, AutoencoderKL, config.parent)


def verify_whisper(paths: list[Path]) -> None:
    """An HF Whisper dir (`audio.whisper.check_whisper_dir`), loaded as `WhisperEncoder` does."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    from musetalk.audio.whisper import check_whisper_dir

    config, preprocessor, weights = paths
    root = config.parent
    _step(config, check_whisper_dir, root)
    with _quiet():
        _step(config, WhisperConfig.from_pretrained, str(root), local_files_only=True)
        _step(
            preprocessor, WhisperFeatureExtractor.from_pretrained, str(root), local_files_only=True
        )
    _tensors(weights)
    _step(weights, _from_pretrained, WhisperModel, root, weights_only=True, local_files_only=True)


def torch_verifier(load: Callable[[Path], Any]) -> Callable[[list[Path]], None]:
    """Safe read of a torch file, then the project's loader `load(path)`."""

    def verify(paths: list[Path]) -> None:
        (path,) = paths
        _tensors(path)
        _step(path, load, path)

    return verify


def _face_alignment_net(kind: str) -> Any:
    if kind == "s3fd":
        from face_alignment.detection.sfd.net_s3fd import s3fd

        return s3fd()
    from face_alignment.models import FAN

    return FAN(4)  # 2DFAN-4, as face-alignment builds it


def face_alignment_verifier(kind: str) -> Callable[[list[Path]], str | None]:
    """Safe load of an S3FD ("s3fd") or FAN ("fan") state dict; shapes checked against
    face-alignment's network when that package is installed."""

    def verify(paths: list[Path]) -> str | None:
        (path,) = paths
        state = _tensors(path)
        try:
            net = _face_alignment_net(kind)
        except ImportError:
            return "tensors read; shapes not checked: face-alignment is not installed"
        _match(path, net.state_dict(), state)
        return None

    return verify


def onnx_verifier(parsing: bool) -> Callable[[list[Path]], str | None]:
    """An ONNX file opened with onnxruntime (DWPose: 4-d input, >= 2 outputs; face parsing:
    `face.blend.FaceParsing`); without onnxruntime only its presence and size are known."""

    def verify(paths: list[Path]) -> str | None:
        (path,) = paths
        try:
            import onnxruntime as ort
        except ImportError:
            return f"{path.stat().st_size} bytes; not loaded: onnxruntime is not installed"
        if parsing:
            from musetalk.face.blend import FaceParsing

            _step(path, FaceParsing, path)
            return None
        session = _step(path, ort.InferenceSession, str(path), providers=["CPUExecutionProvider"])
        shape, outputs = session.get_inputs()[0].shape, session.get_outputs()
        if len(shape) != 4 or len(outputs) < 2:
            raise Damaged(
                path,
                f"not DWPose's wholebody model: input {shape}, {len(outputs)} outputs "
                "(expected (1, 3, 384, 288) and simcc_x, simcc_y)",
            )
        return None

    return verify


# --- The registry: names and places as the code that reads the files has them ---

_USED_FOR = {
    "unet-v15": "MuseTalk 1.5 UNet (inference; model.init_unet to fine-tune)",
    "unet-v1": "MuseTalk 1.0 UNet (inference version=v1; optional)",
    "sd-vae": "VAE sd-vae-ft-mse (inference; training, frozen)",
    "whisper-tiny": "Whisper-tiny encoder, audio features (inference; training)",
    "vgg19": "VGG19 perceptual loss (training)",
    "latentsync-syncnet": "LatentSync SyncNet, sync loss (training stage 2)",
    "syncnet-v2": "SyncNet v2, LSE-C / LSE-D (eval.py)",
    "s3fd": "S3FD face detector (face=fan)",
    "fan-2d": "FAN 2D 68 landmarks (face=fan)",
    "dwpose": "DWPose-l wholebody landmarks, ONNX (face=dwpose)",
    "face-parsing": "BiSeNet face parsing, ONNX (infer.py blend.mode=parsing)",
}
_MUSETALK = "CreativeML OpenRAIL-M (HF card; README: any use)"
_LICENSE = {
    "unet-v15": _MUSETALK,
    "unet-v1": _MUSETALK,
    "sd-vae": "MIT",
    "whisper-tiny": "Apache-2.0 (HF card; openai/whisper: MIT)",
    "vgg19": "BSD-3-Clause (torchvision; trained on ImageNet)",
    "latentsync-syncnet": "OpenRAIL++ (HF card; LatentSync code: Apache-2.0)",
    "syncnet-v2": "MIT (joonson/syncnet_python)",
    "s3fd": "BSD-3-Clause (1adrianb/face-alignment)",
    "fan-2d": "BSD-3-Clause (1adrianb/face-alignment)",
    "dwpose": "Apache-2.0 (IDEA-Research/DWPose, HF card)",
    "face-parsing": "MIT (zllrunning/face-parsing.PyTorch)",
}
_USE = {
    "unet-v15": "infer.py models_dir=<dir> (version=v15, the default)",
    "unet-v1": "infer.py models_dir=<dir> version=v1",
    "sd-vae": "infer.py reads it from models_dir; train.py: model.vae.source=<path>",
    "whisper-tiny": "infer.py reads it from models_dir; train.py: model.whisper.model=<path>",
    "vgg19": "losses.perceptual.weights=null reads it from the torch hub cache",
    "latentsync-syncnet": "losses.sync.weights=null reads it from the torch hub cache",
    "syncnet-v2": "eval.py syncnet=<path>",
    "s3fd": "face=fan reads it from the torch hub cache (or face.s3fd_weights=<path>)",
    "fan-2d": "face=fan reads it from the torch hub cache (or face.fan_weights=<path>)",
    "dwpose": "face=dwpose reads it from the torch hub cache (or face.dwpose_onnx=<path>)",
    "face-parsing": "infer.py blend.mode=parsing blend.parsing_model=<path>",
}
_PARSING_MANUAL = (
    "no automatic download: export the BiSeNet 79999_iter.pth of zllrunning/face-parsing."
    "PyTorch (Google Drive link in its README) to ONNX with its code and save it as <path>"
)


def _set(name: str, groups: tuple[str, ...], files: tuple[FileSpec, ...], *rest: Any) -> WeightSet:
    """WeightSet `name` with its texts; rest: repo, subdir, verify, manual (defaults None, "")."""
    defaults = (None, None, None, "")
    repo, subdir, verify, manual = (*rest, *defaults[len(rest) :])
    about = _USED_FOR[name], groups, _LICENSE[name], files, repo, subdir, _USE[name]
    return WeightSet(name, *about, verify=verify, manual=manual)


def _same(*names: str, accepts: tuple[str, ...] = ()) -> tuple[FileSpec, ...]:
    """Files with the same path here and in their HF repo (`accepts` for the last one)."""
    return tuple(
        FileSpec(n, n, accepts if i == len(names) - 1 else ()) for i, n in enumerate(names)
    )


def registry() -> list[WeightSet]:
    """Every weight set the project can use."""
    from musetalk.eval.syncnet import SyncNetV2
    from musetalk.face.backends.dwpose import DWPOSE_URL
    from musetalk.files import hub_cache_path
    from musetalk.inference.weights import RELEASED_UNET
    from musetalk.losses.perceptual import VGG19_URL, VGG19Features
    from musetalk.losses.sync import LATENTSYNC_SYNCNET_URL, load_syncnet
    from musetalk.models.unet import CONFIG_NAME

    def hub(url: str, remote: str | None = None) -> tuple[FileSpec, ...]:
        return (FileSpec(hub_cache_path(url).name, remote or url),)

    unets = {v: _same(f"{s}/{n}", f"{s}/{CONFIG_NAME}") for v, (s, n) in RELEASED_UNET.items()}
    vae_weights = ("diffusion_pytorch_model.bin",)
    vae = _same("config.json", "diffusion_pytorch_model.safetensors", accepts=vae_weights)
    whisper_files = "config.json", "preprocessor_config.json", "model.safetensors"
    whisper = _same(*whisper_files, accepts=("pytorch_model.bin",))
    syncnet_v2 = (FileSpec("syncnet_v2.model", SYNCNET_V2_URL),)
    parsing = (FileSpec("79999_iter.onnx", FACE_PARSING_SOURCE),)
    muse, both, onnx = "TMElyralab/MuseTalk", ("inference", "training"), onnx_verifier
    latentsync, manual = hub(LATENTSYNC_SYNCNET_URL, "latentsync_syncnet.pt"), _PARSING_MANUAL
    dwpose, sync = hub(DWPOSE_URL, "dw-ll_ucoco_384.onnx"), torch_verifier(load_syncnet)

    def vgg19(path: Path) -> Any:
        return VGG19Features().load_torchvision(path)

    return [
        _set("unet-v15", ("inference",), unets["v15"], muse, "", verify_unet),
        _set("unet-v1", ("v1",), unets["v1"], muse, "", verify_unet),
        _set("sd-vae", both, vae, "stabilityai/sd-vae-ft-mse", "sd-vae", verify_vae),
        _set("whisper-tiny", both, whisper, "openai/whisper-tiny", "whisper", verify_whisper),
        _set("vgg19", ("training",), hub(VGG19_URL), None, None, torch_verifier(vgg19)),
        _set("latentsync-syncnet", ("training",), latentsync, "ByteDance/LatentSync", None, sync),
        _set("syncnet-v2", ("eval",), syncnet_v2, None, "syncnet", torch_verifier(SyncNetV2.load)),
        _set("s3fd", ("face",), hub(S3FD_URL), None, None, face_alignment_verifier("s3fd")),
        _set("fan-2d", ("face",), hub(FAN_URL), None, None, face_alignment_verifier("fan")),
        _set("dwpose", ("face",), dwpose, "yzd-v/DWPose", None, onnx(False)),
        _set("face-parsing", ("parsing",), parsing, None, "face-parse-bisent", onnx(True), manual),
    ]


def select(what: str) -> list[WeightSet]:
    """The weight sets of a group ("all": every one)."""
    if what not in GROUPS:
        raise MuseTalkError(f"unknown group {what!r}; expected one of {', '.join(GROUPS)}")
    return [w for w in registry() if what == "all" or what in w.groups]


# --- check ---


@dataclass(frozen=True)
class Status:
    """One weight set's state: "ok", "missing" or "damaged"; `detail` names the file(s)."""

    weights: WeightSet
    path: Path
    state: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def text(self) -> str:
        if self.ok:
            return f"ok ({self.detail})" if self.detail else "ok"
        return f"{self.state}: {self.detail}"


def _present(root: Path, spec: FileSpec) -> Path | None:
    """The file (or an accepted alternative) when it exists."""
    return next((root / n for n in (spec.local, *spec.accepts) if (root / n).is_file()), None)


def check_set(weights: WeightSet, models_dir: str | os.PathLike[str]) -> Status:
    """Whether every file of `weights` is present and loads (offline)."""
    root, where = weights.root(models_dir), weights.where(models_dir)

    def shown(path: Path) -> str:
        return os.path.relpath(path, where) if path != where else path.name

    found = [_present(root, spec) for spec in weights.files]
    missing = [t for t, p in zip(weights.targets(models_dir), found, strict=True) if p is None]
    if missing:
        return Status(weights, where, "missing", ", ".join(shown(p) for p in missing))
    paths = [p for p in found if p is not None]
    try:
        for path in paths:
            if path.stat().st_size == 0:
                raise Damaged(path, "empty file (0 bytes)")
        note = weights.verify(paths) if weights.verify else None
    except Damaged as exc:
        return Status(weights, where, "damaged", f"{shown(exc.path)}: {exc.reason}")
    return Status(weights, where, "ok", note or "")


def format_table(statuses: Sequence[Status]) -> str:
    """name | path | status | license, one row per weight set."""
    rows = [("name", "path", "status", "license")]
    rows += [(s.weights.name, str(s.path), s.text(), s.weights.license) for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )


# --- download ---


def _fetch(weights: WeightSet, spec: FileSpec, target: Path) -> None:
    """Download one file to a temporary directory beside `target`, then rename it into place;
    a failure leaves nothing behind (also no directory this call created)."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".download", dir=target.parent))
    try:
        if weights.repo:
            from huggingface_hub import hf_hub_download

            got = Path(hf_hub_download(weights.repo, spec.remote, local_dir=temp))
        else:
            import torch.hub

            got = temp / target.name
            torch.hub.download_url_to_file(spec.remote, str(got), progress=True)
        os.replace(got, target)
    except Exception as exc:  # network, HTTP, hub and file errors alike: one line, no traceback
        if created:  # the outermost directory this call made
            shutil.rmtree(created[-1], ignore_errors=True)
        raise DownloadError(
            f"could not download {target} from {weights.source(spec)} ({_reason(exc, target)})"
        ) from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def download_set(weights: WeightSet, models_dir: str | os.PathLike[str], force: bool) -> Status:
    """Fetch the missing files of `weights` (with `force` also those of a set that fails the
    check); files that are present and load are never touched."""
    status = check_set(weights, models_dir)
    if status.ok:
        print(f"{weights.name}: ok, kept {status.path}")
        return status
    if weights.manual:
        print(f"{weights.name}: {_fill(weights.manual, weights, str(models_dir))}")
        return status
    if status.state == "damaged" and not force:
        print(f"{weights.name}: {status.text()}; not replaced (rerun with --force to replace it)")
        return status
    root = weights.root(models_dir)
    for spec, target in zip(weights.files, weights.targets(models_dir), strict=True):
        if status.state == "damaged" or _present(root, spec) is None:
            print(f"{weights.name}: {weights.source(spec)} -> {target}")
            _fetch(weights, spec, target)
    return check_set(weights, models_dir)


# --- command line ---


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m musetalk.weights",
        description="Download and check the weight files musetalk uses (see `list`).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "download": "fetch the missing files of a group (network)",
        "check": "verify the files of a group: present, loadable, shapes match (offline)",
        "list": "what uses each file, its source, license and place",
    }
    for name, text in helps.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--dir", default=DEFAULT_DIR, help="models directory (models)")
        command.add_argument(
            "--what",
            choices=GROUPS,
            default="inference" if name != "list" else "all",
            help="inference (default: UNet 1.5, VAE, Whisper), v1 (UNet 1.0), training, eval, "
            "face, parsing, all",
        )
        if name == "download":
            command.add_argument("--force", action="store_true", help="replace damaged files")
    return parser


def _list(sets: Sequence[WeightSet], models_dir: str) -> None:
    for w in sets:
        print(f"{w.name} [{', '.join(w.groups)}]: {w.used_for}; license: {w.license}")
        for spec, target in zip(w.files, w.targets(models_dir), strict=True):
            print(f"  {w.source(spec)} -> {target}")
        print(f"  {_fill(w.manual or w.use, w, models_dir)}")


def _fill(text: str, weights: WeightSet, models_dir: str) -> str:
    return text.replace("<path>", str(weights.where(models_dir))).replace("<dir>", models_dir)


def _verdict(statuses: Sequence[Status], args: argparse.Namespace) -> int:
    print(format_table(statuses))
    bad = [s for s in statuses if not s.ok]
    if not bad:
        print(f"all {len(statuses)} ok")
        if args.command == "download":
            for s in statuses:
                print(f"{s.weights.name}: {_fill(s.weights.use, s.weights, args.dir)}")
        return 0
    command = (
        f"python -m musetalk.weights download --what {args.what} --dir {shlex.quote(args.dir)}"
    )
    if any(s.state == "damaged" for s in bad):
        command += " --force"
    names = ", ".join(s.weights.name for s in bad)
    manual = [s.weights.name for s in bad if s.weights.manual]
    extra = f" ({', '.join(manual)}: manual step, see `list`)" if manual else ""
    print(
        f"weights: {len(bad)} of {len(statuses)} not ok ({names}); run: {command}{extra}",
        file=sys.stderr,
    )
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with user_errors("weights"):
        sets = select(args.what)
        if args.command == "list":
            _list(sets, args.dir)
            return 0
        if args.command == "check":
            return _verdict([check_set(w, args.dir) for w in sets], args)
        return _verdict([download_set(w, args.dir, args.force) for w in sets], args)
    return 1  # not reached: user_errors exits


if __name__ == "__main__":
    raise SystemExit(main())
