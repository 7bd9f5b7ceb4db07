"""Custom-op registration (opcheck), torch.compile without graph breaks, and backend dispatch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import polycom
import polycom.ops.backend
from polycom.ops import reference
from polycom.ops.triton import launch, ops


def _coefficients(r=3):
    return torch.randn(r, requires_grad=True), torch.randn(1, requires_grad=True)


# ------------------------------------------------------------------------------ opcheck


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_opcheck_poly_norm(gated):
    x = torch.randn(2, 3, 40, requires_grad=True)
    up = torch.randn(2, 3, 40, requires_grad=True) if gated else None
    w, b = _coefficients()
    torch.library.opcheck(ops.poly_norm_fwd, (x, up, w, b, 1e-6))
    _, rstd = ops.poly_norm_fwd(x.detach(), None if up is None else up.detach(), w.detach(), b.detach(), 1e-6)
    grad = torch.randn(2, 3, 40)
    bwd_args = (grad, x.detach(), None if up is None else up.detach(), w.detach(), b.detach(), rstd)
    torch.library.opcheck(ops.poly_norm_bwd, bwd_args)


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_opcheck_poly_relu(gated):
    x = torch.randn(5, 33, dtype=torch.bfloat16, requires_grad=True)
    up = torch.randn(5, 33, dtype=torch.bfloat16, requires_grad=True) if gated else None
    w, b = _coefficients(4)
    torch.library.opcheck(ops.poly_relu_fwd, (x, up, w, b))
    grad = torch.randn(5, 33, dtype=torch.bfloat16)
    args = (grad, x.detach(), None if up is None else up.detach(), w.detach(), b.detach())
    torch.library.opcheck(ops.poly_relu_bwd, args)


def test_fake_kernels_give_fp32_statistics_for_half_inputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 6, 10, dtype=torch.bfloat16)
        y, rstd = ops.poly_norm_fwd(x, None, torch.empty(3), torch.empty(1), 1e-6)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert rstd.shape == (24, 3) and rstd.dtype == torch.float32


# ------------------------------------------------------------------------------ torch.compile


def _graph_ops_backend(seen: list):
    """A torch.compile backend that records the ops of the captured graph and runs it eagerly."""

    def backend(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    return backend


@pytest.mark.parametrize(
    "activation,op_name",
    [("polynorm", "poly_norm_fwd"), ("polynorm_glu", "poly_norm_fwd"), ("polyrelu", "poly_relu_fwd")],
)
def test_compiled_mlp_full_graph_goes_through_custom_op(activation, op_name):
    mlp = polycom.MLP(32, activation, hidden_size=48)
    inp = torch.randn(2, 5, 32)
    seen: list[str] = []
    with polycom.use_backend("triton"):
        compiled = torch.compile(mlp, fullgraph=True, backend=_graph_ops_backend(seen))
        out = compiled(inp)
        out.square().sum().backward()
    assert any(f"polycom.{op_name}" in target for target in seen), seen
    grads = {name: p.grad.clone() for name, p in mlp.named_parameters()}
    mlp.zero_grad()
    with polycom.use_backend("torch"):
        expected = mlp(inp)
        expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for name, p in mlp.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-4, msg=name)


def test_compiled_full_graph_with_env_var_backend(monkeypatch):
    """POLYCOM_BACKEND=triton (the environment variable, read at trace time) selects the custom op too."""
    torch._dynamo.reset()
    monkeypatch.setenv("POLYCOM_BACKEND", "triton")
    mlp = polycom.MLP(16, "polyrelu_glu", hidden_size=32)
    seen: list[str] = []
    out = torch.compile(mlp, fullgraph=True, backend=_graph_ops_backend(seen))(torch.randn(3, 16))
    out.sum().backward()
    assert any("polycom.poly_relu_fwd" in target for target in seen), seen


@pytest.mark.slow
def test_inductor_compiled_mlp_runs_kernels_forward_and_backward():
    """Default (Inductor) backend, fullgraph: the op is an opaque extern call running the kernels."""
    torch._dynamo.reset()
    mlp = polycom.MLP(32, "polynorm_glu", hidden_size=64)
    inp = torch.randn(3, 32)
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = launch.poly_norm_forward, launch.poly_norm_backward

    def count_fwd(*a):
        calls["fwd"] += 1
        return fwd(*a)

    def count_bwd(*a):
        calls["bwd"] += 1
        return bwd(*a)

    with pytest.MonkeyPatch.context() as mp, polycom.use_backend("triton"):
        mp.setattr(launch, "poly_norm_forward", count_fwd)
        mp.setattr(launch, "poly_norm_backward", count_bwd)
        out = torch.compile(mlp, fullgraph=True)(inp)
        out.sum().backward()
    assert calls["fwd"] >= 1 and calls["bwd"] >= 1
    with polycom.use_backend("torch"):
        torch.testing.assert_close(out, mlp(inp), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ dispatch


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = []
    for name in ("poly_norm_forward", "poly_relu_forward"):
        original = getattr(launch, name)

        def spy(*args, _original=original, _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(launch, name, spy)
    return calls


def test_triton_backend_forces_kernels_on_cpu(kernel_calls):
    x = torch.randn(4, 16)
    w, b = _coefficients()
    with polycom.use_backend("triton"):
        y = polycom.poly_norm(x, w, b)
        polycom.poly_relu_gated(x, x, w, b)
    assert kernel_calls == ["poly_norm_forward", "poly_relu_forward"]
    torch.testing.assert_close(y, reference.poly_norm_reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_auto_backend_uses_reference_for_cpu_tensors(kernel_calls):
    x = torch.randn(4, 16)
    w, b = _coefficients()
    with polycom.use_backend("auto"):
        polycom.poly_norm(x, w, b)
        polycom.poly_relu(x, w, b)
    assert kernel_calls == []


def test_missing_triton_auto_falls_back_and_triton_raises(monkeypatch, kernel_calls):
    monkeypatch.setattr(polycom.ops.backend, "triton_available", lambda: False)
    x = torch.randn(4, 16)
    w, b = _coefficients()
    with polycom.use_backend("auto"):
        torch.testing.assert_close(polycom.poly_norm(x, w, b), reference.poly_norm_reference(x, w, b))
    with polycom.use_backend("triton"), pytest.raises(RuntimeError, match="Triton is not installed"):
        polycom.poly_norm(x, w, b)
    assert kernel_calls == []


def test_importing_kernels_without_triton_raises_import_error():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "try:\n    import polycom.ops.triton\nexcept ImportError as e:\n    print('IMPORT-ERROR', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "IMPORT-ERROR" in result.stdout, result.stdout + result.stderr
    assert "pip install polycom[triton]" in result.stdout
