"""One colour per method, the same in every figure of the report and unique within a figure.

`method_color` gives a known method its fixed colour (`KNOWN` order in `PALETTE`); `palette`
gives a figure's methods their colours, moving any method whose colour another of the same
figure already holds (unknown names) to the first free colour, so no two lines share one.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

# 20 distinguishable colours: tab10, then the darker/lighter members of tab20 it lacks
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#393b79", "#dbdb8d", "#9edae5",
)
# the methods the package ships, in the order they take the palette
KNOWN = (
    "datamodels", "downsampling", "loo", "banzhaf", "beta_shapley", "trak", "influence",
    "influence_pert", "tracin", "representer", "knn_shapley", "metagradient", "tmc_shapley",
    "shapley", "hydra", "memorization", "downsampling_correct",
)


def method_color(method: str) -> str:
    """The fixed colour of ``method`` (known names by `KNOWN`, others by a stable hash)."""
    if method in KNOWN:
        return PALETTE[KNOWN.index(method) % len(PALETTE)]
    return PALETTE[zlib.crc32(method.encode()) % len(PALETTE)]


def palette(methods: Iterable[str]) -> dict[str, str]:
    """{method: colour} for one figure: each method's fixed colour, unique within the
    figure (a clash, possible only for unknown names, takes the first free colour)."""
    names = list(dict.fromkeys(methods))
    chosen: dict[str, str] = {}
    known_first = sorted(names, key=lambda m: (m not in KNOWN, names.index(m)))
    for method in known_first:
        colour = method_color(method)
        if colour in chosen.values():
            colour = next((c for c in PALETTE if c not in chosen.values()), colour)
        chosen[method] = colour
    return {m: chosen[m] for m in names}
