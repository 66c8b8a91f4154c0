"""Evaluation metrics: LDS (more to come: LOO correlation, brittleness, mislabel detection)."""
