"""POLYCOM_BACKEND validation and dispatch."""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.ops import backend


def test_unknown_backend_value_is_rejected(monkeypatch):
    monkeypatch.setenv("POLYCOM_BACKEND", "cuda")
    with pytest.raises(ValueError, match="POLYCOM_BACKEND='cuda' is not a known backend"):
        polycom.poly_norm(torch.randn(2, 3), torch.ones(3), torch.zeros(1))


def test_use_backend_validates_eagerly():
    with pytest.raises(ValueError, match="not a known backend"), polycom.use_backend("fast"):
        pass


def test_auto_uses_torch_on_cpu(monkeypatch):
    monkeypatch.setenv("POLYCOM_BACKEND", "auto")
    assert backend.backend_for(torch.randn(2)) == "torch"
    monkeypatch.setenv("POLYCOM_BACKEND", "torch")
    assert backend.backend_for(torch.randn(2)) == "torch"


def test_triton_backend_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "triton_available", lambda: False)
    with polycom.use_backend("triton"), pytest.raises(RuntimeError, match="Triton is not installed"):
        polycom.poly_relu(torch.randn(2, 3), torch.ones(3), torch.zeros(1))


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(backend, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with polycom.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        polycom.poly_norm(torch.randn(2, 3), torch.ones(3), torch.zeros(1))


@pytest.mark.slow
def test_reference_path_compiles_fullgraph():
    """The dispatch (env lookup + validation) and the reference math trace without graph breaks."""
    torch._dynamo.reset()
    mlp = polycom.MLP(16, "polynorm", hidden_size=40)
    x = torch.randn(3, 16)
    with polycom.use_backend("torch"):
        eager = mlp(x)
        compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(compiled, eager)
