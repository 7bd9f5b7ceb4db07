"""The reference ops (torch backend) against an independent fp64 implementation of the formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import polycom

pytestmark = pytest.mark.usefixtures("torch_backend")


@pytest.fixture
def torch_backend():
    with polycom.use_backend("torch"):
        yield


def poly_norm_fp64(x, weight, bias, eps=1e-6):
    """sum_i a_i * x^i / sqrt(mean((x^i)^2) + eps) + a_0 with a_i = weight[r - i], all in fp64."""
    x = x.double()
    r = weight.numel()
    h = x.shape[-1]
    y = torch.full_like(x, float(bias.double()[0]))
    for i in range(1, r + 1):
        u = x**i
        y = y + float(weight.double()[r - i]) * u / torch.sqrt((u * u).sum(-1, keepdim=True) / h + eps)
    return y


def poly_relu_fp64(x, weight, bias):
    x = x.double()
    r = weight.numel()
    y = torch.full_like(x, float(bias.double()[0]))
    for i in range(1, r + 1):
        y = y + float(weight.double()[r - i]) * torch.clamp(x, min=0) ** i
    return y


def random_coefficients(r, dtype=torch.float32):
    return torch.randn(r, dtype=dtype), torch.randn(1, dtype=dtype)


SHAPES = [(1, 1), (1, 7), (4, 513), (2, 3, 7), (9, 64)]


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_poly_norm_matches_fp64_formula(r, shape):
    x = torch.randn(shape)
    w, b = random_coefficients(r)
    out = polycom.poly_norm(x, w, b)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), poly_norm_fp64(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_poly_relu_matches_fp64_formula(r, shape):
    x = torch.randn(shape)
    w, b = random_coefficients(r)
    out = polycom.poly_relu(x, w, b)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), poly_relu_fp64(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["norm", "relu"])
def test_gated_forms_are_activation_times_up(op):
    gate, up = torch.randn(5, 33), torch.randn(5, 33)
    w, b = random_coefficients(3)
    if op == "norm":
        out, ref = polycom.poly_norm_gated(gate, up, w, b), poly_norm_fp64(gate, w, b) * up.double()
    else:
        out, ref = polycom.poly_relu_gated(gate, up, w, b), poly_relu_fp64(gate, w, b) * up.double()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs():
    w, b = random_coefficients(3)
    base = torch.randn(40, 12)
    transposed = base.t()  # (12, 40), last dim strided
    sliced = base[:, ::2]  # (40, 6), last dim strided
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        torch.testing.assert_close(polycom.poly_norm(x, w, b).double(), poly_norm_fp64(x, w, b), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(polycom.poly_relu(x, w, b).double(), poly_relu_fp64(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["norm", "relu"])
def test_low_precision_is_fp64_then_one_cast(dtype, op):
    """bf16/fp16 outputs equal the fp64 result cast to the dtype, up to one ulp (fp32 internal math)."""
    x = (torch.randn(16, 257) * 2).to(dtype)
    w, b = random_coefficients(3)
    if op == "norm":
        out, ref = polycom.poly_norm(x, w, b), poly_norm_fp64(x, w, b)
    else:
        out, ref = polycom.poly_relu(x, w, b), poly_relu_fp64(x, w, b)
    assert out.dtype == dtype
    expected = ref.to(dtype).double()
    ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(torch.finfo(dtype).tiny)
    assert torch.all((out.double() - expected).abs() <= ulp * 1.01 + 1e-30)


def test_fp16_large_inputs_do_not_overflow():
    """x**6 overflows fp16 for |x| > ~6.3; the fp32 statistics must not."""
    x = torch.linspace(-60, 60, 96, dtype=torch.float16).reshape(2, 48)
    w, b = random_coefficients(3)
    out = polycom.poly_norm(x, w, b)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), poly_norm_fp64(x, w, b).to(torch.float16).double(), rtol=2e-3, atol=2e-3)


def test_fp64_input_computes_in_fp64():
    x = torch.randn(3, 11, dtype=torch.float64)
    w, b = random_coefficients(3, torch.float64)
    out = polycom.poly_norm(x, w, b)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, poly_norm_fp64(x, w, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
    ],
)
def test_compute_dtype_rule(dtype, expected):
    """One rule for every implementation (reference, Triton, tensor parallel): fp64 stays, the rest fp32."""
    from polycom.ops.dtypes import compute_dtype

    assert compute_dtype(dtype) == expected


@pytest.mark.parametrize("r", [1, 3])
def test_gradcheck_plain(r):
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(r, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: polycom.poly_norm(x, w, b), (x, w, b))
    # keep relu inputs away from the kink at 0, where the derivative is undefined
    xr = (torch.rand(3, 6, dtype=torch.float64) + 0.1) * torch.sign(torch.randn(3, 6, dtype=torch.float64))
    xr.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, w, b: polycom.poly_relu(x, w, b), (xr, w, b))


def test_gradcheck_gated():
    gate = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, u, w, b: polycom.poly_norm_gated(g, u, w, b), (gate, up, w, b))
    gr = (torch.rand(2, 5, dtype=torch.float64) + 0.1) * torch.sign(torch.randn(2, 5, dtype=torch.float64))
    gr.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda g, u, w, b: polycom.poly_relu_gated(g, u, w, b), (gr, up, w, b))


def test_poly_relu_special_cases_are_relu_and_relu2():
    x = torch.randn(7, 19)
    zero = torch.zeros(1)
    torch.testing.assert_close(polycom.poly_relu(x, torch.tensor([0.0, 0.0, 1.0]), zero), torch.relu(x))
    torch.testing.assert_close(polycom.poly_relu(x, torch.tensor([0.0, 1.0, 0.0]), zero), torch.relu(x) ** 2)


def test_poly_norm_order_one_is_rms_norm_without_gain():
    x = torch.randn(6, 31)
    out = polycom.poly_norm(x, torch.ones(1), torch.zeros(1), eps=1e-6)
    torch.testing.assert_close(out, F.rms_norm(x, (31,), eps=1e-6), rtol=1e-5, atol=1e-6)


def test_poly_norm_is_invariant_to_positive_row_scaling():
    x = torch.randn(4, 50, dtype=torch.float64)
    w, b = random_coefficients(3, torch.float64)
    scale = torch.tensor([[0.01], [0.5], [3.0], [40.0]], dtype=torch.float64)
    # eps must be > 0; 1e-300 is far below every mean(x^(2i)) here, so the invariance is exact to fp64 rounding
    tiny = 1e-300
    torch.testing.assert_close(polycom.poly_norm(x * scale, w, b, eps=tiny), polycom.poly_norm(x, w, b, eps=tiny))
    # with the default eps only rows whose powers are tiny (mean(x^2) ~ eps) feel it
    torch.testing.assert_close(polycom.poly_norm(x * 3.0, w, b), polycom.poly_norm(x, w, b), rtol=1e-5, atol=1e-5)


def test_zero_rows_give_bias_and_finite_grads():
    x = torch.zeros(2, 9, requires_grad=True)
    w, b = torch.full((3,), 1 / 3, requires_grad=True), torch.tensor([0.25], requires_grad=True)
    out = polycom.poly_norm(x, w, b)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, w, b))
