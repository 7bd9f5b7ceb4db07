"""General PolyCom (Type I / Type II, any base) and the ablation variants PolyPReLU and PolyReLUNorm,
checked against an fp64 formula written here, including gradients, the fused special cases, the
registry / MLP parameter matching and bad input."""

import math

import pytest
import torch

from polycom.modules import (
    MLP,
    PolyCom,
    PolyNorm,
    PolyPReLU,
    PolyReLU,
    PolyReLUNorm,
    activation_spec,
    get_activation,
    is_polycom_parameter,
)
from polycom.modules.general_polycom import BASES


def rms(u: torch.Tensor, eps: float) -> torch.Tensor:
    return u / torch.sqrt((u * u).mean(dim=-1, keepdim=True) + eps)


def rho64(name: str, u: torch.Tensor, slope: float, eps: float) -> torch.Tensor:
    """The base functions, written independently of the module (fp64)."""
    if name == "relu":
        return torch.clamp(u, min=0.0)
    if name == "prelu":
        return torch.where(u > 0, u, slope * u)
    if name == "silu":
        return u / (1.0 + torch.exp(-u))
    if name == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-u))
    if name == "rms_norm":
        return rms(u, eps)
    return u


def formula(x, weight, bias, *, base, composition, normalize, eps=1e-6, slope=0.25):
    """y = sum_{i=1..r} w[r-i] T(rho(x)^i or rho(x^i)) + b in fp64."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    r = weight.numel()
    y = torch.zeros_like(x) + bias
    for i in range(1, r + 1):
        term = rho64(base, x, slope, eps) ** i if composition == 1 else rho64(base, x**i, slope, eps)
        if normalize:
            term = rms(term, eps)
        y = y + weight[r - i] * term
    return y


def random_coefficients(act: PolyCom, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        act.weight.copy_(torch.randn(act.weight.shape, generator=g))
        act.bias.copy_(torch.randn(1, generator=g))
        if getattr(act, "prelu_weight", None) is not None:
            act.prelu_weight.fill_(0.1)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("composition", [1, 2])
@pytest.mark.parametrize("normalize", [False, True])
def test_forward_and_gradients_match_the_fp64_formula(base, composition, normalize):
    act = PolyCom(order=3, base=base, composition=composition, normalize=normalize).double()
    random_coefficients(act)
    x = torch.randn(4, 7, 24, dtype=torch.float64, requires_grad=True)
    slope = 0.1
    y = act(x)
    want = formula(x, act.weight, act.bias, base=base, composition=composition, normalize=normalize, slope=slope)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    # gradients w.r.t. input and coefficients against autograd through the independent formula
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, act.weight, act.bias), g)
    x2 = x.detach().clone().requires_grad_(True)
    w2, b2 = act.weight.detach().clone().requires_grad_(True), act.bias.detach().clone().requires_grad_(True)
    ref = formula(x2, w2, b2, base=base, composition=composition, normalize=normalize, slope=slope)
    want_grads = torch.autograd.grad(ref, (x2, w2, b2), g)
    for a, b in zip(got, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_prelu_slope_is_learned_and_matches_the_formula_gradient():
    act = PolyPReLU().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    assert act.prelu_weight.item() == 0.25 and act.weight.tolist() == pytest.approx([1 / 3] * 3, rel=1e-7)
    y = act(x)
    y.sum().backward()
    neg = x[x < 0]
    # d/ds sum_i w[r-i] (s x)^i over x < 0 = sum_i w[r-i] i s^(i-1) x^i
    s = 0.25
    want = sum(act.weight[3 - i].item() * i * s ** (i - 1) * (neg**i).sum() for i in (1, 2, 3))
    assert math.isclose(act.prelu_weight.grad.item(), want.item(), rel_tol=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_special_cases_equal_the_fused_activations(order):
    x = torch.randn(5, 32)
    relu_general, relu_fused = PolyCom(order, base="relu", composition=1), PolyReLU(order)
    norm_general = PolyCom(order, base="rms_norm", composition=2)
    norm_identity = PolyCom(order, base="identity", composition=2, normalize=True)
    norm_fused = PolyNorm(order)
    for module in (relu_general, relu_fused, norm_general, norm_identity, norm_fused):
        random_coefficients(module, seed=order)
    torch.testing.assert_close(relu_general(x), relu_fused(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norm_general(x), norm_fused(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm_identity(x), norm_fused(x), rtol=1e-5, atol=1e-5)


def test_polyrelunorm_is_sum_of_normalised_relu_powers():
    act = PolyReLUNorm().double()
    random_coefficients(act)
    x = torch.randn(6, 40, dtype=torch.float64)
    relu = x.clamp(min=0)
    want = act.bias + sum(act.weight[3 - i] * rms(relu**i, 1e-6) for i in (1, 2, 3))
    torch.testing.assert_close(act(x), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_computes_in_fp32_and_casts_once(dtype):
    act = PolyCom(order=3, base="silu", composition=2, normalize=True)
    x = torch.randn(4, 64).to(dtype)
    y = act(x)
    assert y.dtype == dtype
    assert torch.equal(y, act(x.float()).to(dtype))  # fp32 math on the upcast input, one cast at the end
    want = formula(x, act.weight, act.bias, base="silu", composition=2, normalize=True)
    torch.testing.assert_close(act(x.float()).double(), want, rtol=1e-5, atol=1e-5)


def test_registry_mlp_matching_and_optimizer_rules():
    for name in ("polycom", "polyprelu", "polyrelunorm"):
        spec = activation_spec(name)
        assert spec.is_polycom and not spec.gated
        d = 64
        plain, gated = MLP(d, name), MLP(d, "swiglu")
        assert plain.hidden_size == 3 * gated.hidden_size // 2
        linear = sum(p.numel() for n, p in plain.named_parameters() if n.endswith("proj.weight"))
        assert linear == sum(p.numel() for p in gated.parameters())
        assert is_polycom_parameter(plain, "act.weight")
    mlp = MLP(16, "polyprelu")
    assert is_polycom_parameter(mlp, "act.prelu_weight")  # no weight decay, kept at init by the models
    act = get_activation("polycom", order=2, base="sigmoid", composition=2)
    assert act.order == 2 and act.base == "sigmoid" and act.weight.tolist() == [0.5, 0.5]


def test_model_reset_keeps_the_activation_init():
    from polycom.models import ModelConfig, build_model

    model = build_model(ModelConfig(activation="polyprelu"))
    act = model.layers[0].mlp.act
    with torch.no_grad():
        act.prelu_weight.fill_(3.0)
        act.weight.fill_(2.0)
    model.init_weights()
    assert act.prelu_weight.item() == 0.25 and act.weight.tolist() == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"base": "tanh"}, ValueError, "unknown PolyCom base 'tanh'"),
        ({"composition": 3}, ValueError, "composition must be 1"),
        ({"composition": True}, ValueError, "composition must be 1"),
        ({"order": 0}, ValueError, "order must be >= 1"),
        ({"eps": -1.0}, ValueError, "eps must be > 0"),
    ],
)
def test_bad_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        PolyCom(**kwargs)


def test_bad_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        PolyCom()(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty last dimension"):
        PolyCom()(torch.ones(3, 0))
    with pytest.raises(TypeError, match="does not take base"):
        get_activation("polyprelu", base="relu")
