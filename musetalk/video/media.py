"""Opening media files (FFmpeg through PyAV) with clear errors, and still images."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import av.container
import cv2
import numpy as np

from musetalk.errors import (
    CorruptMedia,
    EmptyFile,
    MissingMedia,
    NotAMediaFile,
    NoVideoStream,
    TruncatedMedia,
)

#: Still images accepted where a video is (inference shows them for the audio's length).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

_ISO_BMFF_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pdin", b"styp", b"uuid"}


_MAGICS = (
    b"RIFF",  # wav, avi
    b"OggS",
    b"\x1a\x45\xdf\xa3",  # matroska / webm
    b"FLV",
    b"ID3",
    b"fLaC",
    b"\x00\x00\x01\xba",  # mpeg-ps
    b"\x30\x26\xb2\x75",  # asf / wmv
    b"#!AMR",
)


def open_media(path: str | os.PathLike[str]) -> av.container.InputContainer:
    """Open any media file FFmpeg reads; failures raise `musetalk.errors` types, never av errors.

    Raises MissingMedia, EmptyFile, NotAMediaFile (not media, a still image, or no audio/video
    stream), TruncatedMedia (ISO-BMFF boxes past EOF) or CorruptMedia (recognised but
    unreadable).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MissingMedia(path, "no such file") from None
    if size == 0:
        raise EmptyFile(path, "expected a media file, got 0 bytes")
    overrun = _bmff_overrun(path)
    if overrun is not None:
        raise TruncatedMedia(path, overrun)
    with open(path, "rb") as f:
        head = f.read(16)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as e:
        if _looks_like_media(head):
            raise CorruptMedia(path, f"FFmpeg cannot open it: {e.strerror}") from e
        raise NotAMediaFile(path, "expected an audio or video file FFmpeg can read") from e
    if _is_still_image(container):
        name = container.format.name
        container.close()
        raise NotAMediaFile(path, f"a still image ({name}), not a video or audio file")
    if not container.streams.audio and not _video_streams(container):
        container.close()
        raise NotAMediaFile(path, "no audio or video stream")
    return container


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg's image demuxers (image2, jpeg_pipe, png_pipe, ...) read single pictures."""
    names = container.format.name.split(",")
    return any(n == "image2" or (n.endswith("_pipe") and n != "gif_pipe") for n in names)


def video_start(container: av.container.InputContainer) -> Fraction | None:
    """The t = 0 of a file in container seconds: its video stream's start, None without video."""
    streams = _video_streams(container)
    return _start(streams[0]) if streams else None


def _video_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """Video streams that are real video (not cover art attached to an audio file)."""
    return [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.stream.VideoStream:
    streams = _video_streams(container)
    if not streams:
        raise NoVideoStream(path, "expected a video stream, the file has only audio")
    return streams[0]


def _start(stream: av.stream.Stream) -> Fraction:
    """Stream start time in seconds: the t = 0 of frames and audio."""
    if stream.start_time is None:
        return Fraction(0)
    return Fraction(stream.start_time) * stream.time_base


def _looks_like_media(head: bytes) -> bool:
    """Whether the first bytes carry a known audio/video container signature."""
    if head[4:8] in _ISO_BMFF_BOXES or head.startswith(_MAGICS):
        return True
    mpeg_sync = len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0  # mp3 / adts
    return mpeg_sync or head[:1] == b"\x47"  # mpeg-ts sync byte


def _bmff_overrun(path: Path) -> str | None:
    """For ISO-BMFF files (mp4/mov/m4a): a description of a top-level box running past EOF."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8)[4:8] not in _ISO_BMFF_BOXES:
            return None
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if not kind.isalnum():
                return None  # not a box header: corrupt, not truncated
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            if length == 0:  # box extends to the end of the file
                return None
            if length < 8:
                return None  # malformed, not truncated: left to FFmpeg
            if pos + length > size:
                name = kind.decode("latin-1")
                return f"box '{name}' needs {pos + length} bytes, the file has {size}"
            pos += length
    return None


def is_image(path: str | os.PathLike[str]) -> bool:
    """Whether a path names a still image (by extension)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; MissingMedia / NotAMediaFile on failure."""
    path = Path(path)
    if not path.is_file():
        raise MissingMedia(path, "no such image")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise NotAMediaFile(path, "expected an image OpenCV can read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
