"""Face analysis (backends, tracking), the region math and blending."""

from musetalk.face.analyzer import Face, FaceAnalyzer, build_analyzer

__all__ = ["Face", "FaceAnalyzer", "build_analyzer"]
