"""Pictures for the serve pages without matplotlib: an input as PNG bytes, a histogram as SVG.

An input is drawn when it is an image (uint8 or float ``[H, W]``, ``[H, W, C]`` with C in
1, 3, 4) or a flat vector with a square number of features (digits: 8×8); other tabular
inputs (``[d]`` features) are shown as text by the pages instead (`feature_text`). Small
images are scaled up with nearest-neighbour so an 8×8 digit is legible.
"""

from __future__ import annotations

import html
import io

import numpy as np

MIN_SIDE = 64


def _picture(example: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """(``[H, W]`` or ``[H, W, C]`` array, ink is dark) of an input that can be drawn, else
    None. A flat input with a square feature count (digits' 64 = 8×8) is drawn as a grey
    image with dark ink, as the report draws it."""
    array = np.asarray(example)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        return (array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array), False
    side = int(round(np.sqrt(array.size))) if array.ndim == 1 else 0
    if side > 1 and side * side == array.size:
        return array.reshape(side, side), True
    return None


def is_image(example: np.ndarray) -> bool:
    """True when ``example`` (one input) can be drawn as a picture."""
    return _picture(example) is not None


def png_bytes(example: np.ndarray, min_side: int = MIN_SIDE) -> bytes:
    """PNG of one drawable input (`is_image`), scaled up to at least ``min_side`` pixels."""
    picture = _picture(example)
    if picture is None:
        raise ValueError(f"an input of shape {np.shape(example)} is not an image")
    array, dark_ink = picture
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        if low < 0 or high > 1:  # features in [0, 1] keep their scale; others are stretched
            array = (array - low) / ((high - low) or 1.0)
        array = np.clip(np.nan_to_num(array) * 255.0, 0, 255).astype(np.uint8)
    if dark_ink:
        array = 255 - array
    from PIL import Image  # pillow: the `serve` extra

    image = Image.fromarray(array)
    side = min(image.size)
    if side < min_side:
        factor = int(np.ceil(min_side / side))
        image = image.resize((image.size[0] * factor, image.size[1] * factor), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def feature_text(example: np.ndarray, shown: int = 8) -> str:
    """The first ``shown`` features of a tabular input, as escaped text."""
    values = np.asarray(example, dtype=np.float64).ravel()
    text = " ".join(f"{v:.3g}" for v in values[:shown])
    more = f" … (+{len(values) - shown})" if len(values) > shown else ""
    return html.escape(f"[{text}{more}]")


def histogram_svg(values: np.ndarray, bins: int = 30, width: int = 420, height: int = 140) -> str:
    """An inline SVG histogram of ``values`` (float[n]) with its range on the axis."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return '<p class="note">no nonzero weights</p>'
    counts, edges = np.histogram(values, bins=bins)
    top = counts.max() or 1
    bar = (width - 20) / bins
    rects = []
    for i, count in enumerate(counts):
        h = (height - 30) * count / top
        colour = "#2a7" if edges[i] >= 0 else "#c44"
        rects.append(
            f'<rect x="{10 + i * bar:.1f}" y="{height - 20 - h:.1f}" width="{bar - 1:.1f}" '
            f'height="{h:.1f}" fill="{colour}"><title>{edges[i]:.3g} to {edges[i + 1]:.3g}: '
            f"{count}</title></rect>"
        )
    axis = (
        f'<text x="10" y="{height - 5}" font-size="11">{edges[0]:.3g}</text>'
        f'<text x="{width - 10}" y="{height - 5}" font-size="11" text-anchor="end">'
        f"{edges[-1]:.3g}</text>"
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" role="img" '
        f'aria-label="histogram of {len(values)} values">{"".join(rects)}{axis}</svg>'
    )


def curve_svg(
    series: dict[str, tuple[np.ndarray, np.ndarray]], width: int = 420, height: int = 180
) -> str:
    """An inline SVG line chart: name -> (x float[n], y float[n]), with the axes' ranges."""
    points = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    if not points or not any(len(x) for x, _ in points):
        return '<p class="note">no points</p>'
    xs = np.concatenate([x for x, _ in points])
    ys = np.concatenate([y for _, y in points])
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    y0, y1 = float(np.nanmin(ys)), float(np.nanmax(ys))
    sx = (width - 60) / ((x1 - x0) or 1.0)
    sy = (height - 40) / ((y1 - y0) or 1.0)
    palette = ["#26a", "#c44", "#2a7", "#a6a", "#e80", "#555"]
    lines = []
    for n, (name, (x, y)) in enumerate(series.items()):
        coords = " ".join(
            f"{50 + (a - x0) * sx:.1f},{height - 25 - (b - y0) * sy:.1f}"
            for a, b in zip(np.asarray(x, float), np.asarray(y, float), strict=True)
        )
        colour = palette[n % len(palette)]
        lines.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
            f"<title>{html.escape(name)}</title></polyline>"
            f'<text x="{width - 5}" y="{14 + 14 * n}" font-size="11" fill="{colour}" '
            f'text-anchor="end">{html.escape(name)}</text>'
        )
    axis = (
        f'<text x="50" y="{height - 5}" font-size="11">{x0:.3g}</text>'
        f'<text x="{width - 10}" y="{height - 5}" font-size="11" text-anchor="end">{x1:.3g}</text>'
        f'<text x="5" y="{height - 25}" font-size="11">{y0:.3g}</text>'
        f'<text x="5" y="20" font-size="11">{y1:.3g}</text>'
    )
    return f'<svg class="curve" width="{width}" height="{height}">{"".join(lines)}{axis}</svg>'
