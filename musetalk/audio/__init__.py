"""Audio: loading/saving aligned to video frames (16 kHz mono float32)."""

from musetalk.audio.io import SAMPLE_RATE, audio_for_frames, load_audio, write_wav

__all__ = ["SAMPLE_RATE", "audio_for_frames", "load_audio", "write_wav"]
