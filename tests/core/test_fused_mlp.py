"""The fused MLP autograd path (`polycom.ops.fused_mlp`) and the closed-form ops behind the torch backend.

Oracles: the unfused module (fused=False: nn.Linear + activation module) and an fp64 formula written here.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import polycom
from polycom.bench.saved import count_saved
from polycom.ops.fused_mlp import fused_mlp

FUSED = ["polynorm", "polyrelu", "polynorm_glu", "polyrelu_glu", "swiglu"]


def _formula(x, m):
    """fp64 MLP written out: PolyNorm / PolyReLU (weight[0] on the highest power), SwiGLU, gated product."""
    lin = lambda layer, t: t @ layer.weight.T + (layer.bias if layer.bias is not None else 0)  # noqa: E731
    h = lin(m.gate_proj, x) if m.gated else lin(m.up_proj, x)
    if m.activation_name == "swiglu":
        a = h * torch.sigmoid(h)
    else:
        w, b, r = m.act.weight, m.act.bias, m.act.order
        if "polynorm" in m.activation_name:
            terms = [h**i / torch.sqrt((h**i).pow(2).mean(-1, keepdim=True) + m.act.eps) for i in range(1, r + 1)]
        else:
            terms = [torch.relu(h) ** i for i in range(1, r + 1)]
        a = b + sum(w[r - i] * terms[i - 1] for i in range(1, r + 1))
    if m.gated:
        a = a * lin(m.up_proj, x)
    return lin(m.down_proj, a)


def _mlp(name, bias=False, order=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    kwargs = {"activation_kwargs": {"order": order}} if name != "swiglu" else {}
    m = polycom.MLP(12, name, 20, bias=bias, dtype=dtype, **kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    if name != "swiglu":
        m.act.to(dtype)
    return m


def _grads(m, x, dy):
    y = m(x)
    return y, torch.autograd.grad(y, [x, *m.parameters()], dy)


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("order", [1, 3, 4])
def test_every_gradient_matches_the_unfused_module_and_the_formula_fp64(name, bias, order):
    m = _mlp(name, bias, order)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 5, 12, dtype=torch.float64)
    y_fused, g_fused = _grads(m, x, dy)
    m.fused = False
    y_ref, g_ref = _grads(m, x, dy)
    y_formula = _formula(x, m)
    g_formula = torch.autograd.grad(y_formula, [x, *m.parameters()], dy)
    torch.testing.assert_close(y_fused, y_formula, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y_ref, y_formula, rtol=1e-12, atol=1e-12)
    for (pname, _), gf, gr, g0 in zip([("x", x), *m.named_parameters()], g_fused, g_ref, g_formula):
        torch.testing.assert_close(gf, g0, rtol=1e-10, atol=1e-11, msg=f"{name}: d{pname}")
        torch.testing.assert_close(gr, g0, rtol=1e-10, atol=1e-11, msg=f"{name} unfused: d{pname}")


@pytest.mark.parametrize("name", ["polynorm", "polyrelu_glu", "swiglu"])
def test_gradcheck_of_the_fused_function(name):
    m = _mlp(name, bias=True)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


@pytest.mark.parametrize(
    "name, expected",
    [
        # (shape, dtype) of what autograd keeps besides the parameters: x, h (gated: gate, up), PolyNorm's stats
        # (r = 3 inverse RMS values and the row scale s per row)
        ("polynorm", [((7, 12), torch.float64), ((7, 20), torch.float64), ((7, 4), torch.float64)]),
        ("polyrelu", [((7, 12), torch.float64), ((7, 20), torch.float64)]),
        (
            "polynorm_glu",
            [((7, 12), torch.float64), ((7, 20), torch.float64), ((7, 20), torch.float64), ((7, 4), torch.float64)],
        ),  # fmt: skip
        ("swiglu", [((7, 12), torch.float64), ((7, 20), torch.float64), ((7, 20), torch.float64)]),
    ],
)
def test_saved_tensors_are_x_and_h_only(name, expected):
    m = _mlp(name)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    _, saved = count_saved(lambda: m(x), exclude=m.parameters())
    assert saved.tensors == expected
    m.fused = False
    _, unfused = count_saved(lambda: m(x), exclude=m.parameters())
    assert unfused.bytes > saved.bytes  # the activation output (and more) is kept without the fused path


def test_autocast_bf16_matches_the_unfused_module():
    m = _mlp("polynorm_glu", dtype=torch.float32)
    x = torch.randn(4, 6, 12, requires_grad=True)
    outs = []
    for fused in (True, False):
        m.fused = fused
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16
        grads = torch.autograd.grad(y.float().square().sum(), [x, *m.parameters()])
        assert all(g.dtype == torch.float32 for g in grads)
        outs.append((y.float(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0.02, atol=0.02)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


def test_activation_checkpointing_gives_the_same_gradients():
    m = _mlp("polynorm")
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    _, plain = _grads(m, x, torch.ones(3, 12, dtype=torch.float64))
    y = checkpoint(m, x, use_reentrant=False)
    ckpt = torch.autograd.grad(y, [x, *m.parameters()], torch.ones_like(y))
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", FUSED)
def test_compile_fullgraph_matches_eager(name):
    m = _mlp(name, dtype=torch.float32)
    x = torch.randn(4, 12, requires_grad=True)
    y_eager, g_eager = _grads(m, x, torch.ones(4, 12))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, g = _grads(compiled, x, torch.ones(4, 12))
    torch.testing.assert_close(y, y_eager)
    for a, b in zip(g, g_eager):
        torch.testing.assert_close(a, b)


def test_hooks_and_other_activations_take_the_unfused_path():
    m = _mlp("polyrelu")
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    seen = []
    m.act.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    m(x)
    assert seen == [(5, 20)]  # the activation module ran: hooks keep working
    gelu = polycom.MLP(12, "gelu", 20)
    assert gelu._fused_kind(torch.randn(2, 12)) is None
    assert polycom.MLP(12, "polynorm", 20, fused=False)._fused_kind(torch.randn(2, 12)) is None


def test_model_config_switch_reaches_the_blocks():
    from polycom.models.config import ModelConfig
    from polycom.models.transformer import build_model

    on = build_model(ModelConfig(activation="polynorm"))
    off = build_model(ModelConfig(activation="polynorm", fused_mlp=False))
    assert all(b.mlp.fused for b in on.layers) and not any(b.mlp.fused for b in off.layers)
    off.load_state_dict(on.state_dict())
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(on(ids, ids).loss, off(ids, ids).loss, rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_the_problem():
    w = torch.randn(4, 3)
    with pytest.raises(ValueError, match="must be one of polynorm, polyrelu, swiglu, got 'gelu'"):
        fused_mlp(torch.randn(2, 3), w, w.T, "gelu")
    with pytest.raises(ValueError, match="needs gate_w"):
        fused_mlp(torch.randn(2, 3), w, w.T, "swiglu")
    with pytest.raises(ValueError, match="needs the activation coefficients"):
        fused_mlp(torch.randn(2, 3), w, w.T, "polynorm")
