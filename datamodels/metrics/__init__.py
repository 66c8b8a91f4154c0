"""Evaluation metrics: LDS, agreement with leave-one-out and its reliability, mislabel
detection, removal and brittleness."""
