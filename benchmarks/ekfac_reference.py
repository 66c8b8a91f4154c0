"""Our EK-FAC influence against kronfluence's (the reference implementation of EK-FAC
influence functions), on the same trained networks, data and damping, in one process.

    pip install --no-deps kronfluence accelerate safetensors einops einconv opt_einsum
    PYTHONPATH=$PWD python benchmarks/ekfac_reference.py

(``--no-deps``: kronfluence asks for torchvision, which it does not import, and a CUDA
torch would replace the CPU one; torch stays as it is.) Two networks on scikit-learn's
digits, trained here with Adam: an MLP (64-32-10) and a CNN (two 3×3 convolutions, a linear
head; ``tests.custom_models.make_cnn``), both float64. kronfluence fits its factors and
eigenvalues with labels drawn from the model's prediction (the true Fisher), so ours is run
with ``fisher="sampled"`` (other draws) and with ``"ggn"`` (the exact expectation); with the
true labels on both sides (the empirical Fisher: kronfluence's ``use_empirical_fisher``, our
``fisher="empirical"``) nothing is random and the two must agree.
kronfluence's damping is set to our λ_wd + λ (it adds no weight decay), its measurement is
the margin (correct logit − largest other) and its training loss the summed cross-entropy.
Printed: the mean per-target Pearson r between the two score matrices (a per-target
constant, our regulariser term, does not change it) and the CPU seconds of each.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datamodels.gradients.ekfac import ekfac_scores, fit_ekfac  # noqa: E402
from datamodels.gradients.module import module_model  # noqa: E402
from tests.custom_models import make_cnn  # noqa: E402

WD, LAM, N, T = 1e-3, 1e-2, 500, 50


def digits(image: bool):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.data / 16.0)
    x = x.view(-1, 1, 8, 8) if image else x
    y = torch.from_numpy(d.target).long()
    return x[:N], y[:N], x[N : N + T], y[N : N + T]


def trained(net: nn.Module, x, y, steps: int = 300) -> nn.Module:
    torch.manual_seed(0)
    net = net.double()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y) + 0.5 * WD * sum(p.pow(2).sum() for p in net.parameters())
        loss.backward()
        opt.step()
    return net.eval()


def kronfluence_scores(net: nn.Module, x, y, tx, ty, empirical: bool) -> torch.Tensor:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Margin(Task):
        def compute_train_loss(self, batch, model, sample=False):
            inputs, labels = batch
            logits = model(inputs)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), -1)
                    labels = torch.multinomial(probs, 1).flatten()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch, model):
            inputs, labels = batch
            logits = model(inputs)
            rows = torch.arange(len(labels))
            others = logits.clone()
            others[rows, labels] = -torch.inf
            return (logits[rows, labels] - others.max(-1).values).sum()

    task = Margin()
    model = prepare_model(copy.deepcopy(net), task)  # it wraps the layers in place
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True,
                        output_dir=tempfile.mkdtemp())
    f64 = torch.float64
    factor_args = FactorArguments(
        strategy="ekfac", use_empirical_fisher=empirical, activation_covariance_dtype=f64,
        gradient_covariance_dtype=f64, per_sample_gradient_dtype=f64, lambda_dtype=f64,
    )
    train = torch.utils.data.TensorDataset(x, y)
    analyzer.fit_all_factors("f", train, per_device_batch_size=100, factor_args=factor_args,
                             overwrite_output_dir=True)
    score_args = ScoreArguments(damping_factor=WD + LAM, score_dtype=f64,
                                per_sample_gradient_dtype=f64, precondition_dtype=f64)
    analyzer.compute_pairwise_scores(
        "s", "f", torch.utils.data.TensorDataset(tx, ty), train, per_device_query_batch_size=T,
        per_device_train_batch_size=100, score_args=score_args, overwrite_output_dir=True,
    )
    return analyzer.load_pairwise_scores("s")["all_modules"].double()


def per_target_r(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([np.corrcoef(a[t].numpy(), b[t].numpy())[0, 1] for t in range(len(a))]))


def main() -> None:
    torch.set_num_threads(1)
    try:
        import kronfluence  # noqa: F401
    except ImportError:
        print("kronfluence is not installed (see the module docstring): nothing to compare")
        return
    nets = {
        "MLP 64-32-10": (lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                         False),
        "CNN (make_cnn, width 4)": (lambda: make_cnn(10, (1, 8, 8), 4), True),
    }
    print(f"digits: {N} training points, {T} targets, λ_wd {WD}, λ {LAM}; one thread")
    print("| network | empirical Fisher: r | ggn vs kronfluence's sampled: r | "
          "sampled vs sampled: r | CPU s: ours (empirical) / kronfluence (empirical) |")
    print("|---|---:|---:|---:|---:|")
    for name, (make, image) in nets.items():
        x, y, tx, ty = digits(image)
        net = trained(make(), x, y)
        model = module_model(net, 10, WD, dtype=torch.float64)
        ours, seconds = {}, []
        for fisher in ("empirical", "ggn", "sampled"):
            start = time.process_time()
            ek = fit_ekfac(model, x, y, damping=LAM, fisher=fisher)
            ours[fisher] = ekfac_scores(model, ek, tx, ty, x, y)
            seconds.append(time.process_time() - start)
        start = time.process_time()
        theirs = kronfluence_scores(net, x, y, tx, ty, empirical=True)
        t_theirs = time.process_time() - start
        sampled = kronfluence_scores(net, x, y, tx, ty, empirical=False)
        print(f"| {name} | {per_target_r(ours['empirical'], -theirs):.6f} | "
              f"{per_target_r(ours['ggn'], -sampled):.4f} | "
              f"{per_target_r(ours['sampled'], -sampled):.4f} | "
              f"{seconds[0]:.2f} / {t_theirs:.2f} |", flush=True)
    print("(kronfluence's score is ∇m_tᵀ(H+λI)⁻¹∇ℓ(z), ours −(1/n) times that plus a "
          "per-target constant: r is taken against its negative)")


if __name__ == "__main__":
    main()
