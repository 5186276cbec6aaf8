"""Inference: weights layouts, avatars (prepared sources and their cache), bbox_shift choice,
and the `infer` job behind `python infer.py`. The pipeline itself is `musetalk.pipeline`."""
