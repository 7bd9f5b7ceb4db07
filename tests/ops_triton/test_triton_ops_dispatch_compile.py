"""Custom-op registration (opcheck), torch.compile without graph breaks, and backend dispatch."""

from __future__ import annotations

import os
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
    assert rstd.shape == (24, 4) and rstd.dtype == torch.float32  # r inverse RMS values and the row scale


# ------------------------------------------------------------------------------ torch.compile


def _graph_ops_backend(seen: list):
    """A torch.compile backend that records the ops of the captured graph and runs it eagerly."""

    def backend(gm, example_inputs):
        for module in gm.modules():  # nested graphs too (the fused MLP's autograd.Function bodies)
            if isinstance(module, torch.fx.GraphModule):
                seen.extend(str(node.target) for node in module.graph.nodes if node.op == "call_function")
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


@pytest.mark.cpu_tensors
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


# ------------------------------------------------------------------------------ autocast, fp64, interpreter


@pytest.mark.parametrize("fn_name", ["poly_norm", "poly_relu"])
def test_autocast_keeps_input_dtype_and_result(fn_name):
    """Autocast rule: the ops do not cast their inputs and run with autocast off (fp32 math, output in the
    input dtype), so results under autocast equal the results without it, forward and backward."""
    fn = getattr(polycom, fn_name)
    x = torch.randn(3, 40, dtype=torch.bfloat16)
    w, b = _coefficients()
    dy = torch.randn(3, 40, dtype=torch.bfloat16)
    outs = []
    for autocast in (False, True):
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        with polycom.use_backend("triton"), torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            y = fn(xx, ww, bb)
        y.backward(dy)
        outs.append((y, xx.grad, ww.grad, bb.grad))
    assert outs[1][0].dtype == torch.bfloat16  # not cast to the autocast dtype
    for got, want in zip(outs[1], outs[0]):
        assert torch.equal(got, want)


def test_opcheck_backward_with_needs():
    x = torch.randn(3, 24)
    w, b = _coefficients()
    _, rstd = ops.poly_norm_fwd(x, None, w.detach(), b.detach(), 1e-6)
    grad = torch.randn(3, 24)
    torch.library.opcheck(ops.poly_norm_bwd, (grad, x, None, w.detach(), b.detach(), rstd, [True, False, True]))
    torch.library.opcheck(ops.poly_relu_bwd, (grad, x, None, w.detach(), b.detach(), [False, False, True]))


@pytest.mark.slow
def test_fp64_compiles_to_correctly_rounded_sqrt():
    """fp64 PolyNorm on CUDA: 1/sqrt with sqrt.rn.f64 and div.rn.f64, never rsqrt.approx.f64 (compiled for
    sm_90 in a fresh process without the interpreter, no GPU needed)."""
    code = """
import re, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from polycom.ops.triton import polynorm_kernels, polynorm_persistent
cases = [
    (polynorm_persistent.poly_norm_fwd_persistent_kernel,
     dict(R=3, RP=4, GATED=False, BLOCK_M=1, BLOCK_N=1024, SPLIT=1, SPLIT_P=1, PHASE=2, NUM_STAGES=2, ACC=tl.float64)),
    (polynorm_kernels.poly_norm_fwd_kernel,
     dict(R=3, RP=4, GATED=False, BLOCK_M=1, BLOCK_N=1024, SINGLE_TILE=True, ACC=tl.float64)),
]
for fn, cx in cases:
    sig = {n: "constexpr" if n in cx else "*i32" if n == "count_ptr" else "*fp64" if n.endswith("_ptr")
           else "fp32" if n == "eps" else "i32" for n in fn.arg_names}
    ptx = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": 4}).asm["ptx"]
    print("APPROX", "rsqrt.approx.f64" in ptx, "RN", len(re.findall(r"sqrt\\.rn\\.f64", ptx)))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("APPROX")]
    assert len(lines) == 2 and all(line.startswith("APPROX False RN") and not line.endswith(" 0") for line in lines)


def test_interpreter_compat_squeezes_one_element_scalars(monkeypatch):
    """Triton <= 3.6 interpreters convert loop bounds with int(array) (an error for 1-element arrays on
    NumPy >= 2.4); the compat patch converts through a flat view instead, and leaves fixed versions alone."""
    import numpy as np
    from triton.runtime import interpreter

    from polycom.ops.triton import interpreter_compat

    class Scope:
        def set_attr(self, obj, name, value):
            setattr(obj, name, value)

    def old_patch(tensor, scope):  # what Triton 3.6 installs: int() of the 1-element array
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_patch)
    monkeypatch.setattr(interpreter_compat, "_numpy_converts_1d", lambda: False)
    assert interpreter_compat.apply() is True
    assert interpreter_compat.apply() is False  # idempotent

    class Handle:
        data = np.array([7], dtype=np.int32)

    class FakeTensor:
        handle = Handle()

    interpreter._patch_lang_tensor(FakeTensor, Scope())
    assert list(range(FakeTensor())) == list(range(7))
