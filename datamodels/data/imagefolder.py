"""The ``imagefolder`` source: a folder of class sub-folders of images (read with Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodels.config import DatasetConfig
from datamodels.data.dataset import ArrayDataset, seeded_split
from datamodels.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_images(files: list[Path], root: Path) -> np.ndarray:
    """uint8 [N, H, W, C]: grayscale when every image is (C = 1), else RGB (C = 3)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"dataset.path: {path} is not a readable image ({err})") from None
    gray = all(image.mode in ("1", "L", "I;16", "I", "F") for image in images)
    mode = "L" if gray else "RGB"
    arrays = [np.asarray(image.convert(mode), dtype=np.uint8) for image in images]
    first = arrays[0].shape
    for path, array in zip(files, arrays, strict=True):
        if array.shape != first:
            raise DataError(
                f"dataset.path: {path} is {array.shape[1]}×{array.shape[0]} pixels but "
                f"{files[0].relative_to(root)} is {first[1]}×{first[0]}; resize the images to "
                "one size (or load them with dataset.factory)"
            )
    stacked = np.stack(arrays)
    return stacked[..., None] if gray else stacked


def load_imagefolder_dataset(cfg: DatasetConfig) -> ArrayDataset:
    """A folder of class sub-folders of images (``root/<class>/<image>``); labels number the
    class names in sorted order. With ``train/`` and ``test/`` sub-folders (each of class
    sub-folders) those are the splits, else a seeded ``test_fraction`` split. Examples are
    in (split, class, file name) order; ``source_paths`` lists their files relative to the
    folder (``train/cat/001.png``)."""
    root = Path(str(cfg.path)).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.path: {root} is not a folder (a folder of class sub-folders)")
    split_roots = {name: root / name for name in ("train", "test")}
    has_split = all(p.is_dir() for p in split_roots.values())
    parts = split_roots if has_split else {"all": root}
    classes = sorted({c.name for part in parts.values() for c in _class_folders(part)})
    if not classes:
        raise DataError(
            f"dataset.path: {root} has no class sub-folders; put each class's images in "
            f"{root}/<class name>/"
        )
    files, labels, is_test = [], [], []
    for split, part in parts.items():
        for label, name in enumerate(classes):
            found = _image_files(part / name) if (part / name).is_dir() else []
            files += found
            labels += [label] * len(found)
            is_test += [split == "test"] * len(found)
    if not files:
        raise DataError(
            f"dataset.path: {root} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class "
            "sub-folders"
        )
    images = _read_images(files, root)
    labels_array = np.asarray(labels, dtype=np.int64)
    split = (
        np.asarray(is_test, dtype=bool) if has_split
        else seeded_split(len(labels_array), cfg.test_fraction, cfg.split_seed)
    )
    dataset = ArrayDataset(
        root.name, images, labels_array, split, len(classes), class_names=classes
    )
    # each example's file relative to dataset.path (examples.parquet's source_path)
    dataset.source_paths = [path.relative_to(root).as_posix() for path in files]
    return dataset
