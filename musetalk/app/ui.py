"""The gradio page of `python app.py` (the only module that imports gradio).

Tab "Lip-sync": 1. Preview (API `/preview`): the chosen frame with landmarks 28/29/30, the
training and inference boxes and the mask boundary, the masked crop the UNet sees, and the range
/ auto / current bbox_shift as text; the sliders redraw it from the cached tracking. 2. Generate
(API `/generate`): the lip-synced mp4 and its sidecar json, one generation at a time per device.
Tab "Statistics" (API `/statistics`): the notebook's plots of a preprocess output.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from musetalk.app import require_gradio
from musetalk.app.backend import AppBackend
from musetalk.app.settings import AppConfig
from musetalk.app.statistics import statistics
from musetalk.errors import MuseTalkError

__all__ = ["build_app", "devices", "serve"]

log = logging.getLogger(__name__)

CONTROLS = """\
**1. Preview** tracks the face once per upload and shows the chosen frame: landmarks (nose
28/29/30 in magenta), the training box (blue), the inference box (red) and the mask boundary
(white line at landmark 29 + bbox_shift), and the 256x256 crop the UNet sees with its lower
half masked. Move **bbox_shift** (bounded by the video's adjustable range: boundary from
landmark 28 to 30) or tick **auto** (where the model's training data had the boundary): the
preview redraws without tracking again. A positive bbox_shift moves the boundary down (more
mouth motion), a negative one up (more detail kept). **2. Generate** lip-syncs the video to
the audio with these settings; another audio on the same video reuses the prepared avatar.
"""

#: Largest |bbox_shift| accepted before a video is tracked (the geometric limits clip it).
SHIFT_BOUND = 400
#: Largest frame index accepted before a video is tracked.
FRAME_BOUND = 100_000

TINY_NOTE = (
    "**infer_model=tiny: random weights.** The page works offline, but the generated mouth "
    "is noise; start with `infer_model=released models_dir=...` (or `export`) for real results."
)


def devices(default: str) -> list[str]:
    """The devices offered: the configured one, cpu and every CUDA device."""
    import torch

    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [default] + [d for d in found if d != default]


def model_line(config: AppConfig) -> str:
    """The model source as infer.py's settings say it."""
    source = config.infer_model
    if source.layout == "tiny":
        return f"infer_model=tiny infer_model.seed={source.seed} (random weights)"
    words = [f"infer_model={source.layout}", f"models_dir={config.models_dir}"]
    if source.layout == "released":
        words.append(f"version={config.version}")
    words += [
        f"infer_model.{k}={v}" for k, v in (("vae", source.vae), ("whisper", source.whisper)) if v
    ]
    return " ".join(words)


@contextlib.contextmanager
def readable() -> Iterator[None]:
    """Errors as one readable message in the page (gr.Error), never a traceback."""
    gr = require_gradio()
    try:
        yield
    except gr.Error:
        raise
    except (MuseTalkError, ValueError, FileNotFoundError) as exc:
        log.info("user error: %s", exc)
        raise gr.Error(str(exc).strip() or type(exc).__name__, print_exception=False) from None
    except Exception as exc:
        log.exception("internal error")
        raise gr.Error(
            f"internal error ({type(exc).__name__}: {exc}); details are in the server's log",
            print_exception=False,
        ) from None


def build_app(config: AppConfig, backend: AppBackend) -> Any:
    """The gradio Blocks of the app (not launched)."""
    gr = require_gradio()
    expire = config.cache_seconds
    with gr.Blocks(title="MuseTalk lip-sync", delete_cache=(max(60, expire // 4), expire)) as app:
        gr.Markdown("# MuseTalk lip-sync: choose bbox_shift, then generate")
        gr.Markdown(f"Model: `{model_line(config)}`; devices: {', '.join(devices(config.device))}")
        if config.infer_model.layout == "tiny":
            gr.Markdown(TINY_NOTE, elem_id="tiny-note")
        with gr.Tab("Lip-sync"):
            c = _lipsync_controls(gr, devices(config.device), backend.margin(None))
        with gr.Tab("Statistics"):
            _statistics_tab(gr)
        _lipsync_events(gr, backend, c, concurrency=len(devices(config.device)))
    return app


def _lipsync_controls(gr: Any, choices: list[str], margin: float) -> dict[str, Any]:
    """The Lip-sync tab's components by name."""
    c: dict[str, Any] = {}
    gr.Markdown(CONTROLS)
    with gr.Row():
        c["video"] = gr.File(label="Video or image", file_types=["video", "image"], elem_id="video")
        c["audio"] = gr.File(label="Audio", file_types=["audio", "video"], elem_id="audio")
    with gr.Row():
        c["device"] = gr.Dropdown(choices, value=choices[0], label="Device")
        c["extra"] = gr.Number(margin, minimum=0, label="extra_margin (px below the chin)")
        c["auto"] = gr.Checkbox(False, label="auto bbox_shift (the training data's boundary)")
    with gr.Row():
        # API callers may send any shift up to SHIFT_BOUND; the page narrows the slider to the
        # video's adjustable range after the first preview
        c["shift"] = gr.Slider(
            -SHIFT_BOUND, SHIFT_BOUND, value=0, step=1, label="bbox_shift (px)",
            interactive=False, elem_id="shift",
        )  # fmt: skip
        c["frame"] = gr.Slider(
            0, FRAME_BOUND, value=0, step=1, interactive=False, elem_id="frame",
            label="Frame (0 = the first with a face; the nearest with a face is shown)",
        )  # fmt: skip
    c["preview"] = gr.Button("1. Preview (test inpainting)", variant="secondary")
    with gr.Row():
        c["image"] = gr.Image(
            label="Frame: landmarks, boxes, mask boundary", format="png", elem_id="preview-image"
        )
        c["crop"] = gr.Image(
            label="Masked 256x256 crop the UNet sees", format="png", elem_id="preview-crop"
        )
    c["info"] = gr.Textbox(
        label="bbox_shift: range, auto, current", lines=5, elem_id="preview-info"
    )
    c["generate"] = gr.Button("2. Generate", variant="primary")
    with gr.Row():
        c["result"] = gr.Video(label="Result (with audio)", elem_id="result", height=480)
        c["sidecar"] = gr.JSON(label="Sidecar json (settings, model, bbox_shift, timings)")
    c["summary"] = gr.Textbox(label="Generation", lines=2, elem_id="generation")
    c["sidecar_file"] = gr.File(label="Sidecar json file")
    return c


def _lipsync_events(gr: Any, backend: AppBackend, c: dict[str, Any], concurrency: int) -> None:
    """Preview (button, sliders, auto, margin) and Generate."""

    def preview(video, frame, bbox_shift, auto, extra_margin, device):
        with readable():
            p = backend.preview(video, frame, bbox_shift, auto, extra_margin, device)
        lo, hi = p.slider_range
        value = min(max(p.choice.shift, lo), hi)
        last = max(1, p.num_frames - 1)
        frames = gr.Slider(0, last, value=p.frame_index, step=1, interactive=True)
        shifts = gr.Slider(lo, hi, value=value, step=1, interactive=True)
        return p.image, p.crop, p.text, frames, shifts

    def generate(
        video,
        audio,
        bbox_shift,
        auto,
        extra_margin,
        device,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (how gradio asks for a bar)
    ):
        with readable():
            g = backend.generate(video, audio, bbox_shift, auto, extra_margin, device)
        return g.output, g.sidecar, g.text, g.sidecar_path

    inputs = [c[k] for k in ("video", "frame", "shift", "auto", "extra", "device")]
    outputs = [c[k] for k in ("image", "crop", "info", "frame", "shift")]
    c["preview"].click(preview, inputs, outputs, api_name="preview", concurrency_limit=2)
    redraw = {"api_visibility": "private", "show_progress": "minimal"}

    def moved(video, frame, bbox_shift, auto, extra_margin, device):
        """A slider value chosen by hand: auto off."""
        return (*preview(video, frame, bbox_shift, False, extra_margin, device), False)

    c["shift"].release(
        moved, inputs, [*outputs, c["auto"]], trigger_mode="always_last", **redraw
    )  # fmt: skip
    c["frame"].release(preview, inputs, outputs, trigger_mode="always_last", **redraw)
    c["auto"].input(preview, inputs, outputs, **redraw)
    c["extra"].submit(preview, inputs, outputs, **redraw)
    c["generate"].click(
        generate,
        [c[k] for k in ("video", "audio", "shift", "auto", "extra", "device")],
        [c[k] for k in ("result", "sidecar", "summary", "sidecar_file")],
        api_name="generate",
        concurrency_limit=concurrency,  # and one at a time per device (the backend's lock)
        concurrency_id="generate",
    )


def _statistics_tab(gr: Any) -> None:
    gr.Markdown(
        "Where the training mask boundary falls in a preprocess output (`preprocess/run.py "
        "output=`): give its directory (the shards are read) or its `stats.json`."
    )
    with gr.Row():
        path = gr.Textbox(label="Preprocess output directory or stats.json path (on the server)")
        upload = gr.File(label="or upload a stats.json", file_types=[".json"])
    button = gr.Button("Show statistics")
    text = gr.Textbox(label="Summary", lines=4)
    shares = gr.Plot(label="Shares vs MuseTalk's 15/63/22")
    distribution = gr.Plot(label="Equivalent shift distribution")
    ranges = gr.Plot(label="Per-source ranges")

    def show(path, upload):
        with readable():
            view = statistics(upload or path)
        return view.text, view.shares, view.distribution, view.ranges

    button.click(show, [path, upload], [text, shares, distribution, ranges], api_name="statistics")


def serve(config: AppConfig) -> None:
    """Load the default device's model (weight errors show before serving), then serve."""
    gr = require_gradio()
    workdir = config.workdir
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="musetalk-app-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests to itself
    backend = AppBackend(config, workdir)
    backend.pipeline(config.device)
    app = build_app(config, backend)
    app.queue(default_concurrency_limit=1)
    print(f"MuseTalk app: http://{config.server_name}:{config.server_port} (work dir {workdir})")
    app.launch(
        server_name=config.server_name,
        server_port=config.server_port,
        share=config.share,
        show_error=True,
        max_file_size=config.max_file_size,
        ssr_mode=False,
        mcp_server=False,
        quiet=True,
        theme=gr.themes.Default(),
    )
