"""The ``transfer`` section (hashed when present): pre-train on a source dataset, transfer to
the target task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from datamodels.config.base import Section
from datamodels.config.sections import DatasetConfig


class TransferConfig(Section):
    """Transfer-learning datamodels (Jain et al. 2022): each model pre-trains on a subset of
    the *source* dataset's classes (the masks range over source classes), is transferred to
    the target task (``dataset``: its train split is the transfer set, its test split is
    where margins are recorded) and the datamodels map source classes to target margins.

    * ``source``: any dataset kind (its train split is pre-trained on; its labels are the
      source classes; its test split is not used);
    * ``recipe``: ``linear_probe`` (a new softmax head on the frozen pre-trained features,
      solved full-batch by L-BFGS to ``tolerance``, weight decay ``weight_decay``) or
      ``finetune`` (every layer trained on the target's train split, a new head, SGD with
      ``epochs``, ``lr``, ``batch_size``, momentum 0.9 and ``weight_decay``).

    Pre-training uses the ``train`` and ``model`` sections (any architecture but ``logreg``;
    ``finetune`` needs ``model.arch: mlp``). Margins are
    recorded on the target's test split only (``dataset.eval_train`` does not apply).
    Absent (null, the default), the config hashes as it did before this section existed."""

    source: DatasetConfig
    recipe: Literal["linear_probe", "finetune"] = "linear_probe"
    epochs: int = Field(20, ge=1)
    lr: float = Field(0.05, gt=0.0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-3, ge=0.0)
    tolerance: float = Field(1e-6, gt=0.0)
    max_iter: int = Field(2000, ge=1)
