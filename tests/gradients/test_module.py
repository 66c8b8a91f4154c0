"""Any nn.Module through torch.func.functional_call: gradients, HVPs and the last layer equal
autograd on the module itself (float64, so the tolerances are round-off)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodels.gradients import representer_scores, representer_self_scores
from datamodels.gradients.grads import hvp_fn, per_example_grads, per_example_outputs
from datamodels.gradients.model import objective
from datamodels.gradients.module import module_model
from datamodels.gradients.representer import representer_alphas
from datamodels.models.resnet9 import build_resnet9

C = 3
WEIGHT_DECAY = 0.05


class Scaled(nn.Module):
    """A small CNN whose logits are its last linear layer's output times 0.5 (as resnet9's
    1/8), with BatchNorm and a frozen first convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.stem.weight.requires_grad_(False)
        self.body = nn.Sequential(
            nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(5, C, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x))) * 0.5


def with_statistics(net: nn.Module) -> nn.Module:
    """Running statistics away from (0, 1), so eval-mode BatchNorm is not the identity."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net


def nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "resnet9": with_statistics(build_resnet9(0, C, 4)),
        "scaled_cnn": with_statistics(Scaled()),
    }


def images(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, C, (n,), generator=gen)


def reference(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).double().eval()


def trainable_grad(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in net.parameters() if p.requires_grad])


@pytest.mark.parametrize("name", ["resnet9", "scaled_cnn"])
def test_per_example_gradients_equal_autograd_on_the_module(name):
    net = nets()[name]
    ref = reference(net)
    model = module_model(net, C, WEIGHT_DECAY, dtype=torch.float64)
    assert model.num_params == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    x, y = images()
    grads = per_example_grads(model, x, y, "loss", chunk_size=4)
    terms = per_example_grads(model, x, y, "term", chunk_size=4)
    for i in range(len(x)):
        ref.zero_grad()
        F.cross_entropy(ref(x[i : i + 1].double()), y[i : i + 1]).backward()
        torch.testing.assert_close(grads[i], trainable_grad(ref), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            terms[i], trainable_grad(ref) + WEIGHT_DECAY * model.params, rtol=1e-10, atol=1e-12
        )
    with torch.no_grad():  # eval mode: the running statistics, one example at a time
        logits = ref(x.double())
    outputs = per_example_outputs(model, x, y, "loss", chunk_size=4)
    torch.testing.assert_close(outputs, F.cross_entropy(logits, y, reduction="none"))


def test_hessian_vector_products_chunked_or_not_equal_double_backward():
    net = nets()["resnet9"]
    model = module_model(net, C, WEIGHT_DECAY, dtype=torch.float64)
    x, y = images(7)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(2, model.num_params, dtype=torch.float64, generator=gen)
    p = model.params.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(model, p, x, y), p, create_graph=True)
    expected = torch.stack([torch.autograd.grad(g, p, u, retain_graph=True)[0] for u in v])
    for chunk in (None, 3):
        torch.testing.assert_close(
            hvp_fn(model, x, y, chunk_size=chunk)(v), expected, rtol=1e-9, atol=1e-11
        )


def test_representer_decomposes_a_stationary_last_layer_through_the_output_scale():
    """Solve the last layer to stationarity on fixed features; then Σ_i score[t, i] is the
    logit itself (logits = 0.5·z): the chain rule through the scale is exact."""
    net = nets()["scaled_cnn"].double().eval()
    x, y = images(30)
    x = x.double()
    with torch.no_grad():
        features = net.body(net.stem(x))
    W = torch.zeros(C, features.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([W], max_iter=500, tolerance_grad=1e-13, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(0.5 * features @ W.T, y) + 0.5 * WEIGHT_DECAY * (W * W).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        net.head.weight.copy_(W.detach())
    model = module_model(net, C, WEIGHT_DECAY, dtype=torch.float64)
    tx, ty = x[:5], y[:5]
    logits = model.logits_fn(model.params, tx)
    true_class = representer_scores(model, x, y, tx, ty, output="true_class", chunk_size=7)
    torch.testing.assert_close(true_class.sum(1), logits.gather(1, ty.view(-1, 1)).squeeze(1))
    margin = representer_scores(model, x, y, tx, ty, chunk_size=7)
    other = logits.scatter(1, ty.view(-1, 1), float("-inf")).argmax(1)
    expected = logits.gather(1, ty.view(-1, 1)) - logits.gather(1, other.view(-1, 1))
    torch.testing.assert_close(margin.sum(1), expected.squeeze(1))
    # α = −(1/(λn))·∂ℓ/∂z with ∂ℓ/∂z = 0.5·(softmax − onehot); self = (0.5·α_{i,y_i})·||f_i||²
    alphas = representer_alphas(model, x, y)
    softmax = torch.softmax(model.logits_fn(model.params, x), 1)
    dz = 0.5 * (softmax - F.one_hot(y, C).double())
    torch.testing.assert_close(alphas, -dz / (WEIGHT_DECAY * len(x)))
    own = representer_self_scores(model, x, y)
    torch.testing.assert_close(
        own, 0.5 * alphas.gather(1, y.view(-1, 1)).squeeze(1) * (features * features).sum(1)
    )


def test_a_module_without_a_last_linear_layer_is_refused_in_one_line():
    net = nn.Sequential(nn.Conv2d(3, C, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = module_model(net, C, WEIGHT_DECAY)
    assert model.head_io is None
    x, y = images()
    with pytest.raises(ValueError, match="need a last linear layer: the module has no nn.Linear"):
        representer_scores(model, x, y, x, y)
    wrong = nn.Sequential(nn.Flatten(), nn.Linear(192, 7))
    with pytest.raises(ValueError, match="maps to 7 outputs, not the 3 classes"):
        representer_self_scores(module_model(wrong, C, WEIGHT_DECAY), x, y)
    # the other estimators do not need it
    assert per_example_grads(model, x, y).shape == (len(x), model.num_params)


@pytest.mark.gpu
def test_cuda_gives_the_cpu_numbers(monkeypatch):
    """The same module on CUDA: per-example gradients, HVPs, representer scores and the
    block projection (fp32 exact against its dense matrix, bf16 within its rounding)."""
    from datamodels.gradients.projection import Projection

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions
    net = nets()["resnet9"]
    cpu = module_model(copy.deepcopy(net), C, WEIGHT_DECAY)
    gpu = module_model(copy.deepcopy(net), C, WEIGHT_DECAY, device="cuda")
    x, y = images(8)
    xc, yc = x.cuda(), y.cuda()
    grads = per_example_grads(gpu, xc, yc, "trak", chunk_size=4)
    torch.testing.assert_close(
        grads.cpu(), per_example_grads(cpu, x, y, "trak"), rtol=1e-3, atol=1e-5
    )
    v = torch.randn(2, cpu.num_params, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        hvp_fn(gpu, xc, yc, chunk_size=3)(v.cuda()).cpu(), hvp_fn(cpu, x, y)(v),
        rtol=1e-3, atol=1e-4,
    )
    torch.testing.assert_close(
        representer_scores(gpu, xc, yc, xc[:3], yc[:3]).cpu(),
        representer_scores(cpu, x, y, x[:3], y[:3]), rtol=1e-3, atol=1e-6,
    )
    projection = Projection(gpu.num_params, 64, seed=0, block_rows=4096)
    dense = projection.dense("cuda", torch.float64)
    torch.testing.assert_close(
        projection.project(grads.double()), grads.double() @ dense, rtol=1e-9, atol=1e-9
    )
    low = Projection(gpu.num_params, 64, seed=0, block_rows=4096, precision="bf16")
    exact = grads.double() @ dense
    assert float((low.project(grads).double() - exact).norm() / exact.norm()) < 2e-2


def test_the_representer_layer_can_be_named():
    """A module whose last-registered nn.Linear is not its head: refused by default, and
    right when ``gradients.representer_layer`` names the head."""

    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 6), nn.ReLU())
            self.head = nn.Linear(6, C)
            self.aux = nn.Linear(6, 2)  # registered last, never used for the logits

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    torch.manual_seed(0)
    net = WithAux().double()
    x, y = images(12)
    x = x.double()
    with pytest.raises(ValueError, match="maps to 2 outputs"):
        representer_scores(module_model(net, C, WEIGHT_DECAY, dtype=torch.float64), x, y, x, y)
    named = module_model(net, C, WEIGHT_DECAY, dtype=torch.float64, head="head")
    plain = nn.Sequential(net.body, net.head)
    reference = module_model(plain, C, WEIGHT_DECAY, dtype=torch.float64)
    torch.testing.assert_close(
        representer_scores(named, x, y, x[:3], y[:3]),
        representer_scores(reference, x, y, x[:3], y[:3]),
    )
    for bad, message in (("nope", "is not a submodule"), ("body", "is not an nn.Linear")):
        model = module_model(net, C, WEIGHT_DECAY, dtype=torch.float64, head=bad)
        with pytest.raises(ValueError, match=message):
            representer_scores(model, x, y, x, y)
