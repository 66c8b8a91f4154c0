"""Which torch device a setting names: the one place ``auto`` is turned into ``cuda`` or ``cpu``."""

from __future__ import annotations

import torch


def resolve_device(choice: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice
