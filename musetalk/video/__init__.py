"""Video decoding and encoding: the only package that touches video codecs.

Reading: any container/codec FFmpeg reads (via PyAV), streamed frame by frame, rotated upright
according to the display matrix, and resampled to a constant frame rate (25 fps by default):

- output frame ``i`` <-> time ``t_i = i / fps`` seconds, with ``t = 0`` at the video stream's
  start time (``stream.start_time``); audio uses the same origin (`musetalk.audio.load_audio`).
- each output frame is the latest source frame whose presentation time is ``<= t_i``
  (nearest-previous), so 30/60 fps inputs drop frames, low fps inputs repeat them and variable
  frame rate inputs follow their timestamps.
- the number of output frames is ``floor(duration * fps)``, duration being the video stream's
  duration as stored in the container (seconds).

Truncation rule: an ISO-BMFF file (mp4/mov/m4a) whose top-level boxes run past the end of the file
is truncated (detected at open, before any decoding). For other containers, a stream whose last
decodable frame ends more than ``max(0.5 s, 5 %)`` before the stored duration is truncated; the
reader yields the frames it can decode and raises `TruncatedMedia` at that point.

Writing: `VideoWriter` encodes RGB frames to H.264 (libx264, yuv420p) plus optional AAC audio
into an mp4, streaming, with no ffmpeg binary.
"""

from musetalk.video.media import IMAGE_EXTENSIONS, is_image, open_media, read_image, video_start
from musetalk.video.reader import (
    VideoInfo,
    VideoReader,
    iter_frames,
    prefetched,
    probe,
    set_decode_threads,
)
from musetalk.video.writer import VideoWriter

__all__ = [
    "IMAGE_EXTENSIONS",
    "VideoInfo",
    "VideoReader",
    "VideoWriter",
    "is_image",
    "iter_frames",
    "open_media",
    "prefetched",
    "probe",
    "read_image",
    "set_decode_threads",
    "video_start",
]
