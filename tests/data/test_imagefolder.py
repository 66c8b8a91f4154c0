"""``dataset: {name: imagefolder, path}``: a folder of class sub-folders of PNGs round-trips
through prepare (labels by sorted class name, the split, every pixel)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodels import api
from datamodels.config import DatasetConfig, config_from_dict
from datamodels.data.beton import decode_resident
from datamodels.data.sources import load_dataset
from datamodels.errors import DataError
from datamodels.store import Run

CLASSES = ("cat", "ant", "bee")  # sorted: ant 0, bee 1, cat 2


def _write_folder(root: Path, per_class: int = 5, size=(6, 4), mode="RGB", seed=0) -> dict:
    """PNGs root/<class>/<i>.png of random pixels; returns {path: (label, pixels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    channels = 3 if mode == "RGB" else 1
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            path = root / name / f"{i:02d}.png"
            Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode).save(path)
            written[path] = (sorted(CLASSES).index(name), pixels)
    return written


def test_a_folder_of_class_folders_round_trips_through_prepare(tmp_path):
    written = _write_folder(tmp_path / "pets")
    config = config_from_dict({
        "dataset": {"name": "imagefolder", "path": str(tmp_path / "pets"), "test_fraction": 0.2},
    })
    out = str(tmp_path / "run")
    api.prepare(config, out)
    features, labels = decode_resident(Path(out) / "data" / "examples.beton")
    assert features.shape == (15, 4, 6, 3) and features.dtype == np.uint8
    # examples in (class, file) order: ant 00..04, bee 00..04, cat 00..04
    order = sorted(written, key=lambda p: (sorted(CLASSES).index(p.parent.name), p.name))
    for index, path in enumerate(order):
        label, pixels = written[path]
        assert labels[index] == label
        np.testing.assert_array_equal(features[index], pixels)
    examples = Run(out).examples()
    assert (examples["split"] == "test").sum() == 3  # round(15 * 0.2), seeded
    again = load_dataset(config.dataset)
    np.testing.assert_array_equal(again.is_test, (examples["split"] == "test").to_numpy())


def test_train_and_test_sub_folders_are_the_split(tmp_path):
    train = _write_folder(tmp_path / "data" / "train", per_class=4, seed=1)
    test = _write_folder(tmp_path / "data" / "test", per_class=2, seed=2)
    ds = load_dataset(DatasetConfig(name="imagefolder", path=str(tmp_path / "data")))
    assert len(ds) == 18 and ds.is_test.sum() == 6 and not ds.is_test[:12].any()
    assert ds.num_classes == 3 and ds.labels[:4].tolist() == [0, 0, 0, 0]
    first_test = tmp_path / "data" / "test" / "ant" / "00.png"
    np.testing.assert_array_equal(ds.features[12], test[first_test][1])
    np.testing.assert_array_equal(ds.features[0], train[tmp_path / "data/train/ant/00.png"][1])


def test_grayscale_images_have_one_channel(tmp_path):
    written = _write_folder(tmp_path / "gray", per_class=3, mode="L")
    ds = load_dataset(DatasetConfig(name="imagefolder", path=str(tmp_path / "gray")))
    assert ds.features.shape == (9, 4, 6, 1)
    np.testing.assert_array_equal(ds.features[0], written[tmp_path / "gray/ant/00.png"][1])


@pytest.mark.parametrize("problem", ["no_folder", "no_classes", "sizes", "not_an_image"])
def test_bad_folders_are_one_line(tmp_path, problem):
    root = tmp_path / "imgs"
    if problem != "no_folder":
        root.mkdir()
    if problem in ("sizes", "not_an_image"):
        _write_folder(root, per_class=2)
    if problem == "sizes":
        Image.new("RGB", (7, 7)).save(root / "bee" / "big.png")
    if problem == "not_an_image":
        (root / "bee" / "broken.png").write_bytes(b"not a png")
    expected = {
        "no_folder": "is not a folder", "no_classes": "has no class sub-folders",
        "sizes": r"big.png is 7×7 pixels but ant/00.png is 6×4; resize",
        "not_an_image": "broken.png is not a readable image",
    }[problem]
    with pytest.raises(DataError, match=expected) as caught:
        load_dataset(DatasetConfig(name="imagefolder", path=str(root)))
    assert "\n" not in str(caught.value)


def test_imagefolder_needs_a_path():
    from datamodels.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.path is required"):
        config_from_dict({"dataset": {"name": "imagefolder"}})


def test_examples_record_each_file_and_class_name_and_query_shows_them(tmp_path):
    _write_folder(tmp_path / "pets", per_class=2)
    config = config_from_dict({"dataset": {"name": "imagefolder", "path": str(tmp_path / "pets"),
                                           "test_fraction": 0.5}})
    out = str(tmp_path / "run")
    api.prepare(config, out)
    from datamodels.store.query import connect

    rows = connect(Run(out)).execute(
        "SELECT source_path, class_name, label FROM examples ORDER BY index"
    ).fetchall()
    assert rows == [
        (f"{name}/{i:02d}.png", name, sorted(CLASSES).index(name))
        for name in sorted(CLASSES) for i in range(2)
    ]
    assert len(Run(out).examples()) == 6  # the readers' columns read as before


def test_a_run_without_the_source_columns_still_reads(tmp_path):
    # a digits run (no files) writes the columns as they were; its examples read as before
    from datamodels.store.query import connect

    config = config_from_dict({"dataset": {"name": "digits"}})
    out = str(tmp_path / "run")
    api.prepare(config, out)
    names = [row[0] for row in connect(Run(out)).execute("DESCRIBE examples").fetchall()]
    assert "source_path" not in names and len(Run(out).examples()) > 0
