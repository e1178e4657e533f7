"""Evaluation of generated videos against ground truth (docs/evaluation.md)."""
