"""Evaluation: lip-sync metrics of generated videos (`python eval.py`), SyncNet v2 LSE."""
