"""Host reads of tensor data: refused while torch.compile traces and while a CUDA graph is captured.

`polycom.ops.host_reads` decides; the closed form then skips its data-dependent shortcuts (an unscaled
forward for small rows, an unscaled backward for unit row scales) and takes the general path, which must
give the same values. A CUDA tensor being captured is played by a fake CUDA tensor (FakeTensorMode works
without a GPU) and a patched `torch.cuda.is_current_stream_capturing`; on a real GPU torchtitan's capture
is the check (`benchmarks/gpu_session.sh`).

Oracle for the values: the reference op (`polycom.ops.reference`) in fp64.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import polycom
from polycom.ops import closed_form, host_reads
from polycom.ops.backend import use_backend
from polycom.ops.reference import poly_norm_reference


def _fake_cuda() -> torch.Tensor:
    with FakeTensorMode():
        return torch.empty(4, device="cuda")


@pytest.fixture
def capturing(monkeypatch):
    """A CUDA stream being captured, as `host_reads` sees it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)


def test_cuda_tensor_under_capture_is_not_read(capturing):
    t = _fake_cuda()
    assert host_reads.cuda_graph_capturing(t)
    assert not host_reads.host_reads_allowed(t)


def test_cuda_tensor_outside_capture_and_cpu_tensors_are_read(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert host_reads.host_reads_allowed(_fake_cuda())
    assert not host_reads.cuda_graph_capturing(_fake_cuda())
    cpu = torch.ones(3)
    assert host_reads.host_reads_allowed(cpu) and not host_reads.cuda_graph_capturing(cpu)


def test_cuda_tensor_without_a_cuda_runtime_is_not_capturing(monkeypatch):
    """Fake CUDA tensors on a CPU-only build (shape propagation): no capture query, which would raise there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: pytest.fail("queried without CUDA"))
    assert host_reads.host_reads_allowed(_fake_cuda())


def test_compiled_code_does_not_read():
    seen = []

    def probe(x):
        seen.append(host_reads.host_reads_allowed(x))
        return x + 1

    torch.compile(probe, backend="eager", fullgraph=True)(torch.ones(3))
    assert seen == [False]
    probe(torch.ones(3))
    assert seen == [False, True]


def test_closed_form_shortcuts_are_skipped_when_reads_are_refused(monkeypatch):
    small, unit = torch.full((2, 8), 0.5), torch.ones(5)
    assert not closed_form._scaling_needed(small, 3) and closed_form._all_unit_scale(unit)
    monkeypatch.setattr(closed_form, "host_reads_allowed", lambda t: False)
    assert closed_form._scaling_needed(small, 3)
    assert not closed_form._all_unit_scale(unit)


@pytest.mark.parametrize("gated", [False, True])
def test_closed_form_general_path_gives_the_same_values_and_gradients(monkeypatch, gated):
    """With reads refused the closed form scales rows it would have left alone: same output and gradients,
    and the data is never reduced on the host (aminmax, the small-rows test, is not called)."""
    monkeypatch.setattr(closed_form, "host_reads_allowed", lambda t: False)
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: pytest.fail("the rows' range was read on the host"))
    torch.manual_seed(0)
    x = (torch.randn(6, 40) * 0.3).requires_grad_(True)  # small rows: the shortcut would apply
    up = torch.randn(6, 40, requires_grad=True) if gated else None
    w = torch.tensor([0.7, -0.4, 1.3], requires_grad=True)
    b = torch.tensor([0.25], requires_grad=True)
    with use_backend("torch"):
        y = polycom.poly_norm_gated(x, up, w, b) if gated else polycom.poly_norm(x, w, b)
    leaves = (x, w, b) + ((up,) if gated else ())
    x64, w64, b64, *up64 = (t.detach().double().requires_grad_(True) for t in leaves)
    ref = poly_norm_reference(x64, w64, b64) * (up64[0] if gated else 1)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), leaves)
    want = torch.autograd.grad((ref * g.double()).sum(), (x64, w64, b64, *up64))
    for name, a, e in zip(("x", "weight", "bias", "up"), got, want, strict=False):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5, msg=f"gradient of {name}")
