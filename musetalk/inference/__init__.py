"""Inference: weights layouts (`weights`), the bbox_shift choice (`shift`), prepared sources and
their cache (`avatar`), the pipeline (`pipeline`) and the job behind `python infer.py` (`run`),
in that order: each module imports only the ones before it."""
