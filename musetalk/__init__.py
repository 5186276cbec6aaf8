"""musetalk: MuseTalk-style audio-driven lip-sync (preprocessing, training, inference)."""

__version__ = "0.1.0"
