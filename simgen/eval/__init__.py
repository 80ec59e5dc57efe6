"""Evaluation of builds against a scene's ground truth (``simgen eval``); see docs/evaluation.md."""
