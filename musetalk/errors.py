"""The project's own error types: problems with the user's input, files or settings.

Every error a user can cause and fix derives from `MuseTalkError`; the entry points
(`preprocess/run.py`, `train.py`, `infer.py`) print its message as one line and exit non-zero
(`exit_code`). Anything else is a bug and keeps its traceback. `MediaError` subclasses carry a
short stable `reason` tag that preprocessing records as a skip reason.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class MuseTalkError(Exception):
    """A problem the user can fix (bad setting, unusable file, refused output); not a bug."""

    exit_code = 1


class ConfigError(MuseTalkError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""

    exit_code = 2


class InputError(MuseTalkError, ValueError):
    """An input (file, directory, list) named by the user cannot be used as given."""


class InputNotFoundError(InputError, FileNotFoundError):
    """An input file or directory named by the user does not exist."""


class OutputRefusedError(MuseTalkError):
    """The output location cannot be used without touching files this program did not write."""


class UnsafeFileError(MuseTalkError):
    """A file would have to be unpickled (or otherwise executed) to be read: refused."""


#: The last line of every `MissingWeightsError` message: where to get weights and how to check them.
WEIGHTS_HINT = (
    "get weights with: python -m musetalk.weights download [--dir models] "
    "[--what inference|training|eval|face|all]; check them offline with: "
    "python -m musetalk.weights check [--dir models]"
)


class MissingWeightsError(MuseTalkError, FileNotFoundError):
    """A weight or config file is missing; the message names it and the expected layout, and
    ends with `WEIGHTS_HINT` (once, also when a message is wrapped into another one)."""

    hint = WEIGHTS_HINT

    def __init__(self, *args: object) -> None:
        if not args:
            args = (self.hint,)
        elif isinstance(args[0], str):
            message = args[0].replace(f"\n{self.hint}", "").replace(self.hint, "").rstrip()
            args = (f"{message}\n{self.hint}" if message else self.hint, *args[1:])
        super().__init__(*args)


class DownloadError(MuseTalkError):
    """A weight file could not be downloaded (no network, source unavailable); the message
    names the file and its source."""


class ShardError(MuseTalkError, ValueError):
    """A shard or a sample in it cannot be used (damaged, inconsistent)."""


class ShardVersionError(ShardError):
    """A shard written with a schema or region version this reader does not know: never
    skipped as damage, since every shard of that dataset would be."""


class CheckpointError(MuseTalkError, ValueError):
    """A weights or checkpoint file is empty, truncated, or not in the expected format."""


class NoFaceError(MuseTalkError, ValueError):
    """No frame of the input has a usable face."""


class MediaError(MuseTalkError):
    """A media file cannot be used. `reason` is a short stable tag for stats and manifests."""

    reason = "media_error"

    def __init__(self, path: object, detail: str = "") -> None:
        self.path = str(path)
        self.detail = detail
        what = self.reason.replace("_", " ")
        super().__init__(f"{self.path}: {what}" + (f" ({detail})" if detail else ""))


class MissingMedia(MediaError):
    reason = "missing"


class EmptyFile(MediaError):
    reason = "zero_bytes"


class NotAMediaFile(MediaError):
    reason = "not_a_video"


class CorruptMedia(MediaError):
    reason = "corrupt"


class TruncatedMedia(MediaError):
    reason = "truncated"


class NoVideoStream(MediaError):
    reason = "audio_only"


class NoAudioStream(MediaError):
    reason = "no_audio"


@contextlib.contextmanager
def user_errors(command: str) -> Iterator[None]:
    """For entry points: a `MuseTalkError` becomes its message on stderr (each line prefixed
    with `command`) and exit code `exc.exit_code`; any other exception keeps its traceback."""
    try:
        yield
    except MuseTalkError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"{command}: {line}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
