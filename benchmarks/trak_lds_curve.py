"""TRAK's LDS on digits against the number of models, the projection dimension, the damping
and the checkpoints ensembled per model, beside the datamodels' LDS of the same run.

    PYTHONPATH=$PWD python benchmarks/trak_lds_curve.py --run RUN   # a finished digits run
    PYTHONPATH=$PWD python benchmarks/trak_lds_curve.py               # trains 20 + 200 models
    PYTHONPATH=$PWD python benchmarks/trak_lds_curve.py --run RUN --proj-dims ""  # check only

``RUN``: a run of configs/digits.yaml (``datamodels run``): its first 20 checkpointed models
(epochs 2, 4, 6, 8, 10), its ``eval`` plan (200 held-out subsets) and the datamodels' LDS in
its ``evaluation.parquet`` (it is only read). Without ``--run`` the script trains a run
whose ``train`` plan holds only the 20 checkpointed models (the default run's first 20: same
masks and seeds) and whose ``eval`` plan is the default's, so the TRAK figures are the
default run's, but there are no datamodels to compare with.

Every figure uses the scores of ``gradients.checkpointed.trak_values`` (the ``estimate``
stage's): each model's ensembled checkpoints, the last first, projected with seed
``seed + model + j·1,000,003`` for the j-th checkpoint from the last, damping relative to
each checkpoint's mean diagonal of ΦᵀΦ; features are computed once per (model, checkpoint,
projection dimension) and shared by every row. The last line checks one setting against
``trak_values`` itself (configs/digits.yaml's setting: ``proj_dim`` 128, λ 0.1, every
checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodels import api  # noqa: E402
from datamodels.config import config_from_dict  # noqa: E402
from datamodels.gradients.checkpointed import (  # noqa: E402
    CHECKPOINT_SEED_STRIDE,
    functional_model,
    trak_values,
)
from datamodels.gradients.trak import (  # noqa: E402
    absolute_damping,
    kernel_inverse,
    model_projection,
    one_minus_p,
    trak_features,
)
from datamodels.metrics.lds import average_replicates, lds  # noqa: E402
from datamodels.orchestrate.context import Context  # noqa: E402
from datamodels.stages.prepare import load_run_config  # noqa: E402
from datamodels.store import Run  # noqa: E402
from datamodels.store.checkpoints import load_checkpoint, read_checkpoint_index  # noqa: E402
from datamodels.store.positions import eval_positions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = (5, 10, 20)
CHECKPOINTS = (1, 3, 5)
DAMPING = (0.0, 0.1, 1.0, 3.0)  # × mean diag(ΦᵀΦ)


def small_run(uri: str) -> None:
    import yaml

    raw = yaml.safe_load((ROOT / "configs/digits.yaml").read_text())
    raw["plans"] = [dict(raw["plans"][0], count=20), raw["plans"][1]]
    api.train(config_from_dict(raw), uri, show_progress=False)


def datamodels_lds(run: Run) -> float | None:
    import pyarrow.parquet as pq

    path = Path(run.uri) / "evaluation.parquet"
    if not path.exists():
        return None
    t = pq.read_table(path).to_pandas()
    rows = t[(t.method == "datamodels") & (t.metric == "lds")]
    return float(rows.value.iloc[0]) if len(rows) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="", help="a finished digits run (only read)")
    parser.add_argument("--proj-dims", default="64,128,256,512,1024")
    args = parser.parse_args()
    torch.set_num_threads(1)
    uri = args.run
    if not uri:
        uri = str(Path(tempfile.mkdtemp()) / "run")
        small_run(uri)
    run = Run(uri)
    config = load_run_config(run)
    data = Context().data(run, config)
    index = read_checkpoint_index(run.fs)
    ids = sorted(index.model_id.unique())[: max(MODELS)]
    history = {  # model -> its checkpoints' FunctionalModels, the last first
        m: [functional_model(config, data, load_checkpoint(run.fs, p)["layers"])
            for p in index[index.model_id == m].sort_values("epoch", ascending=False).path]
        for m in ids
    }
    targets = torch.from_numpy(eval_positions(run, "test"))
    masks, margins = average_replicates(*run.masks_and_margins(plan=config.evaluate.plan))
    margins = margins[:, targets.numpy()]
    x, y, tx, ty = data.train_x, data.train_y, data.eval_x[targets], data.eval_y[targets]
    reference = datamodels_lds(run)
    print(f"digits: n_train {len(x)}, {len(targets)} test targets, {len(masks)} held-out "
          f"subsets; datamodels LDS {reference if reference is None else f'{reference:.3f}'}")
    reweight = {m: [one_minus_p(c, x, y) for c in history[m]] for m in ids}

    print("| proj_dim | λ / mean diag | checkpoints | " + " | ".join(
        f"{k} models" for k in MODELS) + " | seconds (20 models) |")
    print("|---:|---:|---:|" + "---:|" * len(MODELS) + "---:|")
    best = {}
    for k in [int(v) for v in args.proj_dims.split(",") if v]:
        sums = {(d, c): 0.0 for d in DAMPING for c in CHECKPOINTS}
        q = {c: 0.0 for c in CHECKPOINTS}
        rows = {(d, c): [] for d in DAMPING for c in CHECKPOINTS}
        seconds = {c: 0.0 for c in CHECKPOINTS}
        for slot, m in enumerate(ids):
            per = {d: [] for d in DAMPING}
            for j, model in enumerate(history[m][: max(CHECKPOINTS)]):
                start = time.process_time()
                seed = config.seed + slot + CHECKPOINT_SEED_STRIDE * j
                projection = model_projection(model, k, seed)
                phi = trak_features(model, x, y, projection)
                phi_t = trak_features(model, tx, ty, projection)
                spent = time.process_time() - start
                for d in DAMPING:
                    start = time.process_time()
                    per[d].append(phi_t @ kernel_inverse(phi, absolute_damping(phi, d, True)))
                    if d == 1.0:
                        for c in CHECKPOINTS:
                            if j < c:
                                seconds[c] += spent + time.process_time() - start
            for c in CHECKPOINTS:
                q[c] = q[c] + sum(reweight[m][:c]) / c
                for d in DAMPING:
                    sums[d, c] = sums[d, c] + sum(per[d][:c]) / c
                    if slot + 1 in MODELS:
                        scores = (sums[d, c] / (slot + 1)) * (q[c] / (slot + 1))
                        rows[d, c].append(lds(scores.numpy(), masks, margins).value)
        for c in CHECKPOINTS:
            for d in DAMPING:
                values = " | ".join(f"{v:.3f}" for v in rows[d, c])
                best[k, d, c] = rows[d, c][-1]
                cost = f"{seconds[c]:.1f}" if d == 1.0 else ""
                print(f"| {k} | {d:g} | {c} | {values} | {cost} |", flush=True)
    if best:
        (k, d, c), value = max(best.items(), key=lambda kv: kv[1])
        ratio = "" if reference is None else f" = {value / reference:.2f} x datamodels"
        print(f"best with 20 models: proj_dim {k}, λ {d:g} x mean diag, {c} checkpoints: "
              f"{value:.3f}{ratio}")

    # configs/digits.yaml's setting through the estimate stage's own function
    g = {"proj_dim": 128, "trak_damping": 0.1, "trak_checkpoints": 5, "trak_models": 20}
    cfg = config.model_copy(update={"gradients": config.gradients.model_copy(update=g)})
    cache: dict = {}
    hist = lambda m: [(c.params, 0.1) for c in reversed(history[m])]  # noqa: E731
    att = sum(
        trak_values(cfg, lambda key, make: cache.setdefault(key, make()), ("b", m),
                    history[m][0], x, y, "scores", slice(None), slot, tx, ty, hist(m))
        for slot, m in enumerate(ids)
    ) / len(ids)
    qq = sum(trak_values(cfg, None, None, history[m][0], x, y, "reweight", slice(None), slot,
                         None, None, hist(m)) for slot, m in enumerate(ids)) / len(ids)
    value = lds((att * qq).numpy(), masks, margins).value
    print(f"trak_values, 20 models x 5 checkpoints, proj_dim 128, λ 0.1 x mean diag: "
          f"{value:.3f} (the table's {best.get((128, 0.1, 5), float('nan')):.3f})")


if __name__ == "__main__":
    main()
