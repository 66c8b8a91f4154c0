"""Data as the trainers hold it: normalised tensors resident on the training device.

``TrainData``: the train and eval examples of a run, built from its examples file (the FFCV
beton or the array store, decoded once per worker process) and ``examples.parquet``;
features are standardised with train-split statistics (per feature for flat data, per
channel for images, which also become channels-first). ``TransferData``: a transfer run's
source examples (a ``TrainData`` whose labels are source classes) and the target's train and
test splits, every input normalised with the target train split's statistics (layout:
``data.transfer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from datamodels.data.beton import decode_resident
from datamodels.data.examples import train_and_eval_index


@dataclass
class TrainData:
    """``train_x``: float32[n_train, ...] (train-position order); ``eval_x``: float32[n_eval, ...]
    (eval-position order); labels int64; the first ``n_test`` eval positions are the test split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    n_test: int
    num_classes: int
    train_index: np.ndarray  # int64[n_train] example index of each train position
    beton_path: str  # the run's examples file: a beton, or an array store (.npy)
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def n_train(self) -> int:
        return len(self.train_y)

    @property
    def is_image(self) -> bool:
        return self.train_x.ndim == 4

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.train_x.shape[1:]))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw beton features (as decoded) -> the normalised float tensor the models take."""
        x = raw.to(self.mean.device, non_blocking=True)
        if x.ndim == 4:  # uint8 NHWC -> float NCHW
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
        else:
            x = x.reshape(len(x), -1).float()
        return (x - self.mean) / self.std

    def to(self, device: torch.device | str) -> TrainData:
        fields = ("train_x", "train_y", "eval_x", "eval_y", "mean", "std")
        move = {k: getattr(self, k).to(device) for k in fields}
        return TrainData(**{**self.__dict__, **move})


def _stats(train_raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if train_raw.ndim == 4:
        pixels = train_raw.reshape(-1, train_raw.shape[-1]).astype(np.float64) / 255.0
        mean, std = pixels.mean(0), pixels.std(0)
        shape = (1, -1, 1, 1)
    else:
        flat = train_raw.reshape(len(train_raw), -1).astype(np.float64)
        mean, std = flat.mean(0), flat.std(0)
        shape = (1, -1)
    std = np.where(std < 1e-6, 1.0, std)  # constant features (digits' border pixels) stay 0
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float32).reshape(shape)  # noqa: E731
    return as_tensor(mean), as_tensor(std)


def load_train_data(
    beton_path: str | Path, examples: pd.DataFrame, num_classes: int, device: str = "cpu"
) -> TrainData:
    features, labels = decode_resident(beton_path)
    train_index, eval_index = train_and_eval_index(examples)
    n_test = int((examples.loc[examples["eval_position"].notna(), "split"] == "test").sum())
    mean, std = _stats(features[train_index])
    data = TrainData(
        train_x=torch.empty(0), train_y=torch.from_numpy(labels[train_index]),
        eval_x=torch.empty(0), eval_y=torch.from_numpy(labels[eval_index]),
        n_test=n_test, num_classes=num_classes, train_index=train_index,
        beton_path=str(beton_path), mean=mean, std=std,
    )
    data.train_x = data.normalize(torch.from_numpy(features[train_index]))
    data.eval_x = data.normalize(torch.from_numpy(features[eval_index]))
    return data.to(device)


@dataclass
class TransferData:
    """``source``: the source examples as ``TrainData`` (labels: source classes);
    ``class_of``: int64[n_source] the source class (mask column) of each source example;
    everything normalised with the target train split's statistics."""

    source: TrainData
    class_of: np.ndarray
    n_classes: int  # source classes = mask length
    target_train_x: torch.Tensor
    target_train_y: torch.Tensor
    eval_x: torch.Tensor  # the target's test split, eval-position order
    eval_y: torch.Tensor
    target_classes: int

    @property
    def n_train(self) -> int:
        return self.n_classes

    @property
    def n_test(self) -> int:
        return len(self.eval_y)

    def example_masks(self, class_masks: np.ndarray) -> np.ndarray:
        """bool[K, n_source]: the source examples each class mask includes."""
        return np.asarray(class_masks, bool)[:, self.class_of]


def load_transfer_data(
    beton_path: str, examples: pd.DataFrame, device: str = "cpu"
) -> TransferData:
    """The run's beton and ``examples.parquet`` (layout: ``datamodels.data.transfer``)."""
    features, labels = decode_resident(beton_path)
    source = examples[examples["split"] == "source"].sort_values("index")
    train = examples[examples["split"] == "train"].sort_values("index")
    test = examples[examples["eval_position"].notna()].sort_values("eval_position")
    src_index = source["index"].to_numpy(np.int64)
    tr_index = train["index"].to_numpy(np.int64)
    mean, std = _stats(features[tr_index])
    n_classes = int(source["train_position"].max()) + 1
    src = TrainData(
        train_x=torch.empty(0), train_y=torch.from_numpy(labels[src_index]),
        eval_x=torch.empty(0), eval_y=torch.from_numpy(labels[src_index[:1]]), n_test=1,
        num_classes=n_classes, train_index=src_index, beton_path=str(beton_path),
        mean=mean, std=std,
    )
    src.train_x = src.normalize(torch.from_numpy(features[src_index]))
    src.eval_x = src.train_x[:1].clone()
    te_index = test["index"].to_numpy(np.int64)
    target_classes = int(max(train["label"].max(), test["label"].max())) + 1
    return TransferData(
        source=src.to(device),
        class_of=source["train_position"].to_numpy(np.int64),
        n_classes=n_classes,
        target_train_x=src.normalize(torch.from_numpy(features[tr_index])).to(device),
        target_train_y=torch.from_numpy(labels[tr_index]).to(device),
        eval_x=src.normalize(torch.from_numpy(features[te_index])).to(device),
        eval_y=torch.from_numpy(labels[te_index]).to(device),
        target_classes=target_classes,
    )
