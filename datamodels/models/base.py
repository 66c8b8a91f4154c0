"""``Architecture``: what the rest of the package needs to know about one ``model.arch``.

An architecture is a small declaration, importable without torch (config validates
``model.arch`` against the names of ``datamodels.models.ARCHITECTURES``); the networks
themselves (``mlp.py``, ``resnet9.py``, ``fastnet.py``, ``factory.py``) are imported by its
methods when a model is built. It declares:

* **how it trains**: ``trainer`` names its fast path in ``datamodels.trainers.paths.TRAINERS``
  (``batched_mlp``: K stacked MLPs per pass; ``lbfgs``: logreg solved full-batch by L-BFGS;
  ``grouped``: K conv nets as one grouped network; ``vmapped``: a module vmapped over stacked
  parameters; ``sequential``: one ``nn.Module`` at a time; ``null``: no model).
  ``trainer_path`` picks it or the one-at-a-time fallback for a config and loader;
* **its functional form** for the gradient estimators: ``functional`` is ``logreg`` (flat
  [W, b], float64), ``mlp`` (the stacked layer list, float64) or ``module`` (any
  ``nn.Module`` through ``torch.func.functional_call``), None when it trains no model;
  ``dense`` forms keep one saved graph per Hessian-vector product;
* **its head**: ``head`` says where the last linear layer and its input features are read:
  ``inputs`` (the model is one linear layer on the inputs), ``stacked`` (the MLP's last
  hidden layer), ``module`` (the last ``nn.Linear``, by a forward hook), None;
* what the trainers and checks ask of it: whether it takes a ``train.recipe``, records
  outputs other than margins, takes ``model.activation``, runs the user's code, trains with
  Nesterov momentum and flip-and-crop augmentation, takes per-example loss weights, can be
  fine-tuned or linearly probed after pre-training (transfer runs), is replayed by the
  metagradient, and whether its model is a solution (one checkpoint) rather than an SGD run.

Adding an architecture: one module in ``archs/`` with a subclass, one line in the map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from datamodels.config import Config, ModelConfig


class Architecture:
    name: ClassVar[str] = ""
    trainer: ClassVar[str] = "sequential"
    functional: ClassVar[str | None] = "module"
    dense: ClassVar[bool] = False
    head: ClassVar[str | None] = "module"
    trains: ClassVar[bool] = True  # False: no model is trained (``null``)
    accepts_recipe: ClassVar[bool] = True
    records_outputs: ClassVar[bool] = True  # False: margins only
    accepts_activation: ClassVar[bool] = False
    user_code: ClassVar[bool] = False  # its network is the user's ``model.factory``
    nesterov: ClassVar[bool] = False
    augments: ClassVar[bool] = False  # random flip and 4-pixel crop per batch
    stacked: ClassVar[bool] = False  # K models as stacked parameters on resident data
    example_weights: ClassVar[bool] = False  # single_model plans' per-example loss weights
    transfers: ClassVar[bool] = True  # has a body a transfer run can keep
    finetunes: ClassVar[bool] = False  # transfer.recipe finetune
    replayed_by: ClassVar[tuple[str, ...]] = ()  # gradient methods replaying its training
    solved: ClassVar[bool] = False  # a convex solution: its one checkpoint is the model

    def trainer_path(self, config: Config, loader: str) -> str:
        """The trainer (a ``TRAINERS`` name) for ``config`` with data through ``loader``:
        the fast path when the config allows it (no recipe, ``resources.trainer: batched``,
        resident data), else one model at a time."""
        if (
            self.trainer != "sequential" and config.train.recipe is None
            and config.resources.trainer == "batched" and loader == "resident"
        ):
            return self.trainer
        return "sequential"

    def build_module(self, model: ModelConfig, data: Any, seed: int) -> Any:
        """The ``nn.Module`` (inputs to logits) of one model with the initial weights of
        ``seed``; ``data``: a ``TrainData`` (its ``num_classes``, ``in_dim``, input shape)."""
        raise ValueError(f"no nn.Module path for arch {self.name!r}")

    def module_layers(self, module: Any) -> list:
        """CPU copies of a trained module's tensors as a checkpoint holds them: its
        ``state_dict`` tensors in order."""
        return [t.detach().cpu().clone() for t in module.state_dict().values()]

    def probe_features(self, models: list[list], data: Any, config: Config, *xs: Any) -> list:
        """The head's input features of K pre-trained models (``models``: each one's
        checkpoint layers) on each batch in ``xs``: one float64[K, n, h] per batch (what a
        transfer run's linear probe trains on). ``data``: the transfer data (its source
        ``TrainData`` sizes the module)."""
        from datamodels.models.head import module_features  # torch

        return module_features(self, models, data, config, xs)

    def __repr__(self) -> str:
        return f"<architecture {self.name}>"
