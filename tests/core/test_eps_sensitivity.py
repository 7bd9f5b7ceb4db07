"""eps reaches the math: PolyNorm (plain, gated, module, registry, MLP) and RMSNorm against fp64 formulas.

The inputs are rows whose mean square sits near eps, where the result depends on eps at first order
(a default-tolerance comparison on unit-scale rows cannot see eps at all: 1e-6 next to mean(x**2) ~ 1).
Each test first checks that its data is eps-sensitive, so it cannot pass with eps ignored.

fp64 formulas written here (paper / official PolyCom code, ``weight[0]`` multiplies the highest power):

    N_eps(u)      = u / sqrt(mean(u**2, -1) + eps)
    PolyNorm(x)   = sum_{i=1..r} weight[r-i] * N_eps(x**i) + bias
    RMSNorm(x)    = x / sqrt(mean(x**2, -1) + eps) * gain
"""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.models import ModelConfig, build_model
from polycom.models.layers import RMSNorm

pytestmark = pytest.mark.usefixtures("torch_backend")

NON_DEFAULT_EPS = [1e-2, 3e-4]


@pytest.fixture
def torch_backend():
    with polycom.use_backend("torch"):
        yield


def poly_norm_fp64(x, weight, bias, eps):
    x, weight, bias = x.double(), weight.double(), bias.double()
    r = weight.numel()
    y = bias.expand_as(x).clone()
    for i in range(1, r + 1):
        u = x**i
        y = y + weight[r - i] * u / torch.sqrt((u * u).mean(-1, keepdim=True) + eps)
    return y


def rms_norm_fp64(x, gain, eps):
    x = x.double()
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gain.double()


def rows_near_eps(eps: float, h: int = 48) -> torch.Tensor:
    """Rows with mean(x**2) = eps/10, eps, 10 eps and 100 eps, plus one all-zero row; fp32, (5, h)."""
    base = torch.randn(4, h, dtype=torch.float64)
    base = base / base.square().mean(-1, keepdim=True).sqrt()  # unit mean square per row
    target = torch.tensor([[0.1], [1.0], [10.0], [100.0]], dtype=torch.float64) * eps
    x = base * target.sqrt()
    return torch.cat([x, torch.zeros(1, h, dtype=torch.float64)]).float()


def random_coefficients(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(r) * 0.5 + 0.3, torch.randn(1)


def _assert_eps_sensitive(fp64_fn, eps):
    """The test data must move by far more than the tolerance when eps is off by 10x."""
    moved = (fp64_fn(eps) - fp64_fn(eps * 10)).abs().max().item()
    assert moved > 1e-2, f"test data is not eps-sensitive (moved {moved:.3g})"


# --------------------------------------------------------------------------------- functional ops


@pytest.mark.parametrize("eps", NON_DEFAULT_EPS)
@pytest.mark.parametrize("r", [1, 3])
def test_poly_norm_rows_near_eps_match_fp64(eps, r):
    x = rows_near_eps(eps)
    w, b = random_coefficients(r)
    _assert_eps_sensitive(lambda e: poly_norm_fp64(x, w, b, e), eps)
    out = polycom.poly_norm(x, w, b, eps=eps)
    torch.testing.assert_close(out.double(), poly_norm_fp64(x, w, b, eps), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[-1], b.expand(x.shape[-1]), rtol=0, atol=0)  # zero row -> bias


@pytest.mark.parametrize("eps", NON_DEFAULT_EPS)
def test_poly_norm_gated_rows_near_eps_match_fp64(eps):
    gate = rows_near_eps(eps)
    up = torch.randn(gate.shape)
    w, b = random_coefficients(3)
    _assert_eps_sensitive(lambda e: poly_norm_fp64(gate, w, b, e) * up.double(), eps)
    out = polycom.poly_norm_gated(gate, up, w, b, eps=eps)
    expected = poly_norm_fp64(gate, w, b, eps) * up.double()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", NON_DEFAULT_EPS)
def test_poly_norm_gradients_near_eps_match_fp64(eps):
    """dx, dweight and dbias of the fp32 op equal autograd through the fp64 formula."""
    x = rows_near_eps(eps)[:4]
    w, b = random_coefficients(3)
    dy = torch.randn(x.shape)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
    polycom.poly_norm(*leaves, eps=eps).backward(dy)
    ref = [t.double().requires_grad_(True) for t in (x, w, b)]
    poly_norm_fp64(*ref, eps).backward(dy.double())
    for name, got, want in zip(("dx", "dweight", "dbias"), leaves, ref):
        scale = want.grad.abs().max().item()
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


# --------------------------------------------------------------------------------------- modules


def _with_random_coefficients(module):
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape) * 0.5 + 0.3)
        module.bias.copy_(torch.randn(1))
    return module


@pytest.mark.parametrize("eps", NON_DEFAULT_EPS)
def test_poly_norm_module_uses_its_eps(eps):
    m = _with_random_coefficients(polycom.PolyNorm(order=3, eps=eps))
    x = rows_near_eps(eps, h=40)
    _assert_eps_sensitive(lambda e: poly_norm_fp64(x, m.weight.detach(), m.bias.detach(), e), eps)
    out = m(x)
    torch.testing.assert_close(
        out.double(), poly_norm_fp64(x, m.weight.detach(), m.bias.detach(), eps), rtol=1e-5, atol=1e-6
    )
    assert torch.equal(out, polycom.poly_norm(x, m.weight, m.bias, eps))  # module == functional, bit for bit


@pytest.mark.parametrize("eps", NON_DEFAULT_EPS)
def test_gated_poly_norm_module_uses_its_eps(eps):
    m = _with_random_coefficients(polycom.PolyNormGated(order=2, eps=eps))
    gate, up = rows_near_eps(eps, h=40), torch.randn(5, 40)
    expected = poly_norm_fp64(gate, m.weight.detach(), m.bias.detach(), eps) * up.double()
    out = m(gate, up)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out, polycom.poly_norm_gated(gate, up, m.weight, m.bias, eps))


@pytest.mark.parametrize("name", ["polynorm", "polynorm_glu"])
def test_registry_and_mlp_pass_eps_to_the_activation(name):
    """get_activation(..., eps=) and MLP(activation_kwargs={"eps": ...}) build an activation that uses it."""
    eps = 1e-2
    act = _with_random_coefficients(polycom.get_activation(name, order=3, eps=eps))
    mlp = polycom.MLP(16, name, hidden_size=40, activation_kwargs={"order": 3, "eps": eps})
    for module in (act, mlp.act):
        assert module.eps == eps
    x = rows_near_eps(eps, h=40)
    args = (x, torch.randn(x.shape)) if polycom.is_gated(act) else (x,)
    ref = poly_norm_fp64(x, act.weight.detach(), act.bias.detach(), eps)
    expected = ref * args[1].double() if len(args) == 2 else ref
    torch.testing.assert_close(act(*args).double(), expected, rtol=1e-5, atol=1e-6)


def test_default_eps_is_1e_6_and_reaches_the_math():
    """The default (official code) eps of the module and the functional op: rows with mean square 1e-6."""
    m = _with_random_coefficients(polycom.PolyNorm(order=3))
    x = rows_near_eps(1e-6, h=32)
    expected = poly_norm_fp64(x, m.weight.detach(), m.bias.detach(), 1e-6)
    torch.testing.assert_close(m(x).double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(polycom.poly_norm(x, m.weight, m.bias).double(), expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("eps", [1e-5, *NON_DEFAULT_EPS])
def test_rms_norm_rows_near_eps_match_fp64(eps):
    norm = RMSNorm(48, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48) + 0.5)
    x = rows_near_eps(eps)
    gain = norm.weight.detach()
    _assert_eps_sensitive(lambda e: rms_norm_fp64(x, gain, e), eps)
    out = norm(x)
    torch.testing.assert_close(out.double(), rms_norm_fp64(x, gain, eps), rtol=1e-5, atol=1e-6)
    assert torch.equal(out[-1], torch.zeros(48))  # zero row stays zero (finite)


def test_rms_norm_bf16_is_fp64_then_one_cast():
    eps = 1e-2
    norm = RMSNorm(64, eps=eps)
    x = rows_near_eps(eps, h=64)[:4].to(torch.bfloat16)
    expected = rms_norm_fp64(x, norm.weight.detach(), eps).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    ulp = torch.finfo(torch.bfloat16).eps * expected.double().abs()
    assert ((out.double() - expected.double()).abs() <= ulp).all()


def test_model_and_hf_norm_eps_reach_every_rmsnorm():
    """ModelConfig.norm_eps and the HF config's rms_norm_eps set the eps of every RMSNorm in the model."""
    from polycom.hf import PolyComConfig, PolyComForCausalLM

    cfg = ModelConfig(vocab_size=16, d_model=32, n_layers=2, n_heads=2, qk_norm=True, norm_eps=3e-3)
    model = build_model(cfg)
    hf = PolyComForCausalLM(PolyComConfig.from_model_config(cfg))
    for m in (model, hf):
        norms = [mod for mod in m.modules() if isinstance(mod, RMSNorm)]
        assert len(norms) == 2 * 2 + 2 * 2 + 1  # per layer: attn, mlp, q, k; plus the final norm
        assert {n.eps for n in norms} == {3e-3}
