"""The one-cast rule for every functional op: bf16/fp16 outputs are the fp64 result rounded once.

Checked for the public ops (torch backend) and for `polycom.ops.reference`, plain and gated.

Rule (project numerics contract, `polycom.ops.dtypes`): upcast once to fp32, compute and reduce
there (the gated product ``* up`` included), cast the result to the input dtype once. So the output
equals ``fp64_result.to(dtype)`` exactly, except where the fp64 value lies so close to a rounding
midpoint of the low-precision dtype that fp32 rounding may land on the other side; there the fp32
error plus one ulp is allowed. A version that rounds twice (e.g. PolyNorm(gate) cast to bf16 before ``* up``) differs
from the single rounding on many elements away from any midpoint, and the checker rejects it
(`test_checker_rejects_double_rounding`).

fp64 formulas written here (``weight[0]`` multiplies the highest power):

    PolyNorm(x) = sum_{i=1..r} weight[r-i] * x**i / sqrt(mean(x**(2i), -1) + eps) + bias
    PolyReLU(x) = sum_{i=1..r} weight[r-i] * relu(x)**i + bias
    gated:        f(gate) * up
"""

from __future__ import annotations

import pytest
import torch

import polycom
from polycom.ops import reference

EPS = 1e-6
LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The fp32 math of the ops (reference and torch backend) lands within 2.8e-7 of the fp64 result, relative
# to the summed magnitude of the terms (measured on these shapes, r = 1..5); 2e-6 leaves a 7x margin.
FP32_MATH_MARGIN = 2e-6


@pytest.fixture(autouse=True)
def torch_backend():
    with polycom.use_backend("torch"):
        yield


def _terms_fp64(op, x, weight, eps=EPS):
    """The r terms weight[r-i] * f_i(x) of the polynomial, fp64, stacked on a new leading dim."""
    x, weight = x.double(), weight.double()
    r = weight.numel()
    terms = []
    for i in range(1, r + 1):
        if op == "polynorm":
            u = x**i
            f = u / torch.sqrt((u * u).mean(-1, keepdim=True) + eps)
        else:
            f = torch.clamp(x, min=0) ** i
        terms.append(weight[r - i] * f)
    return torch.stack(terms)


def fp64_and_magnitude(op, gated, x, up, weight, bias):
    """The fp64 result and, per element, the sum of the magnitudes of its terms (the fp32 error scale)."""
    terms = _terms_fp64(op, x, weight)
    b = bias.double()
    y, mag = terms.sum(0) + b, terms.abs().sum(0) + b.abs()
    if gated:
        y, mag = y * up.double(), mag * up.double().abs()
    return y, mag


def assert_one_cast(out, exact, magnitude):
    """out == exact.to(dtype) wherever fp32 math cannot change the rounding; within one ulp elsewhere."""
    dtype = out.dtype
    once = exact.to(dtype)
    margin = FP32_MATH_MARGIN * magnitude
    ambiguous = ((exact - margin).to(dtype) != once) | ((exact + margin).to(dtype) != once)
    clear = ~ambiguous & torch.isfinite(once)
    assert clear.float().mean() > 0.4, "test data too close to rounding midpoints to judge"
    wrong = (out != once) & clear
    assert not wrong.any(), (
        f"{int(wrong.sum())} of {int(clear.sum())} elements differ from the fp64 result rounded once to {dtype} "
        f"(first at {wrong.nonzero()[0].tolist()}: got {out[wrong][0].item()!r}, want {once[wrong][0].item()!r})"
    )
    # Near a midpoint (or under cancellation, where the fp32 error exceeds an ulp of a tiny result) the
    # output may round either way: within the fp32 error plus one ulp of the fp64 result.
    ulp = torch.finfo(dtype).eps * once.double().abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((out.double() - exact).abs() <= margin + ulp)[ambiguous].all()


OPS = {
    ("polynorm", False): lambda x, up, w, b: polycom.poly_norm(x, w, b, EPS),
    ("polynorm", True): lambda x, up, w, b: polycom.poly_norm_gated(x, up, w, b, EPS),
    ("polyrelu", False): lambda x, up, w, b: polycom.poly_relu(x, w, b),
    ("polyrelu", True): lambda x, up, w, b: polycom.poly_relu_gated(x, up, w, b),
}
# The readable reference (the kernels' test oracle and the tensor-parallel path) follows the same rule.
REFERENCE_OPS = {
    ("polynorm", False): lambda x, up, w, b: reference.poly_norm_reference(x, w, b, EPS),
    ("polynorm", True): lambda x, up, w, b: reference.poly_norm_gated_reference(x, up, w, b, EPS),
    ("polyrelu", False): lambda x, up, w, b: reference.poly_relu_reference(x, w, b),
    ("polyrelu", True): lambda x, up, w, b: reference.poly_relu_gated_reference(x, up, w, b),
}
IMPLEMENTATIONS = {"public": OPS, "reference": REFERENCE_OPS}


def _inputs(dtype, r, gated, shape=(32, 96)):
    x = (torch.randn(shape) * 1.5).to(dtype)
    up = torch.randn(shape).to(dtype) if gated else None
    return x, up, torch.randn(r) * 0.5 + 0.3, torch.randn(1)


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("r", [1, 3])
@pytest.mark.parametrize("op,gated", list(OPS), ids=["polynorm", "polynorm_glu", "polyrelu", "polyrelu_glu"])
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_low_precision_output_is_fp64_rounded_once(impl, op, gated, r, dtype):
    """`public`: polycom.poly_norm & co. on the torch backend; `reference`: polycom.ops.reference."""
    x, up, w, b = _inputs(LOW[dtype], r, gated)
    out = IMPLEMENTATIONS[impl][(op, gated)](x, up, w, b)
    assert out.dtype == LOW[dtype] and out.shape == x.shape
    assert_one_cast(out, *fp64_and_magnitude(op, gated, x, up, w, b))


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("name", ["polynorm", "polynorm_glu", "polyrelu", "polyrelu_glu"])
def test_modules_follow_the_same_rule(name, dtype):
    """The fp32-parameter modules on low-precision activations (what a bf16 model runs)."""
    module = polycom.get_activation(name, order=3)
    with torch.no_grad():
        module.weight.copy_(torch.randn(3) * 0.5 + 0.3)
        module.bias.copy_(torch.randn(1))
    gated = polycom.is_gated(module)
    x, up, _, _ = _inputs(LOW[dtype], 3, gated)
    out = module(x, up) if gated else module(x)
    op = name.removesuffix("_glu")
    assert_one_cast(out, *fp64_and_magnitude(op, gated, x, up, module.weight.detach(), module.bias.detach()))


@pytest.mark.parametrize("dtype", list(LOW))
@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_checker_rejects_double_rounding(op, dtype):
    """A gated op that rounds f(gate) to the low dtype before ``* up`` (two roundings) must fail the checker."""
    x, up, w, b = _inputs(LOW[dtype], 3, True)
    plain = OPS[(op, False)]
    double_rounded = plain(x, None, w, b) * up  # f(gate) already rounded to dtype, product rounded again
    with pytest.raises(AssertionError, match="differ from the fp64 result rounded once"):
        assert_one_cast(double_rounded, *fp64_and_magnitude(op, True, x, up, w, b))


@pytest.mark.parametrize("dtype", list(LOW))
def test_checker_rejects_per_term_rounding(dtype):
    """PolyNorm with each term rounded to the low dtype before the sum (r + 1 roundings) must fail too."""
    x, _, w, b = _inputs(LOW[dtype], 3, False)
    terms = _terms_fp64("polynorm", x, w).float().to(LOW[dtype])
    per_term = (terms.sum(0) + b.to(LOW[dtype])).to(LOW[dtype])
    with pytest.raises(AssertionError, match="differ from the fp64 result rounded once"):
        assert_one_cast(per_term, *fp64_and_magnitude("polynorm", False, x, None, w, b))
