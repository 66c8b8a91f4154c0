"""The ``estimate`` stage for gradient estimators: work units over saved checkpoints, each a
Ray task (``datamodels.orchestrate.estimate``) that writes its own part, then one reduction
into ``scores/<method>.parquet`` and ``self_scores/<method>.parquet``.

| method          | models (first by id among those with checkpoints) | per (target, train point)            |
|-----------------|---------------------------------------------------|--------------------------------------|
| influence       | ``gradients.models``, last checkpoint              | −(1/n)∇u_tᵀ(H+λI)⁻¹∇(ℓ+R)(z)          |
| influence_pert  | the same                                          | (∂u_t/∂x_z)·x_z                       |
| tracin          | the same, every checkpoint                         | −Σ_k η_k Δe_k ∇u_t·∇ℓ(z)              |
| representer     | the same, last checkpoint                          | α_z·(f_z·f_t) on the margin classes  |
| trak            | ``gradients.trak_models``, last checkpoint         | TRAK, projection ``gradients.proj_dim`` |

n and H are each model's own training subset (its mask); every training point is scored
(a point outside the subset gets the effect of adding it). Scores of several models are
averaged (stderr = std/√M); TRAK averages attribution and reweighting separately (Park et
al. 2023, Algorithm 1). ``influence_pert`` scores the first-order change of u_t when training
input z moves from the mean input (0 after standardisation) to its value: positive = z's
content raises the target (``datamodels attack`` follows ∂u_t/∂x_z itself). TracIn weighs
checkpoint k by its mean learning rate η_k times the epochs Δe_k since the previous one.

Self scores (mislabel detection), per method: influence with u = −loss on the point itself,
influence_pert ‖∂(−ℓ_z)/∂x_z‖₁, TracIn Σ_k η_k Δe_k‖∇ℓ(z)‖², representer α_{z,y_z}‖f_z‖²,
TRAK τ(z)_z.

Units: (``scores``, model, target block of ``gradients.targets_per_task``), (``self``,
model, train block of ``gradients.train_per_task``) and, for TRAK, (``reweight``, model).
With the exact solver, one more task per model builds and LU-factors its Hessian, which the
model's units take as an argument. Each unit writes ``_parts/<method>-<fingerprint>/<unit>.npy``
(float32) atomically; a rerun computes only the missing parts (the fingerprint covers the
settings that change results, the checkpoints and the targets, so changed settings never mix
with old parts); the reduction deletes the folder and leaves ``<fingerprint>.done``, so the
same settings again do nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from datamodels.config import Config, config_from_yaml_text
from datamodels.estimate import EstimateError, _positions, write_self_scores
from datamodels.gradients import (
    ConjugateGradient,
    Exact,
    FunctionalModel,
    Lissa,
    Solver,
    logreg_model,
    mlp_model,
)
from datamodels.gradients.grads import exact_hessian
from datamodels.gradients.ihvp import FactoredHessian
from datamodels.gradients.influence import influence_scores, influence_self_scores
from datamodels.gradients.influence_pert import influence_pert_scores, influence_pert_self_scores
from datamodels.gradients.representer import representer_scores, representer_self_scores
from datamodels.gradients.tracin import tracin_scores, tracin_self_scores
from datamodels.gradients.trak import (
    kernel_inverse,
    model_projection,
    one_minus_p,
    trak_attribution,
    trak_features,
    trak_leverage,
)
from datamodels.plans import checkpoint_epochs, checkpoint_ids, masks_for, plan_models
from datamodels.store import Run
from datamodels.store.checkpoints import CheckpointError, load_checkpoint, read_checkpoint_index
from datamodels.train.data import TrainData

GRADIENT_METHODS = ("influence", "influence_pert", "tracin", "representer", "trak")
PARTS_DIR = "_parts"
_PERT_ELEMENTS = 1 << 24  # bound on T·points·input_dim per influence_pert chunk


@dataclass(frozen=True)
class Unit:
    kind: str  # "scores" | "self" | "reweight"
    model_id: int
    slot: int  # the model's position in the job (TRAK's projection seed offset)
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.model_id:09d}-{self.start:07d}-{self.stop:07d}.npy"


@dataclass
class Job:
    """Everything a task needs besides the run's data (small enough to send with each task)."""

    method: str
    targets: np.ndarray  # int64 eval positions scored
    model_ids: list[int]
    checkpoints: dict[int, list[tuple[int, float, str]]]  # model_id -> [(epoch, lr, path)] by epoch
    part_dir: str
    units: list[Unit] = field(default_factory=list)

    def part_path(self, unit: Unit) -> str:
        return f"{self.part_dir}/{unit.name}"


def plan_job(config: Config, run: Run, method: str) -> Job:
    """The units of ``method`` on this run (which of them are done is read from ``_parts``)."""
    if method not in GRADIENT_METHODS:
        raise EstimateError(f"unknown gradient method {method!r}; choose from: {', '.join(GRADIENT_METHODS)}")
    if config.model.arch not in ("logreg", "mlp"):
        raise EstimateError(f"{method}: gradient estimators support model.arch logreg and mlp; got {config.model.arch!r}")
    index = read_checkpoint_index(run.fs)
    if index.empty:
        raise EstimateError(
            f"{method} needs saved checkpoints and {run.uri} has none; add them with "
            f"`datamodels train {run.uri}/config.yaml --out {run.uri} --set checkpoints.plan=train "
            "--set checkpoints.models=20` (retrains just those models, same seeds)"
        )
    g = config.gradients
    if config.checkpoints.plan is not None:  # only what the current settings save (an older setting's files stay)
        planned = plan_models(config, run.n_train)
        index = index[index["model_id"].isin(checkpoint_ids(config, planned))
                      & index["epoch"].isin(checkpoint_epochs(config))]
    wanted = g.trak_models if method == "trak" else g.models
    model_ids = sorted(int(m) for m in index["model_id"].unique())[:wanted]
    if not model_ids:
        raise EstimateError(f"{method}: no checkpoints match checkpoints.plan={config.checkpoints.plan!r}; rerun "
                            f"`datamodels train {run.uri}/config.yaml --out {run.uri}` to save them")
    checkpoints = {
        m: [(int(r.epoch), float(r.lr), str(r.path)) for r in index[index["model_id"] == m].itertuples(index=False)]
        for m in model_ids
    }
    for m in model_ids:
        for _, _, path in checkpoints[m]:
            if not run.fs.isfile(path):
                raise CheckpointError(f"checkpoint {run.fs.display(path)} (model {m}) is missing; rerun `datamodels "
                                      f"train {run.uri}/config.yaml --out {run.uri}` with the same checkpoints settings "
                                      "to recreate it (same seeds, same model)")
    targets = _positions(run, config.estimate.targets)
    n_train = run.n_train
    execution = {"targets_per_task", "train_per_task", "chunk_size", "num_cpus", "num_gpus", "max_exact_params"}
    settings = {
        "method": method, "gradients": g.model_dump(mode="json", exclude=execution),
        "checkpoints": {str(k): v for k, v in checkpoints.items()}, "targets": targets.tolist(), "config": config.hash,
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    job = Job(method, targets, model_ids, checkpoints, f"{PARTS_DIR}/{method}-{fingerprint}")
    for slot, m in enumerate(model_ids):
        for start in range(0, len(targets), g.targets_per_task):
            job.units.append(Unit("scores", m, slot, start, min(len(targets), start + g.targets_per_task)))
        for start in range(0, n_train, g.train_per_task):
            job.units.append(Unit("self", m, slot, start, min(n_train, start + g.train_per_task)))
        if method == "trak":
            job.units.append(Unit("reweight", m, slot, 0, n_train))
    return job


def done_marker(job: Job) -> str:
    return f"{job.part_dir}.done"


def is_finished(run: Run, job: Job) -> bool:
    """The score tables were reduced from exactly this job's settings, checkpoints and targets."""
    return run.fs.isfile(done_marker(job)) and run.fs.isfile(Run.scores_path(job.method))


def missing_units(run: Run, job: Job) -> list[Unit]:
    present = set(run.fs.listdir(job.part_dir, ".npy"))
    return [u for u in job.units if u.name not in present]


# -- inside a task ----------------------------------------------------------------------------

_CACHE: dict[tuple, object] = {}


def _cached(key: tuple, make):
    if key not in _CACHE:
        if len(_CACHE) > 8:
            _CACHE.clear()
        _CACHE[key] = make()
    return _CACHE[key]


def functional_model(config: Config, data: TrainData, layers: list[torch.Tensor]) -> FunctionalModel:
    """A checkpoint's layers as a ``FunctionalModel`` on the data's device (float64)."""
    layers = [t.to(data.train_x.device) for t in layers]
    if config.model.arch == "logreg":
        flat = torch.cat([layers[0].reshape(-1), layers[1].reshape(-1)])
        return logreg_model(flat, data.in_dim, data.num_classes, config.train.weight_decay)
    return mlp_model(layers, config.train.weight_decay, config.train.label_smoothing)


def solver_for(config: Config) -> Solver:
    g = config.gradients
    if g.solver == "exact":
        return Exact(damping=g.damping)
    if g.solver == "cg":
        return ConjugateGradient(damping=g.damping, tol=g.cg_tol, max_iter=g.cg_max_iter)
    return Lissa(damping=g.damping, scale=g.lissa_scale, depth=g.lissa_depth, repeats=g.lissa_repeats,
                 batch_size=g.lissa_batch_size, seed=config.seed)


def _model_at(run: Run, config: Config, data: TrainData, path: str) -> FunctionalModel:
    return _cached(("model", run.uri, path), lambda: functional_model(config, data, load_checkpoint(run.fs, path)["layers"]))


def needs_hessian(config: Config, method: str) -> bool:
    """Whether ``method``'s units share one exact Hessian per model (a task of its own)."""
    return method in ("influence", "influence_pert") and config.gradients.solver == "exact"


def _subset(config: Config, data: TrainData, model_id: int) -> torch.Tensor:
    return torch.from_numpy(masks_for(config, _planned(config, data, model_id), data.n_train)[0]).to(data.train_x.device)


def model_hessian(config: Config, run: Run, data: TrainData, job: Job, model_id: int) -> FactoredHessian:
    """H + λI (H = ∇²J of the model's last checkpoint over its own training subset), LU-factored."""
    model = _model_at(run, config, data, job.checkpoints[model_id][-1][2])
    if model.num_params > config.gradients.max_exact_params:
        raise EstimateError(f"the model has {model.num_params} parameters, above gradients.max_exact_params="
                            f"{config.gradients.max_exact_params} for the exact Hessian; use --set gradients.solver=cg "
                            "(or lissa)")
    mask = _subset(config, data, model_id)
    H = exact_hessian(model, data.train_x[mask], data.train_y[mask])
    return FactoredHessian.of(H, config.gradients.damping, model.null_directions)


def compute_unit(
    config: Config, run: Run, data: TrainData, job: Job, unit: Unit, hessian: FactoredHessian | None = None,
) -> np.ndarray:
    """The unit's values: float64[rows, n_train] (scores) or float64[rows] (self, reweight).
    ``hessian``: the model's factored Hessian when a task computed it already (else computed
    here, once per process and model)."""
    g = config.gradients
    method, chunk = job.method, g.chunk_size
    history = job.checkpoints[unit.model_id]
    model = _model_at(run, config, data, history[-1][2])
    x_all, y_all = data.train_x, data.train_y
    mask = _subset(config, data, unit.model_id)
    x_s, y_s, n_s = x_all[mask], y_all[mask], int(mask.sum())
    rows = slice(unit.start, unit.stop)
    tx = ty = None
    if unit.kind == "scores":
        t = torch.as_tensor(np.array(job.targets[rows]), device=x_all.device)
        tx, ty = data.eval_x[t], data.eval_y[t]
    solver = solver_for(config)
    if hessian is None and needs_hessian(config, method):
        hessian = _cached(("hessian", run.uri, history[-1][2], g.damping),
                          lambda: model_hessian(config, run, data, job, unit.model_id))
    if method == "influence":
        if unit.kind == "scores":
            out = influence_scores(model, x_s, y_s, tx, ty, utility=g.utility, solver=solver, chunk_size=chunk,
                                   points_x=x_all, points_y=y_all, hessian=hessian)
        else:
            out = influence_self_scores(model, x_s, y_s, utility="loss", solver=solver, chunk_size=chunk,
                                        points_x=x_all[rows], points_y=y_all[rows], hessian=hessian)
    elif method == "influence_pert":
        out = _pert(model, x_s, y_s, x_all, y_all, unit, tx, ty, g.utility, solver, hessian)
    elif method == "tracin":
        ckpts = [(_model_at(run, config, data, path).params, lr) for _, lr, path in history]
        if unit.kind == "scores":
            out = tracin_scores(model, ckpts, x_all, y_all, tx, ty, utility=g.utility, chunk_size=chunk)
        else:
            out = tracin_self_scores(model, ckpts, x_all[rows], y_all[rows], chunk_size=chunk)
    elif method == "representer":
        if unit.kind == "scores":
            out = representer_scores(model, x_all, y_all, tx, ty, output=g.representer_output, n_train=n_s)
        else:
            out = representer_self_scores(model, x_all[rows], y_all[rows], n_train=n_s)
    else:
        out = _trak(config, run, model, x_all, y_all, history[-1][2], unit, tx, ty)
    return out.detach().double().cpu().numpy()


def _planned(config: Config, data: TrainData, model_id: int):
    planned = _cached(("planned", config.hash, data.n_train), lambda: plan_models(config, data.n_train))
    return planned.select_ids(np.array([model_id], dtype=np.int64))


def _pert(model, x_s, y_s, x_all, y_all, unit: Unit, tx, ty, utility, solver, hessian) -> torch.Tensor:
    """scores: pert[t, i]·x_i over every training point (the first-order change of u_t when
    x_i goes from the all-mean input, 0 after standardisation, to its actual value);
    self: ‖∂(−ℓ_i)/∂x_i‖₁ of each row."""
    d = int(np.prod(x_all.shape[1:]))
    if unit.kind == "scores":
        step = max(1, _PERT_ELEMENTS // max(1, len(tx) * d))
        blocks = []
        for s in range(0, len(x_all), step):
            px, py = x_all[s : s + step], y_all[s : s + step]
            pert = influence_pert_scores(model, x_s, y_s, tx, ty, utility=utility, solver=solver, hessian=hessian,
                                         points_x=px, points_y=py).flatten(2)  # [T, m, d]
            blocks.append((pert * px.flatten(1).double().unsqueeze(0)).sum(2))
        return torch.cat(blocks, dim=1)
    xs, ys = x_all[unit.start : unit.stop], y_all[unit.start : unit.stop]
    pert = influence_pert_self_scores(model, x_s, y_s, xs, ys, utility="loss", solver=solver, hessian=hessian)
    return pert.flatten(1).abs().sum(1)


def _trak(config: Config, run: Run, model, x_all, y_all, path: str, unit: Unit, tx, ty) -> torch.Tensor:
    g = config.gradients
    if unit.kind == "reweight":
        return one_minus_p(model, x_all, y_all)
    def features():
        projection = model_projection(model, g.proj_dim, config.seed + unit.slot)
        phi = trak_features(model, x_all, y_all, projection, "trak", g.chunk_size)
        return projection, phi, kernel_inverse(phi, g.trak_damping)

    projection, phi, kernel = _cached(("trak", run.uri, path, g.proj_dim, g.trak_damping, config.seed + unit.slot), features)
    if unit.kind == "scores":
        return trak_attribution(model, phi, tx, ty, projection, chunk_size=g.chunk_size, kernel=kernel)
    return trak_leverage(phi, slice(unit.start, unit.stop), kernel)


def _task_context(run_uri: str, config_text: str) -> tuple[Config, Run, TrainData]:
    from datamodels.orchestrate.worker import load_context

    config = config_from_yaml_text(config_text)
    torch.set_num_threads(max(1, int(config.gradients.num_cpus)))
    data, _ = load_context(run_uri, config, "cpu")  # the gradient tasks run on CPU
    return config, Run(run_uri), data


def run_hessian(run_uri: str, config_text: str, job: Job, model_id: int) -> FactoredHessian:
    """Task body: one model's factored exact Hessian, handed to its units through the object store."""
    config, run, data = _task_context(run_uri, config_text)
    return model_hessian(config, run, data, job, model_id)


def run_unit(run_uri: str, config_text: str, job: Job, unit: Unit, hessian: FactoredHessian | None = None) -> str:
    """Task body: compute one unit and write its part atomically; returns the part's path."""
    config, run, data = _task_context(run_uri, config_text)
    values = compute_unit(config, run, data, job, unit, hessian)
    buffer = io.BytesIO()
    np.save(buffer, values.astype(np.float32))  # what the score tables keep
    path = job.part_path(unit)
    run.fs.write_bytes_atomic(path, buffer.getvalue())
    return path


# -- the reduction -----------------------------------------------------------------------------

def _part(run: Run, job: Job, unit: Unit) -> np.ndarray:
    return np.load(io.BytesIO(run.fs.read_bytes(job.part_path(unit))))


def finish_job(run: Run, job: Job) -> dict[str, int]:
    """Average the parts over models (running sums: one model's table in memory at a time),
    write scores/ and self_scores/, remove the parts."""
    missing = missing_units(run, job)
    if missing:
        raise EstimateError(f"{job.method}: {len(missing)} of {len(job.units)} parts missing in "
                            f"{run.fs.display(job.part_dir)}; rerun `datamodels estimate {run.uri} -m {job.method}`")
    n, T, M = run.n_train, len(job.targets), len(job.model_ids)
    q = np.ones(n)
    if job.method == "trak":  # (mean attribution) ⊙ (mean reweighting), Algorithm 1
        q = np.mean([_part(run, job, u) for u in job.units if u.kind == "reweight"], axis=0)
    totals = {"scores": _Moments((T, n)), "self": _Moments((n,))}
    for m in job.model_ids:
        tables = {"scores": np.zeros((T, n)), "self": np.zeros(n)}
        for u in job.units:
            if u.model_id == m and u.kind in tables:
                tables[u.kind][u.start : u.stop] = _part(run, job, u)
        for kind, table in tables.items():
            totals[kind].add(table * q)
    score_mean, score_err = totals["scores"].result()
    self_mean, self_err = totals["self"].result()
    run.write_scores(job.method, job.targets, score_mean, score_err)
    written = {"scores": T, "self_scores": write_self_scores(run, job.method, self_mean, self_err), "models": M}
    for name in run.fs.entries(PARTS_DIR):  # parts and markers of this method's earlier settings
        if not name.startswith(f"{job.method}-"):
            continue
        if name.endswith(".done"):
            run.fs.filesystem.delete_file(run.fs.join(PARTS_DIR, name))
        else:
            run.fs.delete_dir(f"{PARTS_DIR}/{name}")
    run.fs.write_bytes_atomic(done_marker(job), b"")  # a rerun with the same settings does nothing
    return written


class _Moments:
    """Running mean and standard error of the mean over models."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.count, self.total, self.squares = 0, np.zeros(shape), np.zeros(shape)

    def add(self, values: np.ndarray) -> None:
        self.count += 1
        self.total += values
        self.squares += values * values

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        mean = self.total / self.count
        if self.count < 2:
            return mean, None
        var = np.maximum(self.squares / self.count - mean * mean, 0.0) * self.count / (self.count - 1)
        return mean, np.sqrt(var / self.count)
