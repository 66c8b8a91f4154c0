"""``memorization`` (Feldman & Zhang 2020): each training point's self-influence on its own
0/1 correctness over the models of ``estimate.plan``; it writes self scores only."""

from __future__ import annotations

from datamodels.methods.downsampling import Downsampling


class Memorization(Downsampling):
    name = "memorization"
    correctness = True
    writes = ("self_scores",)
