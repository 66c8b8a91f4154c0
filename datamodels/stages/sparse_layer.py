"""``datamodels sparse-layer``: a sparse decision layer on a trained model (Wong et al. 2021).

Takes one checkpointed model (``sparse_layer.model_id``, default the first with checkpoints;
its last checkpoint), computes its penultimate features (the input of its last linear layer,
as representer points read them) on the train and test splits, and fits the elastic-net
multinomial path of ``datamodels.regress.glm`` on the train split less a held-out
validation part. The chosen λ is the one with the best validation accuracy among those whose
every class uses at most ``sparse_layer.max_features`` features (ties: the sparser). One
unit; it writes

* ``sparse_layer/path.parquet``: per λ, objective, KKT violation, density, accuracies;
* ``sparse_layer/weights.parquet``: every nonzero weight per λ;
* ``sparse_layer/features.parquet``: the chosen layer per class, its features by |weight|
  with the training inputs that activate each most;
* ``sparse_layer/summary.parquet``: the chosen layer beside the model's dense last layer.

The stage returns the summary row as a dict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from datamodels.devices import resolve_device
from datamodels.errors import EstimateError
from datamodels.gradients.checkpointed import functional_model
from datamodels.gradients.representer import last_layer_features
from datamodels.methods.checkpoints import find_checkpoints
from datamodels.methods.traits import trains_model
from datamodels.regress import glm_path, split_rows
from datamodels.stages.base import Stage, Unit
from datamodels.stages.versions import sparse_layer_versions
from datamodels.store import Run
from datamodels.store.checkpoints import load_checkpoint
from datamodels.store.schemas import (
    SPARSE_FEATURES_PATH,
    SPARSE_FEATURES_SCHEMA,
    SPARSE_PATH_PATH,
    SPARSE_PATH_SCHEMA,
    SPARSE_SUMMARY_PATH,
    SPARSE_SUMMARY_SCHEMA,
    SPARSE_WEIGHTS_PATH,
    SPARSE_WEIGHTS_SCHEMA,
)

OUTPUTS = (SPARSE_PATH_PATH, SPARSE_WEIGHTS_PATH, SPARSE_FEATURES_PATH, SPARSE_SUMMARY_PATH)


def choose_lambda(per_class: np.ndarray, val_accuracy: np.ndarray, max_features: int) -> int:
    """Index of the λ with the best validation accuracy among those with at most
    ``max_features`` features in every class (per_class: int[K, C]); ties go to the sparser
    (earlier) λ. λ_max (no features) always qualifies."""
    ok = per_class.max(1) <= max_features
    score = np.where(ok, val_accuracy, -np.inf)
    return int(np.argmax(score))


class SparseLayerStage(Stage):
    name = "sparse-layer"
    what = "layers"

    def __init__(self, config, run: Run) -> None:
        super().__init__(config, run)
        if not trains_model(config):
            raise EstimateError(
                "sparse-layer: model.arch null trains no model, so it has no features; use a "
                "real architecture"
            )
        self.settings = config.sparse_layer
        found = find_checkpoints(config, run, lambda: self.planned, "representer", None)
        wanted = self.settings.model_id
        if wanted is None:
            wanted = min(found)
        elif wanted not in found:
            shown = ", ".join(map(str, sorted(found)[:10]))
            raise EstimateError(
                f"sparse_layer.model_id={wanted} has no checkpoint; models with checkpoints: "
                f"{shown}{' ...' if len(found) > 10 else ''}"
            )
        self.model_id = int(wanted)
        self.checkpoint = max(found[self.model_id])[2]  # the last epoch

    def versions(self) -> dict[str, int]:
        return sparse_layer_versions()

    def fingerprint(self) -> dict:
        return {
            "sparse_layer": self.settings.model_dump(mode="json"),
            "checkpoint": self.checkpoint,
            "config": self.config.hash,
        }

    def outputs(self) -> list[str]:
        return list(OUTPUTS)

    def units(self) -> list[Unit]:
        return [Unit("sparse-layer")]

    def done(self, unit: Unit) -> bool:
        return False

    def compute(self, ctx, unit: Unit, shared=None) -> None:
        # in-process (the default executor): the caller's thread count comes back afterwards
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, int(self.config.resources.num_cpus)))
        try:
            self._compute(ctx)
        finally:
            torch.set_num_threads(before)

    def _compute(self, ctx) -> None:
        config, run, s = self.config, self.run, self.settings
        device = resolve_device(s.device)
        data = ctx.data(run, config, "cpu")
        model = functional_model(config, data, load_checkpoint(run.fs, self.checkpoint)["layers"])
        try:
            train_f, train_logits = last_layer_features(model, data.train_x.double())
            test_x = data.eval_x[: data.n_test].double()
            test_f, test_logits = last_layer_features(model, test_x)
        except ValueError as exc:
            raise EstimateError(f"sparse-layer: {exc}") from exc
        train_f, test_f = train_f.cpu().numpy(), test_f.cpu().numpy()
        train_y, test_y = data.train_y.cpu().numpy(), data.eval_y[: data.n_test].cpu().numpy()
        fit_rows, val_rows = split_rows(len(train_y), s.val_fraction, s.split_seed)
        path = glm_path(
            train_f[fit_rows],
            train_y[fit_rows],
            alpha=s.alpha,
            num_classes=data.num_classes,
            n_lambdas=s.n_lambdas,
            eps=s.eps,
            tol=s.tol,
            max_iter=s.max_iter,
            stop_features=int(np.ceil(s.stop_factor * s.max_features)),
            device=device,
        )
        per_class = path.features_per_class()
        accuracy = {
            "train": path.accuracy(train_f[fit_rows], train_y[fit_rows]),
            "val": path.accuracy(train_f[val_rows], train_y[val_rows]),
            "test": path.accuracy(test_f, test_y),
        }
        chosen = choose_lambda(per_class, accuracy["val"], s.max_features)
        self._write_path(path, per_class, accuracy, chosen)
        self._write_features(path, chosen, train_f)
        dense = {
            "val": float(
                (train_logits[val_rows].argmax(1).cpu().numpy() == train_y[val_rows]).mean()
            ),
            "test": float((test_logits.argmax(1).cpu().numpy() == test_y).mean()),
        }
        summary = {
            "model_id": self.model_id,
            "checkpoint": self.checkpoint,
            "num_features": int(train_f.shape[1]),
            "num_classes": int(data.num_classes),
            "alpha": float(s.alpha),
            "max_features": int(s.max_features),
            "chosen_lam_index": chosen,
            "chosen_lam": float(path.lams[chosen]),
            "chosen_max_features_per_class": int(per_class[chosen].max()),
            "sparse_val_accuracy": float(accuracy["val"][chosen]),
            "sparse_test_accuracy": float(accuracy["test"][chosen]),
            "dense_val_accuracy": dense["val"],
            "dense_test_accuracy": dense["test"],
            "n_fit": int(len(fit_rows)),
            "n_val": int(len(val_rows)),
            "n_test": int(len(test_y)),
        }
        self.write_table(SPARSE_SUMMARY_PATH, pd.DataFrame([summary]), SPARSE_SUMMARY_SCHEMA)

    def _write_path(self, path, per_class: np.ndarray, accuracy: dict, chosen: int) -> None:
        k = len(path.lams)
        table = pd.DataFrame(
            {
                "lam_index": np.arange(k, dtype=np.int32),
                "lam": path.lams,
                "alpha": np.full(k, path.alpha),
                "objective": path.objective,
                "kkt": path.kkt,
                "converged": path.converged,
                "iterations": path.iterations,
                "seconds": path.seconds,
                "nnz": per_class.sum(1),
                "max_features_per_class": per_class.max(1),
                "mean_features_per_class": per_class.mean(1),
                "train_accuracy": accuracy["train"],
                "val_accuracy": accuracy["val"],
                "test_accuracy": accuracy["test"],
                "bias": [list(map(float, b)) for b in path.intercept],
                "chosen": np.arange(k) == chosen,
            }
        )
        self.write_table(SPARSE_PATH_PATH, table, SPARSE_PATH_SCHEMA)
        lam_index, feature, cls = np.nonzero(path.coef)
        weight = path.coef[lam_index, feature, cls].astype(np.float64)
        weights = pd.DataFrame(
            {
                "lam_index": lam_index.astype(np.int32),
                "class": cls.astype(np.int64),
                "feature": feature.astype(np.int64),
                "weight": weight,
                "raw_weight": weight / path.scale[feature],
            }
        )
        self.write_table(SPARSE_WEIGHTS_PATH, weights, SPARSE_WEIGHTS_SCHEMA)

    def _write_features(self, path, chosen: int, train_f: np.ndarray) -> None:
        coef, top = path.coef[chosen], self.settings.top_examples
        rows = []
        for c in range(coef.shape[1]):
            used = np.flatnonzero(coef[:, c])
            for rank, j in enumerate(used[np.argsort(-np.abs(coef[used, c]), kind="stable")]):
                best = np.argsort(-train_f[:, j], kind="stable")[:top]  # activate j most
                rows.append(
                    {
                        "class": c,
                        "rank": rank,
                        "feature": int(j),
                        "weight": float(coef[j, c]),
                        "feature_mean": float(path.mean[j]),
                        "feature_scale": float(path.scale[j]),
                        "top_train_positions": best.astype(np.int64).tolist(),
                        "top_activations": train_f[best, j].astype(np.float64).tolist(),
                    }
                )
        table = pd.DataFrame(rows, columns=[f.name for f in SPARSE_FEATURES_SCHEMA])
        self.write_table(SPARSE_FEATURES_PATH, table, SPARSE_FEATURES_SCHEMA)

    def finish(self) -> dict:
        return self.run.read_table(SPARSE_SUMMARY_PATH).to_pylist()[0]

    def up_to_date(self) -> dict:
        return self.finish()
