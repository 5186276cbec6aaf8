"""Training data throughput: clips/s of TalkingFaceDataModule on shards of the shared video.

Shards are made with the real preprocessing (default options: one 250-frame sample per source)
from `--copies` symlinked copies of the video (one shard each). For the stage-1 setting (F 1,
batch 32) and the stage-2 setting (F 16, batch 2, bottom margin, sync mel) and num_workers
0, 1, 2, the loader runs `--clips` clips (in batches) after one warm-up batch (worker start and
shuffle buffer fill excluded); clips/s (= training samples/s) are reported in total and per worker
process (num_workers 0 counts the main process as one). Next to it: what one GPU consumes, from
an ASSUMED step rate (not measured here: no GPU). Prints a table, writes
bench/results/train_data.json.

The loader's batches carry uint8 crops and unpadded context audio; `finish_batch` (float32
images, whole 30 s windows) runs on the training device and is not counted in clips/s (its CPU
time per batch is printed beside, with the megabytes a batch carries from the workers).

The JPEG ceiling, measured in the same run for each setting and worker count: the same shards
read by the same webdataset stages in the same number of DataLoader workers, but per sample only
the JPEG members its clips need are decoded (each once, as the loader's per-sample cache does:
the union of every clip's F target frames and F reference frames, references drawn by the
`random` rule, which needs as many distinct frames as `v15`), with the loader's decode call;
nothing else (no facts, audio, crops, batches). `ratio_vs_jpeg_ceiling` = loader clips/s /
ceiling clips/s (the issue's target: >= 0.6 for stage 1 and stage 2 with 2 workers).

    .venv/bin/python bench/train_data.py [--video PATH] [--copies N] [--clips N] [--shards DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch
import webdataset as wds

from musetalk.data import preprocess as P
from musetalk.data.reader import decode_image, raw_samples, resolve_shards
from musetalk.data.schema import frame_member
from musetalk.training.clips import finish_batch
from musetalk.training.data import TalkingFaceDataModule
from musetalk.training.reference import select_references

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "talking_demo1.mp4"

SETTINGS = {
    "stage1": {"frames_per_sample": 1, "batch_size": 32},
    "stage2": {
        "frames_per_sample": 16,
        "batch_size": 2,
        "bottom_margin": {"mean": 10.0, "std": 10.0, "max": 20.0},
        "sync_mel": True,
        "shuffle_buffer": 16,
    },
}

#: DataModule settings both settings leave at their defaults (passed explicitly).
DEFAULTS = {"clips_per_sample": 8}

#: ASSUMPTION (no GPU here): training steps per second of one A100-80GB GPU with MuseTalk's
#: recipe (fp32, gradient checkpointing, VAE decoder + VGG/GAN/sync losses in pixel space).
ASSUMED_GPU_STEPS_PER_S = {"stage1": 2.0, "stage2": 2.0}


def make_shards(video: Path, copies: int, tmp: Path) -> Path:
    links = []
    for k in range(copies):  # distinct paths, the same bytes
        link = tmp / f"copy{k}{video.suffix}"
        link.symlink_to(video)
        links.append(link)
    listing = tmp / "list.csv"
    listing.write_text("video\n" + "\n".join(str(p) for p in links) + "\n")
    out = tmp / "shards"
    P.preprocess(
        P.PreprocessConfig(
            input=str(listing), output=str(out), sources_per_shard=1, workers=1, progress=False
        )
    )
    return out


def measure(shards: Path, setting: str, workers: int, batches: int) -> dict:
    kwargs = {**DEFAULTS, **SETTINGS[setting]}
    dm = TalkingFaceDataModule(
        str(shards), num_workers=workers, batches_per_epoch=batches + 1, seed=0, **kwargs
    )
    loader = dm.train_loader()
    start = time.perf_counter()
    cpu = time.process_time()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    start, cpu = time.perf_counter(), time.process_time()
    count, batch = 0, None
    for item in it:
        count, batch = count + 1, item
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu
    clips = count * kwargs["batch_size"]
    rate = clips / wall
    # what a batch carries from the workers, and its finishing (on the GPU in training; timed
    # here on the CPU, not included in clips/s)
    nbytes = sum(v.nbytes for v in batch.values() if isinstance(v, torch.Tensor))
    finish = time.perf_counter()
    finish_batch(batch)
    finish = time.perf_counter() - finish
    return {
        "setting": setting,
        "num_workers": workers,
        "batch_size": kwargs["batch_size"],
        "frames_per_sample": kwargs["frames_per_sample"],
        "batches": count,
        "seconds": wall,
        "first_batch_seconds": first,
        "clips_per_s": rate,
        "clips_per_s_per_worker": rate / max(1, workers),
        "frames_per_s": rate * kwargs["frames_per_sample"],
        "main_process_cpu_seconds": cpu,
        "mb_per_batch_from_loader": nbytes / 1e6,
        "finish_batch_ms_on_cpu": 1000 * finish,
    }


class JpegCeiling(torch.utils.data.IterableDataset):
    """Per sample of resampled shards: decode the JPEG members `clips` clips of `frames` frames
    need (targets and references, each member once); yields one small tensor per clip."""

    def __init__(self, urls: list[str], frames: int, clips: int, gap: int = 5) -> None:
        self.urls, self.frames, self.clips, self.gap = urls, frames, clips, gap

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None:
            cv2.setNumThreads(1)  # as the loader's workers
        rng = np.random.default_rng([1, worker])
        shards = wds.ResampledShards(self.urls, seed=worker, deterministic=True)
        for raw in wds.DataPipeline(*raw_samples(shards)):
            num = sum(1 for k in raw if k.endswith(".jpg"))
            dummy = np.zeros((num, 68, 2))
            need: set[int] = set()
            for _ in range(self.clips):
                t0 = int(rng.integers(0, num - self.frames + 1))
                targets = np.arange(t0, t0 + self.frames)
                refs = select_references(dummy, targets, rng, "random", self.gap)
                need.update(targets.tolist(), refs.tolist())
            for i in sorted(need):
                decode_image(raw[frame_member(i)])
            for _ in range(self.clips):
                yield torch.tensor(len(need))


def measure_ceiling(shards: Path, setting: str, workers: int, batches: int) -> dict:
    """Clips/s of `JpegCeiling` (same shards, workers, clips per sample, F, batch size)."""
    kwargs = SETTINGS[setting]
    dataset = JpegCeiling(
        resolve_shards(str(shards)), kwargs["frames_per_sample"], DEFAULTS["clips_per_sample"]
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=kwargs["batch_size"],
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    count = sum(1 for _, _ in zip(range(batches), it, strict=False))
    wall = time.perf_counter() - start
    rate = count * kwargs["batch_size"] / wall
    return {"setting": setting, "num_workers": workers, "clips_per_s": rate, "seconds": wall}


def tiny_step_seconds(shards: Path, steps: int, run_dir: Path) -> float:
    """Median wall seconds per training step of the `tiny` experiment (CPU, after 2 warm-up
    steps), through the real Trainer + module + DataModule built from the configs."""
    import statistics

    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self.start)

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "+experiment=tiny",
                f"data.shards={shards}",
                f"paths.output_dir={run_dir}",
                "data.val_shards=null",
            ],
        )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps + 2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
        default_root_dir=str(run_dir),
    )
    trainer.fit(instantiate(cfg.module), datamodule=instantiate(cfg.data))
    return statistics.median(timer.times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument(
        "--clips", type=int, default=384, help="clips timed per run (stage 1: 12 batches of 32)"
    )
    parser.add_argument("--shards", type=Path, help="existing shards instead of making them")
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny training step")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_data.json")
    args = parser.parse_args()

    # OpenCV single-threaded in the main process as in the loader's workers (fair num_workers 0
    # numbers); a fork while OpenCV's thread pool is busy can also hang the next workers.
    cv2.setNumThreads(1)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or make_shards(args.video, args.copies, Path(tmp))
        for setting in SETTINGS:
            for workers in (0, 1, 2):
                batches = max(1, args.clips // SETTINGS[setting]["batch_size"])
                row = measure(shards, setting, workers, batches)
                ceiling = measure_ceiling(shards, setting, workers, batches)
                row["jpeg_ceiling_clips_per_s"] = ceiling["clips_per_s"]
                row["ratio_vs_jpeg_ceiling"] = row["clips_per_s"] / ceiling["clips_per_s"]
                rows.append(row)
        tiny_step = None
        if not args.no_tiny:
            tiny_step = tiny_step_seconds(shards, 12, Path(tmp) / "tiny_run")
    gpu = {
        s: {
            "assumed_steps_per_s": steps,
            "clips_per_s": steps * SETTINGS[s]["batch_size"],
            "assumption": "A100-80GB, MuseTalk recipe, fp32 + gradient checkpointing; not measured",
        }
        for s, steps in ASSUMED_GPU_STEPS_PER_S.items()
    }
    for row in rows:
        need = gpu[row["setting"]]["clips_per_s"]
        row["workers_per_gpu_needed"] = need / row["clips_per_s_per_worker"]
    result = {
        "date": date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg(),
        },
        "video": args.video.name,
        "shards": args.copies,
        "settings": SETTINGS,
        "defaults": {**DEFAULTS, "shuffle_buffer": 64},
        "runs": rows,
        **{
            f"{r['setting']}_ratio_vs_jpeg_ceiling": r["ratio_vs_jpeg_ceiling"]
            for r in rows
            if r["num_workers"] == 2
        },
        "tiny_experiment_step_seconds": tiny_step,
        "gpu_consumption_assumed": gpu,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\ntraining data benchmark: {args.video.name}, {result['date']}, {os.cpu_count()} cores")
    header = (
        f"{'setting':<8}{'workers':>8}{'clips/s':>10}{'per worker':>12}{'frames/s':>10}"
        f"{'1st batch s':>13}{'workers/GPU*':>14}{'JPEG ceiling':>14}{'ratio':>7}{'MB/batch':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['setting']:<8}{r['num_workers']:>8}{r['clips_per_s']:>10.1f}"
            f"{r['clips_per_s_per_worker']:>12.1f}{r['frames_per_s']:>10.1f}"
            f"{r['first_batch_seconds']:>13.2f}{r['workers_per_gpu_needed']:>14.2f}"
            f"{r['jpeg_ceiling_clips_per_s']:>14.1f}{r['ratio_vs_jpeg_ceiling']:>7.2f}"
            f"{r['mb_per_batch_from_loader']:>10.1f}"
        )
    for s, g in gpu.items():
        print(
            f"* ASSUMED GPU consumption, {s}: {g['assumed_steps_per_s']} steps/s x batch "
            f"{SETTINGS[s]['batch_size']} = {g['clips_per_s']:.0f} clips/s ({g['assumption']})"
        )
    print(
        "JPEG ceiling: the same shards and workers decoding only the JPEG members the clips "
        "need; ratio = clips/s / ceiling clips/s"
    )
    finish = {r["setting"]: r["finish_batch_ms_on_cpu"] for r in rows}
    print(
        "MB/batch: what a batch carries from the workers (uint8 crops, unpadded audio); "
        "finish_batch (on the GPU in training), timed here on the CPU: "
        + ", ".join(f"{s} {ms:.1f} ms/batch" for s, ms in finish.items())
    )
    print(f"load average: start {load}, end {result['machine']['load_average_at_end']}")
    if tiny_step is not None:
        print(f"tiny experiment (CPU, 2 clips of 64 px per step): {tiny_step:.2f} s/step")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
