"""The ``estimate`` stage for gradient estimators: work units over saved checkpoints, each a
task that writes its own part, then one reduction into ``scores/<method>.parquet`` and
``self_scores/<method>.parquet``.

Models: the first ``gradients.models`` by id among those with checkpoints
(``gradients.trak_models`` for TRAK). Per (target t, training point z):

* influence (last checkpoint): −(1/n)∇u_tᵀ(H+λI)⁻¹∇(ℓ+R)(z)
* influence_pert (last checkpoint): (∂u_t/∂x_z)·x_z
* tracin (every checkpoint): −Σ_k η_k Δe_k ∇u_t·∇ℓ(z)
* representer (last checkpoint): α_z·(f_z·f_t) on the margin classes
* trak (last checkpoint): TRAK with projection ``gradients.proj_dim``
* metagradient (no checkpoint: the run is replayed from the model's seed and the recipe):
  ∂u_t/∂w_z, the derivative of the trained margin in z's loss weight through every step
  (``gradients.metagradient``); ``logreg``: the influence function without damping
* hydra (mlp): the metagradient with the Hessian terms dropped (HyDRA, ``gradients.hydra``)

n and H are each model's own training subset (its mask in ``models/``); every training
point is scored (a point outside the subset gets the effect of adding it). Scores of several
models are averaged (stderr = std/√M); TRAK averages attribution and reweighting separately
(Park et al. 2023, Algorithm 1). ``influence_pert`` scores the first-order change of u_t when
training input z moves from the mean input (0 after standardisation) to its value. TracIn
weighs checkpoint k by its mean learning rate η_k times the epochs Δe_k since the previous one.

Self scores (mislabel detection), per method: influence with u = −loss on the point itself,
influence_pert ‖∂(−ℓ_z)/∂x_z‖₁, TracIn Σ_k η_k Δe_k‖∇ℓ(z)‖², representer α_{z,y_z}‖f_z‖²,
TRAK τ(z)_z, metagradient (and hydra) ∂u_z/∂w_z.

Units: (``scores``, model, target block of ``gradients.targets_per_task``), (``self``,
model, train block of ``gradients.train_per_task``) and, for TRAK, (``reweight``, model).
With the exact solver the units of one model share its LU-factored Hessian
(``Unit.shared``): the executor computes it once, as a task of its own.

Models: ``logreg`` and ``mlp`` as flat float64 functions; every other architecture as the
``nn.Module`` of ``build_module`` through ``torch.func.functional_call`` in eval mode
(``gradients.module``). Devices: tasks ask Ray for ``gradients.num_gpus`` GPUs and compute
on CUDA when they get one (``gradients.device`` auto), on CPU otherwise.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from datamodels.errors import CheckpointError, ConfigError, EstimateError
from datamodels.gradients.checkpointed import (
    block_values,
    factored_hessian,
    functional_model,
    projection_precision,
)
from datamodels.gradients.metagradient import (
    logreg_metagradient_scores,
    metagradient_scores,
    replay_mlp,
)
from datamodels.gradients.model import fit_logreg, logreg_model
from datamodels.orchestrate.context import worker_name
from datamodels.orchestrate.executor import error_text
from datamodels.plans import checkpoint_epochs, checkpoint_ids, training_weights
from datamodels.stages.base import PARTS_DIR, Stage, TaskResources, Unit
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index
from datamodels.store.positions import eval_positions

GRADIENT_METHODS = (
    "influence", "influence_pert", "tracin", "representer", "trak", "metagradient", "hydra"
)
# methods that replay the training run from its seed instead of reading checkpoints
REPLAYED = ("metagradient", "hydra")
# what the metagradient can replay exactly: the batched trainer's MLP, a converged logreg
METAGRADIENT_ARCHS = ("mlp", "logreg")
EXECUTION = {
    "replay_memory_mb",  # the same scores bit for bit, kept or recomputed iterates
    "targets_per_task",
    "train_per_task",
    "chunk_size",
    "num_cpus",
    "num_gpus",
    "device",
    "max_exact_params",
}


def planned_device(gradients) -> str:
    """The device the tasks are meant to use (auto: CUDA exactly when they ask for GPUs)."""
    if gradients.device == "auto":
        return "cuda" if gradients.num_gpus > 0 else "cpu"
    return gradients.device


def check_gradient_device(gradients) -> None:
    """Refuse ``gradients.device=cuda`` where no task could get a GPU: no CUDA here and no
    GPU asked of Ray (the driver of a cluster with GPU workers may itself have none)."""
    if gradients.device == "cuda" and gradients.num_gpus == 0 and not torch.cuda.is_available():
        raise ConfigError(
            "gradients.device=cuda but this machine has no CUDA device and gradients.num_gpus "
            "is 0; use gradients.device auto or cpu, or set gradients.num_gpus > 0 on a Ray "
            "cluster with GPUs"
        )


def task_device(gradients) -> str:
    """The device of this task: auto = CUDA when GPUs were asked for and one is visible."""
    if gradients.device == "auto":
        return "cuda" if gradients.num_gpus > 0 and torch.cuda.is_available() else "cpu"
    if gradients.device == "cuda" and not torch.cuda.is_available():
        raise EstimateError(
            f"gradients.device=cuda but worker {worker_name()} sees no CUDA device; set "
            "gradients.num_gpus > 0 so that Ray places the tasks on GPUs, or use device auto"
        )
    return gradients.device


class GradientStage(Stage):
    what = "tasks"

    def __init__(self, config, run: Run, method: str) -> None:
        if method not in GRADIENT_METHODS:
            raise EstimateError(
                f"unknown gradient method {method!r}; choose from: {', '.join(GRADIENT_METHODS)}"
            )
        if config.model.arch == "null":
            raise EstimateError(
                f"{method}: model.arch null trains no model, so there is nothing to "
                "differentiate; use a real architecture"
            )
        check_gradient_device(config.gradients)
        super().__init__(config, run)
        self.method, self.name = method, f"estimate-{method}"
        self.checkpoints = (
            self.find_replayed() if method in REPLAYED else self.find_checkpoints()
        )
        self.model_ids = sorted(self.checkpoints)
        self.targets = eval_positions(run, config.estimate.targets)

    def find_checkpoints(self) -> dict[int, list[tuple[int, float, str]]]:
        """model_id -> [(epoch, lr, path)] of the models this method uses, checked present."""
        run, config = self.run, self.config
        index = read_checkpoint_index(run.fs)
        fix = f"`datamodels train {run.uri}/config.yaml --out {run.uri}`"
        if config.transfer is not None:
            raise EstimateError(
                f"{self.method} differentiates one model's training examples; a transfer "
                "run's training points are source classes (use datamodels, downsampling, "
                "banzhaf)"
            )
        if index.empty:
            raise EstimateError(
                f"{self.method} needs saved checkpoints and {run.uri} has none; add them with "
                f"{fix[:-1]} --set checkpoints.plan=train --set checkpoints.models=20` "
                "(retrains just those models, same seeds)"
            )
        if config.checkpoints.plan is not None:  # only what these settings save (older files stay)
            planned = self.planned
            index = index[
                index["model_id"].isin(checkpoint_ids(config, planned))
                & index["epoch"].isin(checkpoint_epochs(config))
            ]
        wanted = config.gradients.trak_models if self.method == "trak" else config.gradients.models
        model_ids = sorted(int(m) for m in index["model_id"].unique())[:wanted]
        if not model_ids:
            raise EstimateError(
                f"{self.method}: no checkpoints match "
                f"checkpoints.plan={config.checkpoints.plan!r}; "
                f"rerun {fix} to save them"
            )
        found = {
            m: [
                (int(r.epoch), float(r.lr), str(r.path))
                for r in index[index["model_id"] == m].itertuples(index=False)
            ]
            for m in model_ids
        }
        for m, history in found.items():
            for _, _, path in history:
                if not run.fs.isfile(path):
                    raise CheckpointError(
                        f"checkpoint {run.fs.display(path)} (model {m}) is missing; rerun {fix} "
                        "with the same checkpoints settings to recreate it (same seeds, same model)"
                    )
        return found

    def find_replayed(self) -> dict[int, list]:
        """model_id -> [("seed", seed)] of the models the metagradient replays: the first
        ``gradients.models`` of ``checkpoints.plan`` (their saved files are not needed)."""
        config, method = self.config, self.method
        archs = METAGRADIENT_ARCHS if method == "metagradient" else ("mlp",)
        if config.model.arch not in archs:
            raise EstimateError(
                f"{method}: model.arch={config.model.arch!r} cannot be replayed; it "
                f"differentiates the batched trainer's SGD run of {' or '.join(archs)}: use "
                "tracin or trak for this model"
            )
        if config.checkpoints.plan is None:
            raise EstimateError(
                f"{method} replays the first gradients.models models of checkpoints.plan; "
                "set one, e.g. --set checkpoints.plan=train"
            )
        ids = checkpoint_ids(config, self.planned)[: config.gradients.models]
        if not len(ids):
            raise EstimateError(
                f"{method}: plan {config.checkpoints.plan!r} has no models; name a plan of "
                "the config in checkpoints.plan"
            )
        seeds = self.planned.select_ids(ids).seed
        return {int(m): [("seed", int(s))] for m, s in zip(ids, seeds, strict=True)}

    # -- the contract ----------------------------------------------------------------------

    def fingerprint(self) -> dict:
        fingerprint = {
            "method": self.method,
            "gradients": self.config.gradients.model_dump(mode="json", exclude=EXECUTION),
            "checkpoints": {str(k): v for k, v in self.checkpoints.items()},
            "targets": self.targets.tolist(),
            "config": self.config.hash,
        }
        if self.method in REPLAYED:  # self scores: the mean over the models holding a point
            fingerprint["self_scores"] = "held"
        if self.method == "trak":  # CPU and CUDA generators draw different projections
            device = planned_device(self.config.gradients)
            fingerprint["projection"] = [device, projection_precision(self.config, device)]
        return fingerprint


    def resources(self) -> TaskResources:
        g = self.config.gradients
        return TaskResources(
            g.num_cpus,
            g.num_gpus,
            self.config.resources.task_retries,
            self.config.resources.max_in_flight,
        )

    def needs_hessian(self) -> bool:
        return (
            self.method in ("influence", "influence_pert")
            and self.config.gradients.solver == "exact"
        )

    def units(self) -> list[Unit]:
        g, n_train, n_targets = self.config.gradients, self.run.n_train, len(self.targets)
        shared = self.needs_hessian()
        blocks = [
            ("scores", s, min(n_targets, s + g.targets_per_task))
            for s in range(0, n_targets, g.targets_per_task)
        ]
        blocks += [
            ("self", s, min(n_train, s + g.train_per_task))
            for s in range(0, n_train, g.train_per_task)
        ]
        if self.method == "trak":
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

    def on_failure(self, unit: Unit, error: BaseException, progress) -> list[Unit]:
        raise EstimateError(
            f"{self.method}: task {unit.name} failed ({error_text(error)}); finished parts are "
            f"kept in {self.run.fs.display(self.part_dir)}, rerun to resume"
        ) from error

    # -- inside a task -----------------------------------------------------------------------

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
        """The model's factored exact Hessian (``Unit.shared``), handed to its units."""
        data = self.setup(ctx)
        model = self.model_at(ctx, data, self.checkpoints[model_id][-1][2])
        limit = self.config.gradients.max_exact_params
        if model.num_params > limit:
            raise EstimateError(
                f"{self.method}: the model has {model.num_params} parameters, above "
                f"gradients.max_exact_params={limit} for the exact Hessian; use --set "
                "gradients.solver=cg (or lissa)"
            )
        mask = self.subset(ctx, data, model_id)
        return factored_hessian(self.config, model, data.train_x[mask], data.train_y[mask])

    def compute(self, ctx, unit: Unit, shared=None) -> str:
        kind, model_id, slot, start, stop = unit.payload
        data = self.setup(ctx)
        if self.method in REPLAYED:
            return self.write_part(unit, self.metagradient_values(ctx, data, unit))
        history = self.checkpoints[model_id]
        path = history[-1][2]
        model = self.model_at(ctx, data, path)
        if self.method == "representer" and model.head_io is None:
            raise EstimateError(
                f"representer: model.arch={self.config.model.arch!r} has no usable last linear "
                f"layer ({model.head_problem}); representer points decompose that layer, use "
                "tracin or trak for this model"
            )
        if shared is None and self.needs_hessian():
            shared = ctx.cached(
                ("hessian", *self.model_key(data, path), self.config.gradients.damping),
                lambda: self.compute_shared(ctx, model_id),
            )
        tx = ty = None
        if kind == "scores":
            t = torch.as_tensor(np.array(self.targets[start:stop]), device=data.train_x.device)
            tx, ty = data.eval_x[t], data.eval_y[t]
        ckpts = (
            [(self.model_at(ctx, data, p).params, lr) for _, lr, p in history]
            if self.method == "tracin"
            else None
        )
        values = block_values(
            self.config,
            self.method,
            kind,
            model,
            ckpts,
            data,
            self.subset(ctx, data, model_id),
            slice(start, stop),
            tx,
            ty,
            shared,
            ctx.cached,
            ("trak", *self.model_key(data, path)),
            slot,
        )
        return self.write_part(unit, values)

    def write_part(self, unit: Unit, values: torch.Tensor) -> str:
        buffer = io.BytesIO()
        np.save(
            buffer, values.detach().double().cpu().numpy().astype(np.float32)
        )  # what the tables keep
        self.run.fs.write_bytes_atomic(self.part_path(unit), buffer.getvalue())
        return unit.name

    def metagradient_values(self, ctx, data, unit: Unit) -> torch.Tensor:
        """One unit of ``metagradient``: [targets, n_train] scores or [rows] self scores, from
        the model's replayed run (cached per worker: every unit of a model shares it)."""
        kind, model_id, _, start, stop = unit.payload
        seed = self.checkpoints[model_id][0][1]
        mask = self.subset(ctx, data, model_id).cpu().numpy()
        config, device = self.config, str(data.train_x.device)
        if kind == "scores":
            t = torch.as_tensor(np.array(self.targets[start:stop]), device=data.train_x.device)
            tx, ty = data.eval_x[t].double(), data.eval_y[t]
        else:
            tx, ty = data.train_x[start:stop].double(), data.train_y[start:stop]
        if config.model.arch == "logreg":
            model = ctx.cached(
                ("metagradient-logreg", self.run.uri, model_id, device),
                lambda: self.refit_logreg(data, mask),
            )
            table = logreg_metagradient_scores(model, data.train_x, data.train_y, mask, tx, ty)
        else:
            # a single_model plan's model walks the full set's order, dropped points weighted 0
            order, weights = training_weights(
                config, self.planned.select_ids(np.array([model_id])), mask[None]
            )
            weights = None if weights is None else weights[0]
            trajectory = ctx.cached(
                ("metagradient-replay", self.run.uri, model_id, device),
                lambda: replay_mlp(
                    data.train_x, data.train_y, order[0], seed, config.model, config.train,
                    data.num_classes, weights,
                    memory_bytes=config.gradients.replay_memory_mb * 2**20,
                ),
            )
            precision = config.gradients.adjoint_precision
            table = metagradient_scores(
                trajectory, data.train_x, data.train_y, tx, ty, weights,
                hessian=self.method == "metagradient",  # hydra: HyDRA drops the Hessian
                dtype=torch.float32 if precision == "fp32" else torch.float64,
            )
        if kind == "scores":
            return table
        return table[torch.arange(stop - start), torch.arange(start, stop)]

    def refit_logreg(self, data, mask: np.ndarray):
        """The model's converged ``logreg`` (a pure function of its subset: DESIGN §4)."""
        subset = torch.from_numpy(mask).to(data.train_x.device)
        recipe = self.config.train
        params = fit_logreg(
            data.train_x[subset], data.train_y[subset], data.num_classes, recipe.weight_decay,
            recipe.tolerance, recipe.max_iter,
        )
        return logreg_model(params, data.in_dim, data.num_classes, recipe.weight_decay)

    # -- the reduction -----------------------------------------------------------------------

    def part(self, unit: Unit) -> np.ndarray:
        return np.load(io.BytesIO(self.run.fs.read_bytes(self.part_path(unit))))

    def finish(self) -> dict[str, int]:
        """Average the parts over models (running sums: one model's table in memory at a
        time), write scores/ and self_scores/, remove the parts."""
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
        if self.method == "trak":  # (mean attribution) ⊙ (mean reweighting), Algorithm 1
            q = np.mean([self.part(u) for u in units if u.payload[0] == "reweight"], axis=0)
        totals = {"scores": Moments((T, n)), "self": Moments((n,))}
        held = self.replayed_points()
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
        self.run.write_scores(self.method, self.targets, score_mean, score_err)
        written = {
            "scores": T,
            "self_scores": self.run.write_self_scores(self.method, self_mean, self_err),
            "models": len(self.model_ids),
        }
        return written

    def replayed_points(self) -> dict[int, np.ndarray] | None:
        """For the replayed MLP methods: model_id -> bool[n_train], the points its run holds
        in its batches (its mask; every point for a ``single_model`` model, whose dropped
        points are in the batches at weight 0). A point outside them is in no batch: its
        metagradient is 0 by construction, not a measurement, so a self score is averaged
        over the models that hold the point. None for every other method."""
        if self.method not in REPLAYED or self.config.model.arch != "mlp":
            return None
        ids = np.array(self.model_ids)
        order, _ = training_weights(
            self.config, self.planned.select_ids(ids), self.run.masks_of(ids)
        )
        return {int(m): order[k] for k, m in enumerate(ids)}

    def outputs(self) -> list[str]:
        return [self.run.scores_path(self.method), self.run.self_scores_path(self.method)]

    def remove_old_parts(self) -> None:
        super().remove_old_parts()
        for entry in self.run.fs.entries(PARTS_DIR):  # the parts and markers of older runs
            if entry.startswith(f"{self.method}-"):
                path = f"{PARTS_DIR}/{entry}"
                if entry.endswith(".done"):
                    self.run.fs.filesystem.delete_file(self.run.fs.join(path))
                else:
                    self.run.fs.delete_dir(path)

    def up_to_date(self) -> dict[str, int]:
        return {}


class Moments:
    """Running mean and standard error of the mean over models; with ``where`` (bool, the
    shape of the values) each entry is averaged over the models that hold it only (an entry
    no model holds: 0)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count, self.total, self.squares = 0, np.zeros(shape), np.zeros(shape)

    def add(self, values: np.ndarray, where: np.ndarray | None = None) -> None:
        if where is None:
            self.count = self.count + 1
        else:
            self.count = self.count + where.astype(np.int64)
            values = np.where(where, values, 0.0)
        self.total += values
        self.squares += values * values

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        count = np.maximum(self.count, 1)
        mean = self.total / count
        if np.max(self.count) < 2:
            return mean, None
        spread = np.maximum(self.squares / count - mean * mean, 0.0)
        var = np.where(self.count >= 2, spread * count / np.maximum(count - 1, 1), 0.0)
        return mean, np.sqrt(var / count)
