"""Established implementations of TracIn-CP (captum) and influence functions (dattri), run on
the project's MLP so a benchmark can compare our estimators with them (correlation, time).

Both return float64[T, n] in the project's orientation and sign (rows = targets/test points,
cols = training points; positive = helpful, docs/concepts.md) and are meant to equal, up to float
error,

* ``captum_tracin``     == ``tracin_scores(mlp_model(layers_0, wd),
                           [(mlp_model(layers_k, wd).params, lr_k)], ..., utility="loss")``
                         = Σ_k lr_k ∇ℓ(t; θ_k)·∇ℓ(z_i; θ_k);
* ``dattri_influence``  == ``influence_scores(mlp_model(layers, wd), ..., utility="loss",
                           solver=Exact(damping), train_output="loss")``
                         = +(1/n) ∇ℓ(t)ᵀ (H + damping·I)⁻¹ ∇ℓ(z_i),
  H = ∇²[mean_i CE(z_i) + (wd/2)·||θ||²] over the n training points.

Neither function times itself; the caller does. ``python benchmarks/reference_impls.py`` runs a
small self-check (correlation, max relative difference and wall time against ours).

Conversions, with the library source they rest on
--------------------------------------------------
captum 0.9.0, ``captum/influence/_core/tracincp.py``:

* ``TracInCP(..., layers=None)`` leaves every parameter with ``requires_grad`` active (the
  ``_set_active_parameters`` call is only made ``if layers is not None``), and the per-example
  jacobians are ``param.sample_grad for param in model.parameters()`` (``captum/_utils/
  gradient.py``, ``_compute_jacobian_wrt_params_with_sample_wise_trick``), so the dot product
  runs over all of W1, b1, W2, b2. ``nn.Linear`` stores W as [out, in] (our W.T); dot products
  are invariant to that layout.
* ``sample_wise_grads_per_batch=True`` requires a "reduction" loss (``_check_loss_fn`` asserts
  ``reduction in ["sum", "mean"]``); with ``reduction="sum"`` the sample-wise trick returns the
  per-example gradient ∇ℓ(z_i) with no 1/batch factor (``loss_mode="sum"``), whereas "mean"
  would need captum to undo the 1/B. We use ``nn.CrossEntropyLoss(reduction="sum")``.
* The score is ``_gradient_dot_product(test_jacobians, train_jacobians) * learning_rate``
  summed over checkpoints (``_influence_batch_tracincp``), with ``learning_rate`` whatever
  ``checkpoints_load_func`` returns; output shape (n_test, n_train) (``_influence`` docstring).
  So sign (+, proponent = positive), scale (lr_k, no 1/n) and orientation already equal ours:
  no conversion besides ``.double()``.

dattri 0.3.0:

* ``IFAttributorExplicit.transform_test_rep`` (``dattri/algorithm/influence_function.py``)
  computes, for every batch ``b`` of the *cached full* training loader,
  ``ihvp_explicit(partial(loss_func, data=batch_b), regularization)`` and **sums** the results:
  Σ_b (H_b + reg·I)⁻¹ g_test. ``ihvp_explicit`` (``dattri/func/hessian.py``) is
  ``torch.linalg.solve(torch.func.hessian(loss_func)(θ) + reg·I, v.T).T``. Hence with one
  full-batch loader (batch_size = n) and ``loss_func`` = mean CE it is exactly
  (H_CE + reg·I)⁻¹ g_test with H_CE the Hessian of the mean CE. (With several batches it would
  be a sum of per-batch inverses, not the inverse of the mean Hessian.)
* The penalty (wd/2)·||θ||² has Hessian wd·I exactly, so we pass ``regularization = wd +
  damping`` and keep ``loss_func`` = mean CE: (H_CE + (wd + damping)·I) = (H + damping·I),
  while the per-example train/test representations stay ∇ℓ = ∇CE (``generate_train_rep`` /
  ``generate_test_rep`` in ``dattri/algorithm/base.py`` are ``vmap(grad(loss_func))`` /
  ``vmap(grad(target_func))`` over single examples, ``in_dims=(None, 1)`` on data unsqueezed
  to (1, B, ...), so each call sees x[1, d] and the mean CE is that example's CE). Putting the
  penalty inside ``loss_func`` instead would make the train representation ∇(ℓ + R) (our
  ``train_output="term"``); that variant is available as ``train_output="term"`` (penalty in
  ``loss_func``, ``target_func`` = plain CE, ``regularization = damping``).
* ``BaseInnerProductAttributor.attribute`` returns
  ``tda_output[train, test] += train_rep @ transformed_test_rep.T`` = +∇ℓ(z_i)ᵀ(H+λI)⁻¹∇ℓ(t)
  with shape (n_train, n_test), no sign flip and no 1/n. Ours = that ``.T / n``.
* ``tda_output`` is allocated with ``torch.zeros(..., device=...)``, i.e. in the *default*
  dtype (float32) whatever the model's dtype, and ``ihvp_explicit`` adds ``torch.eye(P)`` in
  the default dtype. We therefore run dattri under ``torch.set_default_dtype(torch.float64)``
  (restored afterwards) with a float64 model, so the comparison is at float64 precision.
* ``transform_test_rep`` is called once per (train batch, test batch) pair and rebuilds the
  P×P Hessian every time, so both loaders are single full batches here (one Hessian).
* With ``weight_decay == 0`` the MLP objective has a null direction (adding a constant to all
  output biases); ours uses the pseudo-inverse there, dattri a plain solve. The CE gradients
  are orthogonal to that direction, so with ``damping > 0`` the two still agree; with
  ``weight_decay == 0`` and ``damping == 0`` dattri's solve is singular.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _mlp_module(params: Sequence[torch.Tensor]) -> torch.nn.Sequential:
    """nn.Sequential(Linear, ReLU, ..., Linear) holding ``params`` ([W [in, out], b, ...]) in
    float64."""
    from datamodels.models.mlp import to_module

    return to_module([p.detach().cpu().double() for p in params])


def captum_tracin(
    layers_per_checkpoint: Sequence[Sequence[torch.Tensor]], lrs: Sequence[float],
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    batch_size: int | None = None,
) -> torch.Tensor:
    """captum ``TracInCP`` over all parameters: score[t, i] = Σ_k lr_k ∇ℓ(t; θ_k)·∇ℓ(z_i; θ_k).

    ``layers_per_checkpoint[k]`` = ``[W1 [d, h], b1 [h], W2 [h, C], b2 [C]]`` of checkpoint k,
    ``lrs[k]`` its learning rate; ``batch_size`` = captum's training-set batch (None: all n).
    Returns float64[T, n] (rows = test points)."""
    import tempfile
    import warnings
    from pathlib import Path

    from captum.influence import TracInCP
    from torch.utils.data import TensorDataset

    if len(layers_per_checkpoint) != len(lrs) or not lrs:
        raise ValueError("need one learning rate per checkpoint, and at least one checkpoint")
    train_x = train_x.reshape(len(train_x), -1).double()
    test_x = test_x.reshape(len(test_x), -1).double()
    train_y, test_y = train_y.long(), test_y.long()

    model = _mlp_module(layers_per_checkpoint[0])

    def load(module: torch.nn.Module, path: str) -> float:
        saved = torch.load(path, weights_only=True)
        module.load_state_dict(saved["state_dict"])
        return float(saved["learning_rate"])

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, (params, lr) in enumerate(zip(layers_per_checkpoint, lrs, strict=True)):
            path = str(Path(tmp) / f"checkpoint_{k}.pt")
            state = _mlp_module(params).state_dict()
            torch.save({"state_dict": state, "learning_rate": float(lr)}, path)
            paths.append(path)
        with warnings.catch_warnings():
            # captum warns once per batch that the (data) input did not require grad; harmless
            warnings.simplefilter("ignore")
            tracin = TracInCP(
                model, TensorDataset(train_x, train_y), paths, checkpoints_load_func=load,
                layers=None, loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"),
                batch_size=batch_size or len(train_x), sample_wise_grads_per_batch=True,
            )
            scores = tracin.influence((test_x, test_y), k=None)
    return scores.detach().double()


def dattri_influence(
    layers: Sequence[torch.Tensor], weight_decay: float, train_x: torch.Tensor,
    train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, damping: float = 0.0, *,
    train_output: str = "loss",
) -> torch.Tensor:
    """dattri ``IFAttributorExplicit`` (explicit Hessian, full-batch, one checkpoint), in our
    convention: +(1/n) ∇ℓ(t)ᵀ (H + damping·I)⁻¹ ∇ℓ̃(z_i), H = ∇²[mean CE + (wd/2)||θ||²].

    ``train_output="loss"`` (default): ∇ℓ̃ = ∇CE(z_i) (ours with ``train_output="loss"``);
    ``"term"``: ∇ℓ̃ = ∇(CE(z_i) + R) (ours with ``train_output="term"``).
    Returns float64[T, n] (rows = test points)."""
    import contextlib
    import io
    import warnings

    import torch.nn.functional as F
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    if train_output not in ("loss", "term"):
        raise ValueError(f"train_output must be 'loss' or 'term'; got {train_output!r}")
    n = len(train_x)
    train_x = train_x.reshape(n, -1).double()
    test_x = test_x.reshape(len(test_x), -1).double()
    train_y, test_y = train_y.long(), test_y.long()
    model = _mlp_module(layers)
    model.eval()

    def cross_entropy(params, data):
        x, y = data
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    def penalised(params, data):
        penalty = sum((p * p).sum() for p in params.values())
        return cross_entropy(params, data) + 0.5 * weight_decay * penalty

    if train_output == "loss":
        # Hessian of the penalty is wd·I exactly: pass it as dattri's `regularization`.
        loss_func, target_func, regularization = cross_entropy, None, weight_decay + damping
    else:
        loss_func, target_func, regularization = penalised, cross_entropy, damping

    previous_dtype = torch.get_default_dtype()
    # dattri allocates its output / eye(P) in the default dtype
    torch.set_default_dtype(torch.float64)
    try:
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict(),
                               target_func=target_func)
        attributor = IFAttributorExplicit(task=task, device="cpu", regularization=regularization)
        train_loader = DataLoader(TensorDataset(train_x, train_y), batch_size=n, shuffle=False)
        test_loader = DataLoader(
            TensorDataset(test_x, test_y), batch_size=len(test_x), shuffle=False
        )
        attributor.cache(train_loader)
        # silence dattri's per-batch tqdm bars (written to stderr) and its shuffle/cache warnings
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            raw = attributor.attribute(train_loader, test_loader)  # [n, T] = ∇ℓ̃_iᵀ (H+λI)⁻¹ ∇ℓ_t
    finally:
        torch.set_default_dtype(previous_dtype)
    return (raw.detach().double().T / n).contiguous()


if __name__ == "__main__":
    import time

    import torch.nn.functional as F

    from datamodels.gradients import Exact, mlp_model
    from datamodels.gradients.influence import influence_scores
    from datamodels.gradients.tracin import tracin_scores
    from datamodels.models.mlp import init_params, layer_sizes, stacked_forward

    torch.set_num_threads(2)
    d, h, C, n, T = 64, 16, 10, 200, 20
    weight_decay, lr = 1e-2, 0.5
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(d, C, generator=gen)
    train_x = torch.randn(n, d, generator=gen)
    test_x = torch.randn(T, d, generator=gen)
    train_y = (train_x @ teacher + 2.0 * torch.randn(n, C, generator=gen)).argmax(1)
    test_y = (test_x @ teacher + 2.0 * torch.randn(T, C, generator=gen)).argmax(1)

    # a short full-batch GD run on mean CE + (wd/2)||θ||², keeping 3 checkpoints
    params = [p.double().requires_grad_() for p in init_params(1, layer_sizes(d, h, 1, C))]
    checkpoints: list[list[torch.Tensor]] = []
    lrs: list[float] = []
    for step in range(1, 301):
        loss = F.cross_entropy(stacked_forward(params, train_x.double()), train_y)
        loss = loss + 0.5 * weight_decay * sum((p * p).sum() for p in params)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
        if step in (100, 200, 300):
            checkpoints.append([p.detach().clone() for p in params])
            lrs.append(lr * (0.5 ** len(lrs)))
    final = checkpoints[-1]

    def timed(fn, repeats: int = 3):
        """(result, best wall time of ``repeats`` calls after one warm-up call)."""
        out = fn()  # warm-up (imports, first-call overheads)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        return out, best

    def compare(name, ours, theirs, t_ours, t_theirs):
        a, b = ours.reshape(-1), theirs.reshape(-1)
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        rel = ((a - b).abs().max() / b.abs().max()).item()
        print(
            f"{name:28s} shape {tuple(theirs.shape)}  pearson {corr:.12f}  "
            f"max|diff|/max|ref| {rel:.2e}  "
            f"ours {t_ours * 1e3:8.1f} ms  theirs {t_theirs * 1e3:8.1f} ms"
        )
        return corr

    model = mlp_model(final, weight_decay)
    ckpts = [
        (mlp_model(layers, weight_decay).params, lr_k)
        for layers, lr_k in zip(checkpoints, lrs, strict=True)
    ]
    ours_tr, t_ours_tr = timed(
        lambda: tracin_scores(model, ckpts, train_x, train_y, test_x, test_y, utility="loss")
    )
    ref_tr, t_ref_tr = timed(
        lambda: captum_tracin(checkpoints, lrs, train_x, train_y, test_x, test_y)
    )
    corrs = [compare("TracInCP (captum)", ours_tr, ref_tr, t_ours_tr, t_ref_tr)]

    for damping, wd, train_output in [(0.0, weight_decay, "loss"), (1e-3, weight_decay, "loss"),
                                      (0.0, weight_decay, "term"), (1e-2, 0.0, "loss")]:
        m = mlp_model(final, wd)
        ours_if, t_ours_if = timed(lambda: influence_scores(  # noqa: B023
            m, train_x, train_y, test_x, test_y, utility="loss", solver=Exact(damping=damping),  # noqa: B023
            train_output=train_output))  # noqa: B023
        ref_if, t_ref_if = timed(lambda: dattri_influence(  # noqa: B023
            final, wd, train_x, train_y, test_x, test_y, damping=damping,  # noqa: B023
            train_output=train_output))  # noqa: B023
        name = f"IF explicit (dattri) λ={damping:g} wd={wd:g} {train_output}"
        corrs.append(compare(name, ours_if, ref_if, t_ours_if, t_ref_if))

    assert min(corrs) >= 0.999, corrs
    print("all correlations >= 0.999")
