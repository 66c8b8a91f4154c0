"""The serve pages' pictures without matplotlib: which inputs are drawn, the PNG of an image,
tabular inputs as text, the SVG histogram and curve (escaped names)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from datamodels.browse.images import curve_svg, feature_text, histogram_svg, is_image, png_bytes


def test_images_and_square_feature_vectors_are_drawn_other_features_are_text():
    assert is_image(np.zeros((8, 8))) and is_image(np.zeros((32, 32, 3), np.uint8))
    assert is_image(np.zeros(64)) and not is_image(np.zeros(10)) and not is_image(np.zeros(1))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    picture = np.asarray(Image.open(io.BytesIO(png_bytes(colour))))
    assert picture.shape == (64, 64, 3) and tuple(picture[0, 0]) == (255, 0, 0)
    text = feature_text(np.arange(12, dtype=np.float32), shown=3)
    assert text == "[0 1 2 … (+9)]"


def test_histogram_and_curve_are_inline_svg_with_escaped_names():
    svg = histogram_svg(np.array([-1.0, 0.5, 0.5, 2.0]), bins=3)
    assert svg.startswith("<svg") and svg.count("<rect") == 3 and "4 values" in svg
    assert "no nonzero weights" in histogram_svg(np.array([]))
    curve = curve_svg({"<b>m</b>": (np.array([10, 20, 40]), np.array([0.1, 0.2, 0.25]))})
    assert curve.count("<polyline") == 1 and "&lt;b&gt;m&lt;/b&gt;" in curve and "<b>" not in curve
