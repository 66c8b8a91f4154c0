"""The ``estimate`` stage: one estimator of the registry (`datamodels.methods`) into
``scores/<method>.parquet`` (with standard errors) and ``self_scores/<method>.parquet``,
its work laid out from what the method declares it reads (``Method.source``).

* ``plan`` and ``features`` (the retraining estimators, K-NN Shapley): the plan's models
  table (or the examples' inputs) is read once per process; two units, ``scores`` and
  ``self``, each computing and writing its table atomically. Self scores need margins on
  the run's own training examples.
* ``checkpoints`` and ``replay`` (the gradient estimators): units (``scores``, model, block
  of ``gradients.targets_per_task`` targets), (``self``, model, block of
  ``gradients.train_per_task`` training points) and, for a reweighting method (TRAK),
  (``reweight``, model), each a task writing its own part; ``finish`` averages the parts
  over models (stderr = std/√M, running sums: one model's table in memory at a time),
  writes the tables and removes the parts. With the exact solver the units of one model
  share its LU-factored Hessian (``Unit.shared``): the executor computes it once, as a
  task of its own. Tasks ask Ray for ``gradients.num_gpus`` GPUs and compute on CUDA when
  they get one (``gradients.device`` auto), on CPU otherwise. Models: ``logreg`` and
  ``mlp`` as flat float64 functions, every other architecture as its ``nn.Module`` in
  ``gradients.precision`` (``gradients.checkpointed.functional_model``).

Every method's marker is ``_stages/estimate-<method>.json``, its parts
``_parts/estimate-<method>-<digest>/``.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from datamodels.data.beton import decode_resident
from datamodels.data.examples import train_and_eval_index
from datamodels.errors import EstimateError
from datamodels.gradients.checkpointed import functional_model
from datamodels.methods import Block, Features, Method, PlanTable, names
from datamodels.methods import method as lookup
from datamodels.methods.checkpoints import find_checkpoints, find_replayed
from datamodels.methods.devices import check_gradient_device, task_device
from datamodels.methods.moments import Moments
from datamodels.methods.traits import first_plan_of_kind, trains_model
from datamodels.orchestrate.context import local_beton
from datamodels.orchestrate.executor import error_text
from datamodels.stages.base import PARTS_DIR, Stage, TaskResources, Unit
from datamodels.stages.versions import method_versions
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint
from datamodels.store.positions import eval_positions

METHODS = names(per_model=False)  # the retraining methods (what ``api.methods`` reads)
GRADIENT_METHODS = names(per_model=True)
EXECUTION = {  # gradient settings that change how the work runs, not the scores
    "replay_memory_mb",  # the same scores bit for bit, kept or recomputed iterates
    "targets_per_task",
    "train_per_task",
    "chunk_size",
    "num_cpus",
    "num_gpus",
    "device",
    "max_exact_params",
}


class EstimateStage(Stage):
    """Runs the method ``method`` of ``methods`` (default: ``datamodels.methods.METHODS``)."""

    def __init__(
        self, config, run: Run, method: str, methods: dict[str, type[Method]] | None = None
    ) -> None:
        self.methods = methods
        self.estimator = lookup(method, methods)(config)
        self.per_model = self.estimator.per_model
        if self.per_model:
            if not trains_model(config):
                raise EstimateError(
                    f"{method}: model.arch null trains no model, so there is nothing to "
                    "differentiate; use a real architecture"
                )
            check_gradient_device(config.gradients)
        self.estimator.check()
        super().__init__(config, run)
        self.method, self.name = method, f"estimate-{method}"
        self.what = "tasks" if self.per_model else "tables"
        self.written: dict[str, int] = {}
        if self.per_model:
            self.checkpoints = self.find_models()
            self.model_ids = sorted(self.checkpoints)
            self.targets = eval_positions(run, config.estimate.targets)
        else:
            self.plan = self.source_plan()

    def source_plan(self) -> str | None:
        """The plan whose models a retraining method reads (None: no models)."""
        m = self.estimator
        if m.source == "features":
            return None
        if not m.plan_kinds:
            return self.config.estimate.plan
        plan = first_plan_of_kind(self.config, m.plan_kinds)
        if plan is None:
            raise EstimateError(
                f"{self.method} needs a plan of kind '{' or '.join(m.plan_kinds)}' in the "
                f"config (plans: {', '.join(p.name for p in self.config.plans)})"
            )
        return plan.name

    def find_models(self) -> dict[int, list]:
        """model_id -> [(epoch, lr, path)] of the checkpoints a gradient method reads, or
        [("seed", seed)] of the models it replays."""
        m = self.estimator
        if m.source == "replay":
            return find_replayed(self.config, self.planned, self.method, m.model_count())
        return find_checkpoints(
            self.config, self.run, lambda: self.planned, self.method, m.model_count()
        )

    # -- the contract ----------------------------------------------------------------------

    def versions(self) -> dict[str, int]:
        return method_versions([self.method], self.methods)

    def fingerprint(self) -> dict:
        if not self.per_model:
            e = self.config.estimate
            reads = {"targets": e.targets, "plan": self.plan, **self.estimator.settings()}
            return {
                "method": self.method,
                "estimate": reads,  # only what this method reads
                "config": self.config.hash,
                "models": self.run.plan_witness(self.plan) if self.plan else None,
            }
        return {
            "method": self.method,
            "gradients": self.config.gradients.model_dump(mode="json", exclude=EXECUTION),
            "checkpoints": {str(k): v for k, v in self.checkpoints.items()},
            "targets": self.targets.tolist(),
            "config": self.config.hash,
            **self.estimator.settings(),
        }

    def resources(self) -> TaskResources:
        if not self.per_model:
            return super().resources()
        g = self.config.gradients
        return TaskResources(
            g.num_cpus, g.num_gpus, self.config.resources.task_retries,
            self.config.resources.max_in_flight,
        )

    def units(self) -> list[Unit]:
        if self.per_model:
            return self.model_units()
        if self.plan is not None and len(self.run.model_ids(plan=self.plan)) < 2:
            raise EstimateError(
                f"plan '{self.plan}' has fewer than 2 trained models; run `datamodels train` first"
            )
        writes = self.estimator.writes
        units = [Unit("scores")] if "scores" in writes else []
        if self.has_self_scores() and "self_scores" in writes:
            units.append(Unit("self"))
        return units

    def model_units(self) -> list[Unit]:
        """(kind, model, block) units of a gradient method; a model's share its Hessian."""
        g, n_train, n_targets = self.config.gradients, self.run.n_train, len(self.targets)
        shared = self.estimator.shares_hessian()
        blocks = [
            ("scores", s, min(n_targets, s + g.targets_per_task))
            for s in range(0, n_targets, g.targets_per_task)
        ]
        blocks += [
            ("self", s, min(n_train, s + g.train_per_task))
            for s in range(0, n_train, g.train_per_task)
        ]
        if self.estimator.reweights:
            blocks.append(("reweight", 0, n_train))
        return [
            Unit(
                f"{kind}-{m:09d}-{start:07d}-{stop:07d}.npy",
                (kind, m, slot, start, stop),
                shared=m if shared else None,
            )
            for slot, m in enumerate(self.model_ids)
            for kind, start, stop in blocks
        ]

    def done(self, unit: Unit) -> bool:
        # a retraining unit writes its final table; the marker says when both are current
        return super().done(unit) if self.per_model else False

    def outputs(self) -> list[str]:
        writes = self.estimator.writes
        paths = [self.run.scores_path(self.method)] if "scores" in writes else []
        if "self_scores" in writes and (self.per_model or self.has_self_scores()):
            paths.append(self.run.self_scores_path(self.method))
        return paths

    def has_self_scores(self) -> bool:
        """Whether the run has margins on its own training examples (for the diagonal)."""
        return len(eval_positions(self.run, "train")) == self.run.n_train

    def on_result(self, unit: Unit, result, progress) -> list[Unit]:
        if not self.per_model:
            self.written[("self_scores" if unit.name == "self" else "scores")] = result
        return super().on_result(unit, result, progress)

    def on_failure(self, unit: Unit, error: BaseException, progress) -> list[Unit]:
        if not self.per_model:
            return super().on_failure(unit, error, progress)
        raise EstimateError(
            f"{self.method}: task {unit.name} failed ({error_text(error)}); finished parts are "
            f"kept in {self.run.fs.display(self.part_dir)}, rerun to resume"
        ) from error

    def up_to_date(self) -> dict[str, int]:
        return {}

    # -- retraining methods: the plan's table or the features, one unit per table ------------

    def inputs(self, ctx) -> PlanTable | Features:
        """What a retraining method computes from, read once per process."""
        if self.estimator.source == "features":
            beton = local_beton(self.run, self.config.hash)
            features, labels = ctx.cached(("decoded", beton), lambda: decode_resident(beton))
            train_index, eval_index = train_and_eval_index(self.run.examples())
            flat = features.reshape(len(features), -1).astype(np.float64)
            return Features(flat, labels, train_index, eval_index)

        def read() -> PlanTable:
            ids = self.run.model_ids(plan=self.plan)
            masks, margins = self.run.masks_and_margins(plan=self.plan)
            rows = self.planned.select_ids(ids)
            plan = next((p for p in self.config.plans if p.name == self.plan), None)
            # alpha from the plan (float64, exactly the grid's nodes), not the stored float32
            return PlanTable(ids, masks, margins, rows.alpha, rows, plan)

        return ctx.cached(("models", self.run.uri, self.plan, self.digest), read)

    def compute(self, ctx, unit: Unit, shared=None):
        if self.per_model:
            return self.compute_block(ctx, unit, shared)
        if unit.name == "scores":
            targets = eval_positions(self.run, self.config.estimate.targets)
            scores = self.estimator.scores(self.inputs(ctx), targets)
            self.run.write_scores(self.method, targets, scores.values, scores.stderr,
                                 versions=self.versions())
            return len(targets)
        train = eval_positions(self.run, "train")
        values, stderr = self.estimator.self_scores(self.inputs(ctx), train)
        return self.run.write_self_scores(self.method, values, stderr, self.versions())

    # -- gradient methods: inside a task -----------------------------------------------------

    def setup(self, ctx):
        torch.set_num_threads(max(1, int(self.config.gradients.num_cpus)))
        return ctx.data(self.run, self.config, task_device(self.config.gradients))

    def model_key(self, data, path: str) -> tuple:
        """What a cached model depends on: the checkpoint, the device and the precision (a
        worker process may serve CPU and CUDA, fp32 and fp64 settings one after another)."""
        return (self.run.uri, path, str(data.train_x.device), self.config.gradients.precision)

    def model_at(self, ctx, data, path: str):
        layers = lambda: load_checkpoint(self.run.fs, path)["layers"]  # noqa: E731
        return ctx.cached(
            ("checkpoint", *self.model_key(data, path)),
            lambda: functional_model(self.config, data, layers()),
        )

    def subset(self, ctx, data, model_id: int) -> torch.Tensor:
        """bool[n_train] training subset of the model, read from its row in ``models/``."""
        mask = ctx.cached(
            ("mask", self.run.uri, model_id), lambda: self.run.masks_of(np.array([model_id]))[0]
        )
        return torch.from_numpy(mask).to(data.train_x.device)

    def compute_shared(self, ctx, model_id: int):
        """The model's shared object (its factored exact Hessian), handed to its units."""
        data = self.setup(ctx)
        model = self.model_at(ctx, data, self.checkpoints[model_id][-1][2])
        mask = self.subset(ctx, data, model_id)
        return self.estimator.shared(model, data.train_x[mask], data.train_y[mask])

    def compute_block(self, ctx, unit: Unit, shared=None) -> str:
        kind, model_id, slot, start, stop = unit.payload
        data, m = self.setup(ctx), self.estimator
        targets = self.targets[start:stop] if kind == "scores" else None
        block = Block(
            kind, model_id, slot, start, stop, data, self.subset(ctx, data, model_id),
            targets, ctx.cached, (self.run.uri, model_id, str(data.train_x.device)),
        )
        if m.source == "replay":
            block.seed, block.planned = self.checkpoints[model_id][0][1], self.planned
            return self.write_part(unit, m.values(block))
        history = self.checkpoints[model_id]
        block.key = self.model_key(data, history[-1][2])
        block.model = self.model_at(ctx, data, history[-1][2])
        if m.every_checkpoint:
            block.history = [(self.model_at(ctx, data, p).params, lr) for _, lr, p in history]
        if shared is None and m.shares_hessian():
            shared = ctx.cached(
                ("hessian", *block.key, self.config.gradients.damping),
                lambda: self.compute_shared(ctx, model_id),
            )
        block.hessian = shared
        return self.write_part(unit, m.values(block))

    def write_part(self, unit: Unit, values: torch.Tensor) -> str:
        buffer = io.BytesIO()
        np.save(
            buffer, values.detach().double().cpu().numpy().astype(np.float32)
        )  # what the tables keep
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())
        return unit.name

    # -- gradient methods: the reduction -------------------------------------------------------

    def part(self, unit: Unit) -> np.ndarray:
        return np.load(io.BytesIO(self.run.fs.read_bytes(self.part_path(unit))))

    def finish(self) -> dict[str, int]:
        """Retraining: the rows each unit wrote. Gradient: average the parts over models
        (running sums: one model's table in memory at a time), write scores/ and
        self_scores/, remove the parts."""
        if not self.per_model:
            return self.written
        units = self.units()
        missing = [u for u in units if not self.done(u)]
        if missing:
            raise EstimateError(
                f"{self.method}: {len(missing)} of {len(units)} parts missing in "
                f"{self.run.fs.display(self.part_dir)}; rerun `datamodels estimate {self.run.uri} "
                f"-m {self.method}`"
            )
        n, T = self.run.n_train, len(self.targets)
        q = np.ones(n)
        if self.estimator.reweights:  # (mean attribution) ⊙ (mean reweighting)
            q = np.mean([self.part(u) for u in units if u.payload[0] == "reweight"], axis=0)
        totals = {"scores": Moments((T, n)), "self": Moments((n,))}
        held = self.estimator.held_points(
            lambda: self.planned, np.array(self.model_ids), self.run.masks_of
        )
        for m in self.model_ids:
            tables = {"scores": np.zeros((T, n)), "self": np.zeros(n)}
            for u in units:
                kind, model_id, _, start, stop = u.payload
                if model_id == m and kind in tables:
                    tables[kind][start:stop] = self.part(u)
            totals["scores"].add(tables["scores"] * q)
            totals["self"].add(tables["self"] * q, None if held is None else held[m])
        score_mean, score_err = totals["scores"].result()
        self_mean, self_err = totals["self"].result()
        self.run.write_scores(self.method, self.targets, score_mean, score_err,
                             versions=self.versions())
        return {
            "scores": T,
            "self_scores": self.run.write_self_scores(self.method, self_mean, self_err,
                                                      self.versions()),
            "models": len(self.model_ids),
        }

    def remove_old_parts(self) -> None:
        super().remove_old_parts()
        if not self.per_model:
            return
        for entry in self.run.fs.entries(PARTS_DIR):  # the parts and markers of older runs
            if entry.startswith(f"{self.method}-"):
                path = f"{PARTS_DIR}/{entry}"
                if entry.endswith(".done"):
                    self.run.fs.filesystem.delete_file(self.run.fs.join(path))
                else:
                    self.run.fs.delete_dir(path)
