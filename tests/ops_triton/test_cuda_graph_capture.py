"""The ops inside a captured CUDA graph (forward + backward), replayed on new data (a GPU check).

torchtitan captures each training step in a CUDA graph by default. A captured op must not read tensor data
on the host (capture refuses the sync) and must not freeze a data-dependent branch: the graph is replayed
here on small rows (where the closed form's unscaled shortcut would apply) and then on rows with entries
near 1e5 (where |x|**(2r) leaves fp32 without the row scaling), for the Triton kernels and for the closed
form (``torch`` backend). Oracle: the fp64 reference ops.

These tests need a CUDA device: `benchmarks/gpu_session.sh` runs them (its kernel-tests step); the CPU
stand-ins of the host-read rule are in tests/core/test_host_reads.py.
"""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.ops.backend import use_backend
from polycom.ops.reference import poly_norm_reference, poly_relu_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")

OPS = {"poly_norm": (polycom.poly_norm, poly_norm_reference), "poly_relu": (polycom.poly_relu, poly_relu_reference)}


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("name", list(OPS))
def test_captured_step_replays_on_new_data(backend, name):
    op, reference = OPS[name]
    device = torch.device("cuda")
    x = torch.empty(96, 520, device=device)  # the graph's static input, refilled before each replay
    weight = torch.tensor([0.7, -0.4, 1.3], device=device, requires_grad=True)
    bias = torch.tensor([0.25], device=device, requires_grad=True)
    g = torch.randn(96, 520, device=device)

    def step():
        xi = x.detach().requires_grad_()
        y = op(xi, weight, bias)
        return (y, *torch.autograd.grad(y, (xi, weight, bias), g))

    x.copy_(torch.randn(96, 520, device=device) * 0.3)
    with use_backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (kernel compilation, allocator)
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step()

    for scale in (0.3, 1e5):
        x.copy_(torch.randn(96, 520, device=device) * scale)
        graph.replay()
        torch.cuda.synchronize()
        x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
        y64 = reference(x64, w64, b64)
        want = (y64, *torch.autograd.grad(y64, (x64, w64, b64), g.double()))
        for label, got, ref in zip(("y", "dx", "dweight", "dbias"), outputs, want, strict=True):
            assert torch.isfinite(got).all(), f"{label} at scale {scale}"
            err = ((got.double() - ref).norm() / ref.norm()).item()
            assert err < 1e-4, f"{label} at scale {scale}: relative error {err:.3g}"
