"""The ``attribute`` stage: a gradient estimator of the registry (`datamodels.methods`, every
method whose ``source`` is ``checkpoints``) on models trained elsewhere, given as their
``state_dict`` files, into the same ``scores/<method>.parquet`` and
``self_scores/<method>.parquet`` the ``estimate`` stage writes.

The files are copied into the run once, named by their content
(``imported/<sha256[:16]>.pt``), so the run keeps what its scores were computed from and the
fingerprint (the copies' names, the learning rates, the gradient settings, the targets)
changes exactly when a file's content does. Each model is a list of checkpoints in training
order, ``(path, lr)``: TracIn sums over all of them (η_k = lr), the other methods read the
last. A model trained elsewhere saw every training example of the run: its subset is all of
them.

Units are those of ``estimate`` (scores per block of ``gradients.targets_per_task`` targets,
self scores per block of ``gradients.train_per_task`` training points, TRAK's reweighting per
model); ``finish`` averages the parts over models (stderr = std/√M). The marker is
``_stages/attribute-<method>.json``, the parts ``_parts/attribute-<method>-<digest>/``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from datamodels.errors import CheckpointError, EstimateError
from datamodels.gradients.checkpointed import functional_model
from datamodels.methods import METHODS, Block, GradientMethod, Method
from datamodels.methods import method as lookup
from datamodels.methods.devices import check_gradient_device, task_device
from datamodels.methods.moments import Moments
from datamodels.methods.traits import trains_model
from datamodels.models import architecture
from datamodels.orchestrate.executor import error_text
from datamodels.stages.base import Stage, TaskResources, Unit, read_marker
from datamodels.store import Run
from datamodels.store.positions import eval_positions

IMPORTED_DIR = "imported"
EXECUTION = {  # gradient settings that change how the work runs, not the scores
    "replay_memory_mb", "targets_per_task", "train_per_task", "chunk_size", "num_cpus",
    "num_gpus", "device", "max_exact_params",
}
Models = list[list[tuple[str, float]]]  # per model, [(run-relative copy, lr)] in order


def imported_path(state: dict[str, torch.Tensor]) -> str:
    """Where a checkpoint's copy lives in the run: named by its tensors (names, dtypes,
    shapes, values), so the same weights saved twice are one copy."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{IMPORTED_DIR}/{digest.hexdigest()[:16]}.pt"


def read_state_dict(content: bytes, where: str) -> dict[str, torch.Tensor]:
    """A saved ``state_dict`` (or a dict holding one under ``state_dict``), loaded with
    ``weights_only``; one line naming ``where`` when it is none."""
    try:
        saved = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{where} is not a loadable state_dict ({first}); save it with "
            "torch.save(module.state_dict(), path)"
        ) from None
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise CheckpointError(
            f"{where} holds no state_dict (a dict of tensors); save it with "
            "torch.save(module.state_dict(), path)"
        )
    return dict(saved)


def attributable(methods: dict[str, type[Method]] | None = None) -> tuple[str, ...]:
    """The methods ``attribute`` runs: the registry's gradient methods that read checkpoints
    (EK-FAC and any later one join by being registered)."""
    known = METHODS if methods is None else methods
    return tuple(n for n, cls in known.items() if cls.source == "checkpoints")


def state_dict_layers(
    saved: dict[str, torch.Tensor], module: torch.nn.Module, where: str
) -> list[torch.Tensor]:
    """The tensors of a ``state_dict`` in ``module``'s ``state_dict`` order, checked against
    its names and shapes (one line naming the file otherwise)."""
    wanted = module.state_dict()
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or extra:
        raise CheckpointError(
            f"{where} does not fit model.factory's module: missing {missing[:3]}, unexpected "
            f"{extra[:3]}; was it saved from a module model.factory builds?"
        )
    for name, tensor in wanted.items():
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: {name} has shape {tuple(saved[name].shape)}, model.factory's module "
                f"{tuple(tensor.shape)}; check model.kwargs"
            )
    return [saved[name] for name in wanted]


class AttributeStage(Stage):
    """Runs ``method`` on ``models`` (see `Models`); ``payloads`` maps a copy's path to the
    bytes to write there when it is not yet in the run (`AttributeStage.importing`)."""

    what = "tasks"

    def __init__(
        self, config, run: Run, method: str, models: Models,
        payloads: dict[str, bytes] | None = None,
        methods: dict[str, type[Method]] | None = None,
    ) -> None:
        if method not in attributable(methods):
            lookup(method, methods)  # an unknown name: the registry's own line
            raise EstimateError(
                f"attribute runs the gradient methods that read checkpoints "
                f"({', '.join(attributable(methods))}); {method!r} is not one of them"
            )
        if not trains_model(config):
            raise EstimateError("attribute: model.arch null has no module; set model.factory")
        if not models or not all(models):
            raise EstimateError("attribute: give at least one checkpoint per model")
        self.estimator: GradientMethod = lookup(method, methods)(config)
        check_gradient_device(config.gradients)
        self.estimator.check()
        super().__init__(config, run)
        self.method, self.name = method, f"attribute-{method}"
        self.models = [[(str(p), float(lr)) for p, lr in history] for history in models]
        self.payloads = dict(payloads or {})
        self.targets = eval_positions(run, config.estimate.targets)

    @classmethod
    def importing(cls, config, run: Run, method: str, sources, methods=None) -> AttributeStage:
        """From the checkpoints themselves: ``sources`` per model, [(state_dict, lr)] in
        training order."""
        payloads, models = {}, []
        for history in sources:
            models.append([])
            for state, lr in history:
                path = imported_path(state)
                if path not in payloads:
                    buffer = io.BytesIO()
                    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                               buffer)
                    payloads[path] = buffer.getvalue()
                models[-1].append((path, lr))
        return cls(config, run, method, models, payloads, methods)

    @classmethod
    def as_recorded(cls, config, run: Run, method: str) -> AttributeStage:
        """The stage as its marker recorded it (status judges it on the run's copies)."""
        record = read_marker(run, f"attribute-{method}") or {}
        models = record.get("fingerprint", {}).get("models") or []
        return cls(config, run, method, [[tuple(c) for c in m] for m in models])

    # -- the contract ----------------------------------------------------------------------

    def fingerprint(self) -> dict:
        return {
            "method": self.method,
            "gradients": self.config.gradients.model_dump(mode="json", exclude=EXECUTION),
            "models": self.models,
            "targets": self.targets.tolist(),
            "config": self.config.hash,
            **self.estimator.settings(),
        }

    def resources(self) -> TaskResources:
        g = self.config.gradients
        return TaskResources(
            g.num_cpus, g.num_gpus, self.config.resources.task_retries,
            self.config.resources.max_in_flight,
        )

    def outputs(self) -> list[str]:
        copies = sorted({p for history in self.models for p, _ in history})
        writes = self.estimator.writes
        return copies + [
            path for table, path in (("scores", self.run.scores_path(self.method)),
                                     ("self_scores", self.run.self_scores_path(self.method)))
            if table in writes
        ]

    def start(self) -> None:
        for path, content in self.payloads.items():
            if not self.run.fs.isfile(path):
                self.run.fs.write_bytes_atomic(path, content)
        for history in self.models:
            for path, _ in history:
                if not self.run.fs.isfile(path):
                    raise CheckpointError(
                        f"{self.run.fs.display(path)} is missing; run `datamodels attribute` "
                        "again with the checkpoint files"
                    )

    def units(self) -> list[Unit]:
        g, n_train, n_targets = self.config.gradients, self.run.n_train, len(self.targets)
        blocks = [("scores", s, min(n_targets, s + g.targets_per_task))
                  for s in range(0, n_targets, g.targets_per_task)]
        blocks += [("self", s, min(n_train, s + g.train_per_task))
                   for s in range(0, n_train, g.train_per_task)]
        if self.estimator.reweights:
            blocks.append(("reweight", 0, n_train))
        shared = self.estimator.shares_hessian()
        return [
            Unit(f"{kind}-{m:09d}-{start:07d}-{stop:07d}.npy", (kind, m, start, stop),
                 shared=m if shared else None)
            for m in range(len(self.models)) for kind, start, stop in blocks
        ]

    def on_failure(self, unit: Unit, error: BaseException, progress) -> list[Unit]:
        raise EstimateError(
            f"attribute {self.method}: task {unit.name} failed ({error_text(error)}); finished "
            f"parts are kept in {self.run.fs.display(self.part_dir)}, rerun to resume"
        ) from error

    # -- inside a task ---------------------------------------------------------------------

    def setup(self, ctx):
        torch.set_num_threads(max(1, int(self.config.gradients.num_cpus)))
        return ctx.data(self.run, self.config, task_device(self.config.gradients))

    def model_at(self, ctx, data, path: str):
        key = (self.run.uri, path, str(data.train_x.device), self.config.gradients.precision)

        def make():
            module = architecture(self.config.model.arch).build_module(self.config.model, data, 0)
            where = self.run.fs.display(path)
            saved = read_state_dict(self.run.fs.read_bytes(path), where)
            layers = state_dict_layers(saved, module, where)
            return functional_model(self.config, data, layers)

        return key, ctx.cached(("imported", *key), make)

    def compute_shared(self, ctx, model: int):
        data = self.setup(ctx)
        _, fm = self.model_at(ctx, data, self.models[model][-1][0])
        return self.estimator.shared(fm, data.train_x, data.train_y)

    def compute(self, ctx, unit: Unit, shared=None) -> str:
        kind, m, start, stop = unit.payload
        data = self.setup(ctx)
        mask = torch.ones(self.run.n_train, dtype=torch.bool, device=data.train_x.device)
        targets = self.targets[start:stop] if kind == "scores" else None
        history = self.models[m]
        key, model = self.model_at(ctx, data, history[-1][0])
        block = Block(kind, m, m, start, stop, data, mask, targets, ctx.cached, key, model=model)
        if self.estimator.every_checkpoint:
            block.history = [(self.model_at(ctx, data, p)[1].params, lr) for p, lr in history]
        if shared is None and self.estimator.shares_hessian():
            shared = ctx.cached(("hessian", *key, self.config.gradients.damping),
                                lambda: self.compute_shared(ctx, m))
        block.hessian = shared
        buffer = io.BytesIO()
        values = self.estimator.values(block)
        np.save(buffer, values.detach().double().cpu().numpy().astype(np.float32))
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())
        return unit.name

    # -- in the driver -----------------------------------------------------------------------

    def part(self, unit: Unit) -> np.ndarray:
        return np.load(io.BytesIO(self.run.fs.read_bytes(self.part_path(unit))))

    def finish(self) -> dict[str, int]:
        units = self.units()
        missing = [u for u in units if not self.done(u)]
        if missing:
            raise EstimateError(
                f"attribute {self.method}: {len(missing)} of {len(units)} parts missing in "
                f"{self.run.fs.display(self.part_dir)}; run `datamodels attribute` again"
            )
        n, T = self.run.n_train, len(self.targets)
        q = np.ones(n)
        if self.estimator.reweights:  # (mean attribution) ⊙ (mean reweighting)
            q = np.mean([self.part(u) for u in units if u.payload[0] == "reweight"], axis=0)
        totals = {"scores": Moments((T, n)), "self": Moments((n,))}
        for m in range(len(self.models)):
            tables = {"scores": np.zeros((T, n)), "self": np.zeros(n)}
            for u in units:
                kind, model, start, stop = u.payload
                if model == m and kind in tables:
                    tables[kind][start:stop] = self.part(u)
            totals["scores"].add(tables["scores"] * q)
            totals["self"].add(tables["self"] * q)
        written = {"models": len(self.models)}
        if "scores" in self.estimator.writes:
            self.run.write_scores(self.method, self.targets, *totals["scores"].result())
            written["scores"] = T
        if "self_scores" in self.estimator.writes:
            written["self_scores"] = self.run.write_self_scores(
                self.method, *totals["self"].result()
            )
        return written

    def up_to_date(self) -> dict[str, int]:
        return {}


def recorded(config, run: Run, names: Sequence[str]) -> list[AttributeStage]:
    """One stage per ``attribute-<method>`` marker of the run whose method is known."""
    known = attributable()
    return [AttributeStage.as_recorded(config, run, n) for n in names if n in known]
