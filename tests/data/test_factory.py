"""``dataset: {factory: "package.module:load"}``: arrays or a torch ``Dataset`` of (input,
label) pairs become an ``ArrayDataset`` (written to the beton once by prepare); what a
loader gets wrong is one line naming ``dataset.factory``."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from datamodels.config import DatasetConfig, config_from_dict
from datamodels.data.sources import load_dataset
from datamodels.errors import ConfigError, DataError
from tests.custom_models import digit_images


@pytest.fixture
def loaders(monkeypatch):
    """A module ``user_loaders`` the configs name, its functions set per test."""
    module = types.ModuleType("user_loaders")
    monkeypatch.setitem(sys.modules, "user_loaders", module)
    return module


def _load(name: str, **fields):
    return load_dataset(DatasetConfig(factory=f"user_loaders:{name}", **fields))


def test_arrays_with_and_without_a_split(loaders):
    images, labels = digit_images(40)
    loaders.pair = lambda: (images, labels)
    split = np.where(labels < 5, "test", "train")
    loaders.triple = lambda: (torch.from_numpy(images), labels, split)
    ds = _load("pair", test_fraction=0.25)
    assert ds.features.shape == (40, 8, 8, 1) and ds.num_classes == 10
    assert ds.is_test.sum() == 10 and ds.name == "pair"
    np.testing.assert_array_equal(ds.features, images)
    ds = _load("triple")
    np.testing.assert_array_equal(ds.is_test, labels < 5)
    np.testing.assert_array_equal(ds.features, images)


def test_float_features_are_flattened_and_grayscale_stacks_get_a_channel(loaders):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2, 3)).astype(np.float64)
    loaders.floats = lambda: (x, np.arange(30) % 3)
    loaders.gray = lambda: ((x > 0).astype(np.uint8) * 255, np.arange(30) % 3)
    ds = _load("floats")
    assert ds.features.shape == (30, 6) and ds.features.dtype == np.float32
    np.testing.assert_allclose(ds.features, x.reshape(30, 6).astype(np.float32))
    assert _load("gray").features.shape == (30, 2, 3, 1)


def test_a_dataset_of_pairs_and_a_train_test_pair_of_them(loaders):
    from tests.custom_models import DigitPairs

    loaders.one = lambda limit: DigitPairs(limit)
    loaders.two = lambda: (DigitPairs(30), DigitPairs(10))
    ds = load_dataset(DatasetConfig(factory="user_loaders:one", kwargs={"limit": 50}))
    images, labels = digit_images(50)
    np.testing.assert_array_equal(ds.features, images)
    np.testing.assert_array_equal(ds.labels, labels)
    both = _load("two")
    assert len(both) == 40 and both.is_test.tolist() == [False] * 30 + [True] * 10
    np.testing.assert_array_equal(both.features[30:], images[:10])


def test_the_shipped_test_factory_through_a_config():
    config = config_from_dict({"dataset": {"factory": "tests.custom_models:digits_with_split"}})
    ds = load_dataset(config.dataset)
    assert config.dataset.name == "custom" and len(ds) == 200 and ds.is_test.sum() == 50


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (lambda: 3, r"^dataset.factory 'user_loaders:f' returned a int; return \(features"),
        (lambda: (np.zeros((4, 2)), np.arange(3)),
         r"^dataset.factory 'user_loaders:f': features have 4 rows but labels 3"),
        (lambda: (np.zeros((4, 2)), np.array([0.5, 1, 0, 1])),
         r"^dataset.factory 'user_loaders:f': labels must be integer classes"),
        (lambda: (np.zeros((4, 2)), np.array([0, 1, 0, 1]), ["train", "tst", "test", "test"]),
         r"^dataset.factory 'user_loaders:f': split may only hold 'train'/'test'"),
        (lambda: [(np.zeros(2), 0), (np.zeros(3), 1)],
         r"^dataset.factory .user_loaders:f.: its features is not an array"),
        (lambda: (_ for _ in ()).throw(OSError("disk gone")),
         r"^dataset.factory 'user_loaders:f' raised OSError: disk gone"),
        (lambda: (np.zeros((4, 2)), np.zeros(4, dtype=np.int64)),
         r"^dataset.factory 'user_loaders:f': y holds one class only"),
    ],
    ids=["not_arrays", "rows", "float_labels", "split", "list", "raises", "one_class"],
)
def test_bad_loaders_are_one_line(loaders, body, message):
    loaders.f = body
    with pytest.raises(DataError, match=message) as caught:
        _load("f")
    assert "\n" not in str(caught.value)


def test_bad_paths_are_one_line():
    with pytest.raises(ConfigError, match=r"^dataset.factory 'no_such_pkg.data:load': no module"):
        load_dataset(DatasetConfig(factory="no_such_pkg.data:load"))
    with pytest.raises(ConfigError, match="must be an import path"):
        config_from_dict({"dataset": {"factory": "no_such_pkg.data.load"}})
    with pytest.raises(ConfigError, match="leave dataset.name out"):
        config_from_dict({"dataset": {"name": "digits", "factory": "a:b"}})
