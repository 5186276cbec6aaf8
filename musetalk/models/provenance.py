"""Which frozen VAE and Whisper a UNet was trained with, recorded so that inference rebuilds them.

The UNet only makes sense beside the VAE whose latents it learned and the Whisper whose hidden
states it attends to, so an export records both in `training.json` (format 2), one record each:

    {"source": "stabilityai/sd-vae-ft-mse", "revision": "<commit>"}   a hub id, at the commit
                                                                       found in the local cache
    {"source": "/abs/dir", "sha256": {"<weights file>": "<hex>"}}      a local directory
    {"source": "vae", "bundled": true, "sha256": {...}}                random-init networks (the
                                                                       tiny experiment), saved
                                                                       into the export itself

`frozen_record` makes a record at export time, `resolve_frozen` turns one back into the source
and revision to load, relative to the export directory. A local directory that is gone is a
MissingWeightsError naming the override (`infer_model.vae=` / `infer_model.whisper=`); weights
whose hashes differ from the recorded ones are loaded with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from musetalk.errors import CheckpointError, MissingWeightsError
from musetalk.files import looks_local, sha256_file

__all__ = ["frozen_record", "hub_revision", "resolve_frozen", "weight_hashes"]

#: Weight file names of the diffusers / transformers layouts (VAE and Whisper).
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def weight_hashes(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the weight files at the top of a model directory."""
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    }


def hub_revision(repo_id: str) -> str | None:
    """The commit of `repo_id` in the local Hugging Face cache (what from_pretrained just read),
    None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(cached, str):
        return None
    snapshot = Path(cached).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def frozen_record(
    source: str | None, export_dir: Path, name: str, save: Callable[[Path], None]
) -> dict[str, Any]:
    """The record of one frozen network. source: the id or directory it was loaded from (None or
    "" for random-init networks, which `save` writes into `export_dir / name`)."""
    if not source:
        bundle = export_dir / name
        save(bundle)
        return {"source": name, "bundled": True, "sha256": weight_hashes(bundle)}
    if looks_local(source):
        directory = Path(source).expanduser().resolve()
        return {"source": str(directory), "sha256": weight_hashes(directory)}
    return {"source": source, "revision": hub_revision(source)}


def resolve_frozen(
    record: Any, export_dir: Path, what: str, option: str, default: str
) -> tuple[str, str | None]:
    """(source, revision) to load a frozen network from, given its record in training.json.

    what: "VAE" or "Whisper" (for messages); option: the override key to name; default: the hub
    id used by exports that recorded nothing (written before records existed, or by hand).
    Format-1 exports recorded a plain string: used when it is a hub id or an existing directory.
    """
    if record is None:
        return default, None
    if isinstance(record, str):  # format 1
        usable = Path(record).expanduser().is_dir() or not looks_local(record)
        return (record if record and usable else default), None
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        raise CheckpointError(f"{export_dir}/training.json: unreadable {what} record {record!r}")
    source = record["source"]
    if not record.get("bundled") and not looks_local(source):
        return source, record.get("revision")
    directory = export_dir / source if record.get("bundled") else Path(source)
    if not directory.is_dir():
        raise MissingWeightsError(
            f"the export {export_dir} was trained with the {what} at {directory}, which is not "
            f"here; pass {option}=<a copy of that {what} directory> (a different {what} gives "
            "wrong output)"
        )
    recorded = record.get("sha256") or {}
    found = weight_hashes(directory)
    if any(found.get(name, digest) != digest for name, digest in recorded.items()):
        warnings.warn(
            f"the {what} weights in {directory} differ from the ones the export was trained "
            "with (sha256 recorded in training.json): output may be wrong",
            stacklevel=2,
        )
    return str(directory), None
