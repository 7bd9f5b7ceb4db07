"""`POLYCOM_CPU_COMPILE`: the closed-form ops compiled on the torch backend, and the eager fall-back.

Compiling is the default on CPU tensors, but the test suite runs eagerly (`tests/conftest.py` sets
POLYCOM_CPU_COMPILE=0): the real Inductor build takes seconds per function. Most tests here swap
`_compiled_version` for the same `torch.compile(fn, dynamic=True, fullgraph=True)` with the ``aot_eager``
backend: Dynamo still traces every closed-form function whole (``fullgraph``: a graph break, e.g. from an
``out=`` write, fails the test), only the C++ code generation is skipped; one test runs the real Inductor
build. Oracle: the same block run eagerly.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import polycom
from polycom.ops import cpu_compile


@pytest.fixture
def aot_eager_compile(monkeypatch):
    """POLYCOM_CPU_COMPILE=1 with the aot_eager backend; returns the names of the functions compiled."""
    compiled_names: list[str] = []

    def compile_fn(fn):
        compiled_names.append(fn.__name__)
        return torch.compile(fn, dynamic=True, fullgraph=True, backend="aot_eager")

    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiled_version", compile_fn)
    torch._dynamo.reset()
    yield compiled_names
    torch._dynamo.reset()


def _block_grads(name, fused=True, scale=1.0):
    torch.manual_seed(0)
    m = polycom.MLP(16, name, 24, fused=fused)
    x = (torch.randn(2, 5, 16) * scale).requires_grad_(True)
    with polycom.use_backend("torch"):
        y = m(x)
        grads = torch.autograd.grad(y, [x, *m.parameters()], torch.randn_like(y))
    return y.detach(), grads


@pytest.mark.parametrize("name", ["polynorm", "polyrelu", "polynorm_glu", "polyrelu_glu", "swiglu"])
def test_compiled_closed_form_matches_eager(aot_eager_compile, monkeypatch, name):
    y, grads = _block_grads(name, scale=3.0)
    assert aot_eager_compile, "no closed-form function went through torch.compile"
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads(name, scale=3.0)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unfused_ops_compile_too(aot_eager_compile):
    y, grads = _block_grads("polynorm", fused=False)
    assert {"poly_norm_forward", "poly_norm_backward"} <= set(aot_eager_compile)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads)


def test_without_a_cxx_compiler_one_warning_and_eager_results(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: False)
    monkeypatch.setattr(cpu_compile, "_compiled_version", lambda fn: pytest.fail("compiled without a compiler"))
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler") as caught:
        y, _ = _block_grads("polynorm")
        _block_grads("polyrelu")
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1  # once per process
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    torch.testing.assert_close(y, _block_grads("polynorm")[0], rtol=0, atol=0)


def test_a_failing_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)

    def broken(fn):
        def run(*args, **kwargs):
            raise RuntimeError("C++ compile failed: cc1plus killed")

        return run

    monkeypatch.setattr(cpu_compile, "_compiled_version", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y, grads = _block_grads("polyrelu")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "cc1plus killed" in messages[0]
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads("polyrelu")
    torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("value", ["yes", "2", "true"])
def test_a_bad_value_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(cpu_compile.ENV_VAR, value)
    with pytest.raises(ValueError, match="POLYCOM_CPU_COMPILE"):
        _block_grads("polynorm")


def test_compiling_is_the_default_on_cpu_tensors(aot_eager_compile, monkeypatch):
    monkeypatch.delenv(cpu_compile.ENV_VAR)
    assert cpu_compile.compile_requested()
    _block_grads("polyrelu")
    assert "poly_relu_forward" in aot_eager_compile


def test_tensors_off_the_cpu_run_the_eager_function(monkeypatch):
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: True)
    monkeypatch.setattr(cpu_compile, "_compiled_version", lambda fn: pytest.fail("compiled a non-CPU call"))
    x = torch.empty(3, device="meta")
    assert cpu_compile.compiled(lambda t, *, k: (t.device.type, k))(x, k=2) == ("meta", 2)


@pytest.mark.parametrize("name", ["polyrelu", "polynorm_glu"])
def test_real_inductor_build_matches_eager(monkeypatch, name):
    """The default path as users get it: Inductor's C++ code for the closed form (fused MLP: forward,
    recompute and backward), against the eager closed form."""
    if not cpu_compile._compiler_found():
        pytest.skip("no C++ compiler on this machine: the eager fall-back is what runs (tested above)")
    monkeypatch.setenv(cpu_compile.ENV_VAR, "1")
    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed build would fall back with a warning
        y, grads = _block_grads(name, scale=3.0)
    assert cpu_compile.active()
    monkeypatch.setenv(cpu_compile.ENV_VAR, "0")
    y_eager, grads_eager = _block_grads(name, scale=3.0)
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
