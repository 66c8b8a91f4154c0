"""A user's own code in a run: model factories, training recipes and output functions,
named in the config by import path (``"package.module:name"``), and their checks.

**Model factory** (``model.factory``): ``make_model(**model.kwargs)`` returns an
``nn.Module`` mapping a batch of inputs (float32[B, ...], as ``TrainData`` holds them:
images channels-first, standardised per channel) to logits float[B, C]. It also receives
``num_classes`` and ``input_shape`` (one example's shape) when it has parameters of those
names that ``kwargs`` does not give. It is called under ``torch.manual_seed(seed)`` (inside
``fork_rng``), so a model's seed fixes its initial weights.

**Training recipe** (``train.recipe``): called once per model, one model at a time::

    train_one(module, subset, *, seed, device, recipe) -> module | (module, train_loss)

* ``module``: the freshly built, seeded model (``model.factory`` or a built-in ``nn.Module``
  architecture), on ``device``, in train mode;
* ``subset``: a `Subset`: ``inputs`` float32[n, ...] and ``labels`` int64[n] (on ``device``)
  of the model's training subset, ``positions`` (their train positions), ``epochs()`` (the
  built-in minibatch order: one iterator of (x, y) batches per epoch, the same draws the
  built-in recipe makes for this seed), ``lr_factor(step)`` (the schedule's multiplier) and
  ``checkpoint(module, epoch)`` (saves the module when ``checkpoints`` asks for it);
* ``seed``: the model's training seed; ``device``: a ``torch.device``; ``recipe``: the
  ``train:`` section (``TrainConfig``: epochs, batch_size, lr, ...).

It returns the trained module (its ``state_dict`` is what checkpoints save) and optionally
its training loss; without one, the recorded ``train_loss`` is the trained module's mean
cross-entropy on the subset. The final module is checkpointed after ``recipe.epochs`` when
asked for, unless the recipe saved that epoch itself. The run's retries, resume and shards
are the built-in recipe's.

**Output** (``train.output``): ``f(logits float[n, C], labels int64[n]) -> float[n]``, recorded
in ``margins`` for every evaluation example (``datamodels.trainers.outcome``).

``check_user_code`` builds one module and runs it, the recipe and the output on two
examples, so a bad path, a raising factory or a wrong output shape is one line before any
model trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.config import Config, ModelConfig, TrainConfig
from datamodels.errors import ConfigError
from datamodels.models import Architecture, architecture
from datamodels.models.callables import first_line as _first_line
from datamodels.models.callables import resolve_callable
from datamodels.models.factory import build_factory_module as _factory_module
from datamodels.trainers.batches import batches_for
from datamodels.trainers.data import TrainData
from datamodels.trainers.orders import interval_lr, lr_factors
from datamodels.trainers.outcome import Snapshot, output_function, recorded_outputs

# ``resolve_callable`` keeps its old import path (it lives in ``models.callables``)
__all__ = ["Subset", "build_factory_module", "check_combination", "check_module",
           "check_user_code", "probe_data", "resolve_callable", "train_with_recipe",
           "uses_user_code"]


def build_factory_module(model: ModelConfig, data: TrainData, seed: int) -> nn.Module:
    """``model.factory``'s module for ``data``, seeded (``models.factory``; the ``custom``
    architecture's ``build_module``)."""
    return _factory_module(model, data.num_classes, tuple(data.train_x.shape[1:]), seed)


@dataclass
class Subset:
    """One model's training subset, as a recipe sees it (the module docstring's contract)."""

    inputs: torch.Tensor  # float32[n, ...] on the device
    labels: torch.Tensor  # int64[n]
    positions: np.ndarray  # int64[n] train positions, ascending
    recipe: TrainConfig
    _epochs: Callable[[], Iterator[Iterator]]
    save_after: tuple[int, ...] = ()
    snapshots: list[Snapshot] = field(default_factory=list)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.labels) // self.recipe.batch_size)

    def epochs(self) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """``recipe.epochs`` iterators of (x, y) minibatches of ``recipe.batch_size`` (the last
        of an epoch may be short), in the built-in recipe's order for this seed."""
        return self._epochs()

    def lr_factor(self, step: int) -> float:
        """The schedule's multiplier of ``recipe.lr`` at 0-based step ``step``."""
        total = self.steps_per_epoch * self.recipe.epochs
        return float(lr_factors(self.recipe.schedule, np.array(step), np.array(total)))

    def checkpoint(self, module: nn.Module, epoch: int, lr: float | None = None) -> None:
        """Save ``module`` as this model's checkpoint after 1-based ``epoch`` when the run asks
        for one (a no-op otherwise); ``lr``: the step size since the previous one (TracIn's
        η), by default the schedule's mean over those epochs."""
        if epoch not in self.save_after or any(s.epoch == epoch for s in self.snapshots):
            return
        previous = self.snapshots[-1].epoch if self.snapshots else 0
        if lr is None:
            r = self.recipe
            lr = interval_lr(r.schedule, r.lr, self.steps_per_epoch, r.epochs, previous, epoch - 1)
        params = [t.detach().cpu().clone() for t in module.state_dict().values()]
        self.snapshots.append(Snapshot(0, epoch, float(lr), params))


@torch.no_grad()
def _subset_loss(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    if not len(labels):
        return 0.0
    module.eval()
    total = sum(
        float(F.cross_entropy(module(inputs[i : i + 1024]), labels[i : i + 1024], reduction="sum"))
        for i in range(0, len(labels), 1024)
    )
    return total / len(labels)


def train_with_recipe(
    data: TrainData, mask: np.ndarray, seed: int, model: ModelConfig, recipe: TrainConfig,
    loader: str = "resident", save_after: tuple[int, ...] = (), arch: Architecture | None = None,
) -> tuple[nn.Module, float, list[Snapshot]]:
    """``sequential.train_one``'s contract, trained by the user's ``train.recipe``."""
    function = resolve_callable(str(recipe.recipe), "train.recipe")
    device = data.train_y.device
    arch = arch or architecture(model.arch)
    module = arch.build_module(model, data, seed).to(device).train()
    positions = np.flatnonzero(mask)
    chosen = torch.from_numpy(positions).to(device)
    batches_of = batches_for(loader)
    subset = Subset(
        data.train_x[chosen], data.train_y[chosen], positions, recipe,
        lambda: batches_of(data, mask, seed, recipe), tuple(save_after),
    )
    result = function(module, subset, seed=int(seed), device=device, recipe=recipe)
    trained, loss = result if isinstance(result, tuple) else (result, None)
    if not isinstance(trained, nn.Module):
        raise ConfigError(
            f"train.recipe {recipe.recipe!r} returned a {type(trained).__name__}; it must "
            "return the trained nn.Module (or (module, train_loss))"
        )
    subset.checkpoint(trained, recipe.epochs)
    if loss is None:
        loss = _subset_loss(trained, subset.inputs, subset.labels)
    return trained.eval(), float(loss), sorted(subset.snapshots, key=lambda s: s.epoch)


# -- checks before anything trains ---------------------------------------------------------


def probe_data(features: np.ndarray, labels: np.ndarray, num_classes: int) -> TrainData:
    """A ``TrainData`` of a few raw examples (as the beton holds them), shaped as the trainer
    shapes them: what a module is checked on."""
    zero = torch.zeros(())
    data = TrainData(
        train_x=torch.empty(0), train_y=torch.as_tensor(labels, dtype=torch.int64),
        eval_x=torch.empty(0), eval_y=torch.as_tensor(labels, dtype=torch.int64),
        n_test=0, num_classes=int(num_classes), train_index=np.arange(len(labels)),
        beton_path="", mean=zero, std=torch.ones(()),
    )
    data.train_x = data.eval_x = data.normalize(torch.from_numpy(np.ascontiguousarray(features)))
    return data


def uses_user_code(config: Config) -> bool:
    return (
        architecture(config.model.arch).user_code
        or config.train.recipe is not None
        or config.train.output not in ("margin", "loss")
    )


def check_combination(config: Config) -> None:
    """Refuse a recipe or an output the architecture's trainer cannot honour (one line)."""
    arch = architecture(config.model.arch)
    if config.train.recipe is not None and not arch.accepts_recipe:
        raise ConfigError(
            f"train.recipe trains an nn.Module; model.arch={arch.name!r} has its own trainer "
            "(use model.factory, mlp or resnet9 with a recipe)"
        )
    if config.train.output != "margin" and not arch.records_outputs:
        raise ConfigError(
            f"train.output={config.train.output!r}: model.arch={arch.name!r} records margins "
            "only; use margin"
        )


def check_user_code(config: Config, data: TrainData) -> None:
    """Build one module on ``data`` (a `probe_data` of two examples) and run it, resolve the
    recipe and run the output function: the first problem is one ``ConfigError`` line."""
    check_combination(config)
    if config.train.recipe is not None:
        resolve_callable(config.train.recipe, "train.recipe")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(data.train_y), data.num_classes, generator=generator)
    arch = architecture(config.model.arch)
    if arch.user_code:
        logits = check_module(arch.build_module(config.model, data, 0), data, config.model.factory)
    function = output_function(config.train.output)
    if function is not None:
        try:
            recorded_outputs(logits.unsqueeze(0), data.train_y, function,
                             f"train.output {config.train.output!r}")
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's function: one line names it
            raise ConfigError(
                f"train.output {config.train.output!r} raised {_first_line(err)} on logits of "
                f"shape {tuple(logits.shape)}"
            ) from None


@torch.no_grad()
def check_module(module: nn.Module, data: TrainData, where: str | None) -> torch.Tensor:
    """Run ``module`` (eval mode) on ``data.train_x``; its logits float[n, num_classes], or one
    line saying why they are not."""
    x = data.train_x
    name = f"model.factory {where!r}"
    try:
        logits = module.eval()(x)
    except Exception as err:  # noqa: BLE001 - the user's module: one line names it
        raise ConfigError(
            f"{name}: its module raised {_first_line(err)} on a batch of inputs of shape "
            f"{tuple(x.shape)}"
        ) from None
    C = data.num_classes
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(x), C):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            f"{name}: its module maps inputs {tuple(x.shape)} to {shape}, but the labels have "
            f"{C} classes; it must return logits [batch, {C}]"
        )
    return logits.float()
