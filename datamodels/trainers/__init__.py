"""Trainers: ``train_batch`` (K masks -> K margin vectors), batched and one-at-a-time paths."""
