"""Exceptions callers can catch and record as skip reasons (`exc.reason`)."""

from __future__ import annotations


class MediaError(Exception):
    """A media file cannot be used. `reason` is a short stable tag for stats and manifests."""

    reason = "media_error"

    def __init__(self, path: object, detail: str = "") -> None:
        self.path = str(path)
        self.detail = detail
        what = self.reason.replace("_", " ")
        super().__init__(f"{self.path}: {what}" + (f" ({detail})" if detail else ""))


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
