"""Face analysis (backends, tracking), the region math and drawing."""

from musetalk.face.analyzer import Face, FaceAnalyzer, build_analyzer
from musetalk.face.tracking import FaceTracker, OneEuro, TrackedFace

__all__ = ["Face", "FaceAnalyzer", "FaceTracker", "OneEuro", "TrackedFace", "build_analyzer"]
