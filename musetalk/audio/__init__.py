"""Audio: loading aligned to video frames (16 kHz mono float32, whole or streamed), Whisper
feature windows.

`musetalk.audio.whisper.WhisperEncoder` (transformers) is imported from its module on purpose,
so that importing this package stays light.
"""

# The Whisper model used when none is named (an HF id); here, so that settings can name it
# without importing torch (`musetalk.audio.whisper` re-exports it).
DEFAULT_WHISPER = "openai/whisper-tiny"

from musetalk.audio.io import (  # noqa: E402
    SAMPLE_RATE,
    AudioStream,
    audio_for_frames,
    frame_bounds,
    iter_audio,
    load_audio,
    write_wav,
)
from musetalk.audio.windows import (  # noqa: E402
    add_positional_encoding,
    audio_windows,
    num_frames_for,
    sinusoidal_encoding,
)

__all__ = [
    "DEFAULT_WHISPER",
    "SAMPLE_RATE",
    "AudioStream",
    "add_positional_encoding",
    "audio_for_frames",
    "audio_windows",
    "frame_bounds",
    "iter_audio",
    "load_audio",
    "num_frames_for",
    "sinusoidal_encoding",
    "write_wav",
]
