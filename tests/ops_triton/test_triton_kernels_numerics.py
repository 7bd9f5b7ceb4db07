"""Triton PolyNorm / PolyReLU kernels (run by the interpreter on CPU) vs an fp64 reference.

The fp64 reference is written here from the formulas (paper / official code order: weight[0]
multiplies the highest power):

    PolyNorm(x) = sum_{i=1..r} weight[r-i] * x**i / sqrt(mean(x**(2i)) + eps) + bias
    PolyReLU(x) = sum_{i=1..r} weight[r-i] * relu(x)**i + bias
    gated forms: f(gate) * up

Accuracy rule: the kernel's max error against fp64 must not exceed twice the error of the
eager torch reference (`polycom.ops.reference`) at the same dtype, plus a floor of one unit in the
last place of the output dtype at the tensor's scale (the interpreter truncates fp32 -> bf16/fp16
stores instead of rounding, and tiny fp32 reductions can differ in order).
"""

from __future__ import annotations

import pytest
import torch
import triton

import polycom
from polycom.ops import reference
from polycom.ops.triton import config, launch, launch_common

EPS = 1e-6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------ fp64 formulas


def poly_norm_fp64(x, weight, bias, eps=EPS):
    r = weight.numel()
    out = bias.expand_as(x)
    for i in range(1, r + 1):
        p = x**i
        out = out + weight[r - i] * p / torch.sqrt((p * p).mean(-1, keepdim=True) + eps)
    return out


def poly_relu_fp64(x, weight, bias):
    r = weight.numel()
    t = torch.clamp(x, min=0)
    out = bias.expand_as(x)
    for i in range(1, r + 1):
        out = out + weight[r - i] * t**i
    return out


FP64 = {"polynorm": poly_norm_fp64, "polyrelu": poly_relu_fp64}
TORCH_REF = {
    ("polynorm", False): lambda x, up, w, b: reference.poly_norm_reference(x, w, b, EPS),
    ("polynorm", True): lambda x, up, w, b: reference.poly_norm_gated_reference(x, up, w, b, EPS),
    ("polyrelu", False): lambda x, up, w, b: reference.poly_relu_reference(x, w, b),
    ("polyrelu", True): lambda x, up, w, b: reference.poly_relu_gated_reference(x, up, w, b),
}
PUBLIC = {
    ("polynorm", False): lambda x, up, w, b: polycom.poly_norm(x, w, b, EPS),
    ("polynorm", True): lambda x, up, w, b: polycom.poly_norm_gated(x, up, w, b, EPS),
    ("polyrelu", False): lambda x, up, w, b: polycom.poly_relu(x, w, b),
    ("polyrelu", True): lambda x, up, w, b: polycom.poly_relu_gated(x, up, w, b),
}


def _fp64_forward(op, gated, x, up, w, b):
    y = FP64[op](x, w, b)
    return y * up if gated else y


def _run(fn, x, up, w, b, dy):
    """Output and gradients (x, up, weight, bias) of fn on leaf copies of the inputs."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, up, w, b)]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach()] + [t.grad if t is not None else None for t in leaves]


def _max_err(a, ref):
    return (a.double() - ref).abs().max().item() if a.numel() else 0.0


def _floor(t, scale_ref):
    """One ulp of t's dtype at the scale of `scale_ref` (fp32 tensors: a few ulps, summation order differs)."""
    scale = scale_ref.abs().max().item() if scale_ref.numel() else 0.0
    ulps = 1.0 if t.dtype in (torch.bfloat16, torch.float16) else 16.0
    return ulps * torch.finfo(t.dtype).eps * scale


def check_against_fp64(op, gated, x, up, w, b, dy, *, names=("y", "dx", "dup", "dweight", "dbias")):
    """Run kernels (triton backend), eager torch reference and fp64; assert the 2x-error rule."""
    with polycom.use_backend("triton"):
        ours = _run(PUBLIC[(op, gated)], x, up, w, b, dy)
    torch_ref = _run(TORCH_REF[(op, gated)], x, up, w, b, dy)

    def fp64(*tensors, transform=lambda t: t):
        args = [transform(t.double()) if t is not None else None for t in tensors]
        return _run(lambda *a: _fp64_forward(op, gated, *a), *args)

    exact = fp64(x, up, w, b, dy)
    # The coefficient gradients are sums of many signed terms that can nearly cancel; their rounding
    # floor is set by the sum of the terms' magnitudes, i.e. the same gradient on |inputs|.
    magnitude = fp64(x, up, w, b, dy, transform=torch.abs)
    for name, o, t, e, mag in zip(names, ours, torch_ref, exact, magnitude):
        if e is None:
            assert o is None, name
            continue
        assert o.dtype == t.dtype and o.shape == t.shape, (name, o.dtype, t.dtype, o.shape, t.shape)
        e_finite = torch.isfinite(e)
        assert torch.isfinite(o[e_finite]).all(), f"{name}: non-finite values where the fp64 reference is finite"
        err_ours = _max_err(o[e_finite], e[e_finite])
        err_torch = _max_err(t[e_finite], e[e_finite])
        scale_ref = mag if name in ("dweight", "dbias") else e[e_finite]
        tol = 2.0 * err_torch + _floor(o, scale_ref)
        assert err_ours <= tol, f"{name}: kernel error {err_ours:.3g} > 2 x torch error {err_torch:.3g} (+floor)"
    return ours


def _inputs(shape, dtype, r, gated, *, scale=1.0):
    x = (torch.randn(shape) * scale).to(dtype)
    up = torch.randn(shape).to(dtype) if gated else None
    w = torch.randn(r) * 0.5 + 0.3
    b = torch.randn(1)
    dy = torch.randn(shape).to(dtype)
    return x, up, w, b, dy


@pytest.fixture
def small_tiles(monkeypatch):
    """Variant 1: force the column-looped path for rows wider than 1024, with a persistent grid of 2
    programs (config.num_sms is 2 on CPU and the L2 budget is tiny), so each program loops over several rows."""
    monkeypatch.setattr(
        config,
        "TILING",
        config.TilingLimits(
            max_single_tile_fwd=1024,
            max_single_tile_bwd=1024,
            loop_tile_fwd=1024,
            loop_tile_bwd=1024,
            l2_budget_bytes=1,
            variant=1,
        ),
    )


SPLIT_TILES = dict(
    max_single_tile_fwd=256,
    max_single_tile_bwd=256,
    max_single_tile_bwd_gated=128,
    split_tile_fwd=256,
    split_tile_bwd=128,
)


@pytest.fixture
def split_tiles(monkeypatch):
    """Variant 2 with rows wider than 256 (128 for the gated backward) split across programs: the
    split-row path (publish partial sums, fixed-order combine) at small widths."""
    monkeypatch.setattr(config, "TILING", config.TilingLimits(variant=2, **SPLIT_TILES))


@pytest.fixture
def variant1(monkeypatch):
    monkeypatch.setattr(config, "TILING", config.TilingLimits(variant=1))


# ------------------------------------------------------------------------------ the grid of cases


@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize("r", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 7, 64, 1000])
def test_fp32_forward_and_grads_match_fp64(op, gated, r, n):
    check_against_fp64(op, gated, *_inputs((3, n), torch.float32, r, gated))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize("r,n", [(1, 64), (2, 7), (3, 1000), (5, 64)])
def test_half_precision_forward_and_grads_match_fp64(op, gated, r, n, dtype):
    check_against_fp64(op, gated, *_inputs((4, n), DTYPES[dtype], r, gated))


@pytest.mark.parametrize(
    "r,gated,dtype", [(2, False, "fp32"), (3, True, "bf16"), (5, True, "fp32"), (5, False, "bf16"), (1, True, "fp16")]
)
def test_wide_rows_use_column_loop_and_match_fp64(small_tiles, gated, r, dtype):
    m, n = 5, 5000
    for backward in (False, True):
        launch_cfg = config.row_launch(
            m, n, backward=backward, row_bytes=n * 4, num_sms=config.num_sms(torch.device("cpu"))
        )
        assert not launch_cfg.single_tile and launch_cfg.grid == (2,)  # 2 programs loop over 5 rows
    check_against_fp64("polynorm", gated, *_inputs((m, n), DTYPES[dtype], r, gated))


def test_variant1_launch_heuristics_for_the_benchmark_shapes():
    """Variant 1: single register tile up to 16384 (fwd) / 8192 (bwd) columns; wider rows: column loop with a
    persistent grid sized so the rows in flight fit the L2 budget, never fewer programs than SMs."""
    fwd = config.row_launch(8192, 8192, backward=False, row_bytes=8192 * 2, num_sms=132)
    assert fwd.single_tile and fwd.block_n == 8192 and fwd.grid == (8192,)
    assert config.row_launch(4096, 14336, backward=False, row_bytes=14336 * 2, num_sms=132).single_tile
    assert not config.row_launch(4096, 14336, backward=True, row_bytes=14336 * 4, num_sms=132).single_tile
    wide = config.row_launch(2048, 65536, backward=False, row_bytes=65536 * 2, num_sms=132)
    assert not wide.single_tile and wide.grid == (config.TILING.l2_budget_bytes // (65536 * 2),)
    wide_bwd = config.row_launch(2048, 65536, backward=True, row_bytes=65536 * 6, num_sms=132)
    assert wide_bwd.grid == (132,)
    narrow = config.row_launch(8192, 64, backward=False)
    assert narrow.block_m * narrow.block_n == config.TILING.elements_per_program


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_wide_rows_default_tiles_match_fp64(op):
    check_against_fp64(op, True, *_inputs((2, 5000), torch.bfloat16, 3, True))


def test_looped_and_single_tile_paths_agree(monkeypatch):
    x, up, w, b, dy = _inputs((7, 3000), torch.float32, 3, True)
    y1, rstd1 = launch.poly_norm_forward(x, up, w, b, EPS)
    g1 = launch.poly_norm_backward(dy, x, up, w, b, rstd1)
    looped = config.TilingLimits(max_single_tile_fwd=512, max_single_tile_bwd=512, l2_budget_bytes=1)
    monkeypatch.setattr(config, "TILING", looped)
    y2, rstd2 = launch.poly_norm_forward(x, up, w, b, EPS)
    g2 = launch.poly_norm_backward(dy, x, up, w, b, rstd2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rstd2, rstd1, rtol=1e-6, atol=0)
    for a, c in zip(g2, g1):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_3d_input(op, dtype):
    check_against_fp64(op, True, *_inputs((2, 3, 40), DTYPES[dtype], 3, True))


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_row_strided_input_is_not_copied_and_matches(op):
    base = torch.randn(2, 3, 100)
    x = base[..., 10:74]  # contiguous last dim, row stride 100
    assert launch.as_rows(x).data_ptr() == x.data_ptr()  # handled by the row stride, no copy
    up = torch.randn(2, 3, 150)[..., :64]
    w, b, dy = torch.randn(3), torch.randn(1), torch.randn(2, 3, 64)
    check_against_fp64(op, True, x, up, w, b, dy)


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_transposed_and_column_strided_inputs(op):
    x = torch.randn(4, 3, 33).transpose(0, 1)  # leading dims not mergeable -> copied
    up = torch.randn(33, 3, 4).permute(1, 2, 0)  # last dim not contiguous -> copied
    w, b, dy = torch.randn(3), torch.randn(1), torch.randn(3, 4, 33)
    check_against_fp64(op, True, x, up, w, b, dy)


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_expanded_grad_output_and_grad_output_not_written(op):
    x, up, w, b, _ = _inputs((3, 50), torch.float32, 3, True)
    dy = torch.randn(1, 50).expand(3, 50)  # stride-0 rows
    snapshot = dy.clone()
    check_against_fp64(op, True, x, up, w, b, dy)
    torch.testing.assert_close(dy, snapshot, rtol=0, atol=0)
    dy2 = torch.randn(3, 50)
    snapshot2 = dy2.clone()
    with polycom.use_backend("triton"):
        xx = x.clone().requires_grad_(True)
        PUBLIC[(op, False)](xx, None, w, b).backward(dy2)
    assert torch.equal(dy2, snapshot2)


def test_empty_leading_dim():
    w = torch.randn(3, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    with polycom.use_backend("triton"):
        for fn in (polycom.poly_norm, polycom.poly_relu):
            x = torch.randn(0, 8, requires_grad=True)
            y = fn(x, w, b)
            assert y.shape == (0, 8)
            y.sum().backward()
            assert x.grad.shape == (0, 8)
    assert torch.equal(w.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(1))


# ------------------------------------------------------------------------------ special values


def _special_rows(n, dtype, huge, tiny):
    x = torch.randn(5, n)
    x[0] = 0.0  # zero row: y = bias, finite gradients
    x[1] = torch.randn(n) * huge  # huge values (x**(2r) large but finite in fp32)
    x[2] = torch.randn(n) * tiny  # tiny values (x**(2r) underflows)
    x[3, 0] = huge  # one outlier dominating mean(x**(2r))
    return x.to(dtype)


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize(
    "dtype,r,huge,tiny",
    [("fp32", 3, 1e3, 1e-20), ("fp32", 5, 300.0, 1e-20), ("bf16", 3, 1e3, 1e-20), ("fp16", 3, 300.0, 1e-6)],
)
def test_zero_huge_and_tiny_rows(op, dtype, r, huge, tiny):
    x = _special_rows(96, DTYPES[dtype], huge, tiny)
    up = torch.randn(x.shape).to(x.dtype)
    w = torch.randn(r) * 0.5 + 0.3
    b = torch.randn(1)
    dy = torch.randn(x.shape).to(x.dtype)
    if op == "polyrelu":  # keep PolyReLU outputs inside the storage range (fp16 max 65504)
        x = torch.where(x.float().abs() > 20, torch.sign(x.float()) * 20, x.float()).to(x.dtype)
    ours = check_against_fp64(op, True, x, up, w, b, dy)
    if op == "polynorm":
        torch.testing.assert_close(ours[0][0].float(), (b * up[0].float()).to(x.dtype).float(), rtol=0, atol=2e-2)


def test_strided_weight_is_read_correctly():
    x = torch.randn(3, 20)
    w_strided = torch.randn(6)[::2]  # non-contiguous coefficient view
    w, b = w_strided.contiguous(), torch.randn(1)
    y_strided, rstd = launch.poly_norm_forward(x, None, w_strided, b, EPS)
    torch.testing.assert_close(y_strided, launch.poly_norm_forward(x, None, w, b, EPS)[0], rtol=0, atol=0)
    dy = torch.randn(3, 20)
    grads = launch.poly_norm_backward(dy, x, None, w_strided, b, rstd)
    expected = launch.poly_norm_backward(dy, x, None, w, b, rstd)
    for got, want in zip(grads, expected):
        assert (got is None and want is None) or torch.equal(got, want)
    torch.testing.assert_close(launch.poly_relu_forward(x, None, w_strided, b), launch.poly_relu_forward(x, None, w, b))


def test_coefficients_on_another_device_is_a_clear_error():
    x = torch.randn(2, 8)
    w = torch.randn(3, device="meta")
    with pytest.raises(ValueError, match="same device as the input"):
        launch.poly_norm_forward(x, None, w, torch.zeros(1), EPS)


@pytest.mark.parametrize("r", [1, 3, 6])
def test_partials_reduction_matches_fp64_sum(r):
    """The one-launch reduction of [programs, r+1] partials (looping over 3000 programs in blocks of 1024)."""
    part = torch.randn(3000, r + 1) * 10
    weight = torch.zeros(r, dtype=torch.bfloat16)
    bias = torch.zeros(1)
    dweight, dbias = launch_common.coefficient_grads(part, weight, bias)
    total = part.double().sum(0)
    assert dweight.dtype == torch.bfloat16 and dbias.dtype == torch.float32
    torch.testing.assert_close(dweight.double(), total[:r].flip(0).to(torch.bfloat16).double(), rtol=1e-2, atol=0)
    torch.testing.assert_close(dbias.double(), total[r:], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
def test_order_six(op):
    check_against_fp64(op, True, *_inputs((3, 50), torch.float32, 6, True))


def test_65536_wide_rows_default_looped_path():
    m, n = 2, 65536
    assert not config.row_launch(m, n, backward=False, row_bytes=n * 2, num_sms=132).single_tile
    check_against_fp64("polynorm", True, *_inputs((m, n), torch.bfloat16, 3, True))


@pytest.mark.parametrize("op,gated", [("polynorm", False), ("polynorm", True), ("polyrelu", False), ("polyrelu", True)])
def test_forward_keeps_only_inputs_and_r_floats_per_row(op, gated):
    """Memory rule: autograd saves x (and up), the coefficients and, for PolyNorm, r + 1 fp32 values
    per row; nothing else (no powers, no normalised terms)."""
    r, shape = 3, (4, 5, 48)
    x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
    up = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) if gated else None
    w = torch.randn(r, requires_grad=True)
    b = torch.randn(1, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with polycom.use_backend("triton"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = PUBLIC[(op, gated)](x, up, w, b)
    extra = [t for t in saved if not any(t is s for s in (x, up, w, b))]
    rows = x.numel() // shape[-1]
    if op == "polynorm":  # r inverse RMS values and the row scale s
        assert len(extra) == 1 and extra[0].shape == (rows, r + 1) and extra[0].dtype == torch.float32
    else:
        assert extra == []
    inputs_saved = [t for t in saved if any(t is s for s in (x, up))]
    assert len(inputs_saved) == (2 if gated else 1)
    y.sum().backward()


# ------------------------------------------------------------------------------ variant 2 / variant 1


@pytest.mark.parametrize(
    "op,gated,r,n,dtype",
    [
        ("polynorm", False, 3, 1000, "fp32"),  # 4 chunks of 256, the last one partly masked
        ("polynorm", True, 3, 777, "bf16"),  # odd width: 4 chunks forward, 7 backward (gated: 128-column chunks)
        ("polynorm", True, 2, 513, "fp16"),
        ("polynorm", False, 5, 300, "fp32"),
        ("polynorm", True, 3, 200, "bf16"),  # forward and plain backward one tile, gated backward split
        ("polynorm", True, 1, 1000, "fp32"),
    ],
)
def test_split_rows_match_fp64(split_tiles, op, gated, r, n, dtype):
    fwd = config.persistent_row_launch(6, n, backward=False)
    bwd = config.persistent_row_launch(6, n, backward=True, gated=gated)
    single_bwd = triton.next_power_of_2(n) <= (128 if gated else 256)
    assert fwd.split == -(-n // 256) and bwd.split == (1 if single_bwd else -(-n // 128))
    check_against_fp64(op, gated, *_inputs((6, n), DTYPES[dtype], r, gated))


def test_split_rows_strided_and_3d(split_tiles):
    base = torch.randn(2, 3, 1100)
    x = base[..., 50:1050]  # row stride 1100, no copy
    up = torch.randn(2, 3, 1300)[..., :1000]
    w, b, dy = torch.randn(3), torch.randn(1), torch.randn(2, 3, 1000)
    check_against_fp64("polynorm", True, x, up, w, b, dy)


def test_split_and_single_tile_agree(monkeypatch):
    """The fixed-order combine of split rows gives the same statistics as one register tile (to fp32
    rounding of the different summation order) and bit-identical results on repeated runs."""
    x, up, w, b, dy = _inputs((9, 1000), torch.float32, 3, True)
    y1, rstd1 = launch.poly_norm_forward(x, up, w, b, EPS)
    g1 = launch.poly_norm_backward(dy, x, up, w, b, rstd1)
    monkeypatch.setattr(config, "TILING", config.TilingLimits(variant=2, **SPLIT_TILES))
    y2, rstd2 = launch.poly_norm_forward(x, up, w, b, EPS)
    g2 = launch.poly_norm_backward(dy, x, up, w, b, rstd2)
    y3, rstd3 = launch.poly_norm_forward(x, up, w, b, EPS)
    g3 = launch.poly_norm_backward(dy, x, up, w, b, rstd3)
    torch.testing.assert_close(rstd2, rstd1, rtol=1e-6, atol=0)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    for a, c in zip(g2, g1):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)
    assert torch.equal(y3, y2) and torch.equal(rstd3, rstd2)  # deterministic
    assert all(torch.equal(a, c) for a, c in zip(g3, g2))


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("dtype,n", [("fp32", 7), ("bf16", 1000)])
def test_variant1_kernels_still_match_fp64(variant1, op, gated, dtype, n):
    check_against_fp64(op, gated, *_inputs((5, n), DTYPES[dtype], 3, gated))


def test_persistent_grid_is_one_wave_and_programs_loop():
    """Variant 2 grids: never more programs than resident slots, a multiple of the split, never more than
    the work; on CPU (2 slots) a 7-row problem runs 2 programs that loop over the rows."""
    assert config.persistent_grid(8192, 1, 264) == 264
    assert config.persistent_grid(100, 1, 264) == 100
    assert config.persistent_grid(2048, 16, 264) == 256  # 16 lanes of 16 chunks
    assert config.persistent_grid(3, 8, 264) == 24
    plan = config.persistent_row_launch(8192, 8192, backward=True)
    assert plan.split == 1 and plan.num_warps == 32  # 8 elements per thread: <= 64 registers, 32 warps per SM
    assert plan.num_stages == 3  # the backward's 3-stage loop is the one without spills at 8192 (bench --static)
    forward = config.persistent_row_launch(8192, 8192, backward=False)
    assert forward.split == 1 and forward.num_warps == 32 and forward.num_stages == 2  # ~50 registers, 32 warps/SM
    gated = config.persistent_row_launch(8192, 8192, backward=True, gated=True)
    assert gated.split == 4 and gated.block_n == 2048
    wide = config.persistent_row_launch(2048, 65536, backward=False)
    assert wide.split == 8 and wide.block_n == 8192 and wide.block_m == 1


@pytest.mark.parametrize("op", ["polynorm", "polyrelu"])
@pytest.mark.parametrize("wanted", ["x", "coefficients", "up", "b"])
def test_backward_computes_only_needed_grads(op, wanted):
    """needs_input_grad: gradients nobody asked for are None (and not computed); the wanted ones match
    the all-gradients run bit for bit."""
    x, up, w, b, dy = _inputs((4, 50), torch.float32, 3, True)
    with polycom.use_backend("triton"):
        full = _run(PUBLIC[(op, True)], x, up, w, b, dy)
    leaves = {
        "x": x.clone().requires_grad_(wanted == "x"),
        "up": up.clone().requires_grad_(wanted == "up"),
        "w": w.clone().requires_grad_(wanted == "coefficients"),
        "b": b.clone().requires_grad_(wanted in ("coefficients", "b")),
    }
    with polycom.use_backend("triton"):
        PUBLIC[(op, True)](leaves["x"], leaves["up"], leaves["w"], leaves["b"]).backward(dy)
    grads = [leaves[k].grad for k in ("x", "up", "w", "b")]
    for name, got, want in zip(("x", "up", "w", "b"), grads, full[1:]):
        asked = (name == wanted) or (wanted == "coefficients" and name in ("w", "b"))
        if asked:
            assert torch.equal(got, want), name
        else:
            assert got is None, name


def test_bwd_needs_flags_skip_outputs():
    """The launcher leaves dx unwritten when it is not needed (variant 2 kernel flag)."""
    x, up, w, b, dy = _inputs((3, 40), torch.float32, 3, True)
    _, rstd = launch.poly_norm_forward(x, up, w, b, EPS)
    torch.manual_seed(1)
    full = launch.poly_norm_backward(dy, x, up, w, b, rstd)
    only_coef = launch.poly_norm_backward(dy, x, up, w, b, rstd, needs=(False, False, True))
    assert torch.equal(only_coef[2], full[2]) and torch.equal(only_coef[3], full[3])
    only_dx = launch.poly_norm_backward(dy, x, up, w, b, rstd, needs=(True, False, False))
    assert torch.equal(only_dx[0], full[0])
    assert not only_dx[2].any() and not only_dx[3].any()  # coefficient grads not computed: zeros


def test_fp64_forward_and_grads_match_fp64():
    x, up, w, b, dy = _inputs((3, 300), torch.float64, 3, True)
    ours = check_against_fp64("polynorm", True, x, up, w, b, dy)
    assert ours[0].dtype == torch.float64


# ------------------------------------------------------------------------------ rows with large entries


KERNEL_PATHS = {  # (tiling limits, what the path is)
    "v1_single_tile": dict(variant=1),
    "v1_column_loop": dict(
        max_single_tile_fwd=256, max_single_tile_bwd=256, loop_tile_fwd=128, loop_tile_bwd=128, l2_budget_bytes=1,
        variant=1,
    ),
    "v2_single_tile": dict(variant=2),
    "v2_split_rows": dict(variant=2, **SPLIT_TILES),
}  # fmt: skip


def _large_rows(n, scale, dtype):
    """Rows of N(0, scale**2) with the largest entry in different column tiles / chunks per row (so a
    column loop raises its running scale mid-row and split chunks have different scales), one ordinary row."""
    x = torch.randn(5, n) * scale
    for row, col in enumerate((0, n // 3, n - 1, n // 2)):
        x[row, col] = 8.0 * scale
    x[4] = torch.randn(n)
    return x.to(dtype)


@pytest.mark.parametrize("path", sorted(KERNEL_PATHS))
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
def test_constant_row_of_1e7_gives_sum_of_weights_plus_bias(monkeypatch, path, gated):
    monkeypatch.setattr(config, "TILING", config.TilingLimits(**KERNEL_PATHS[path]))
    x = torch.full((3, 1000), 1.0e7)
    up = torch.full((3, 1000), 2.0) if gated else None
    w, b = torch.tensor([0.7, -0.4, 1.3]), torch.tensor([0.25])
    y, stats = launch.poly_norm_forward(x, up, w, b, EPS)
    expected = float(w.sum() + b) * (2.0 if gated else 1.0)
    torch.testing.assert_close(y, torch.full_like(y, expected), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats[:, 3], torch.full((3,), 1.0e7), rtol=0, atol=0)  # the saved row scale


@pytest.mark.parametrize("path", sorted(KERNEL_PATHS))
@pytest.mark.parametrize("gated", [False, True], ids=["plain", "gated"])
@pytest.mark.parametrize("scale", [1e-7, 1e7])
def test_scaled_rows_match_fp64_with_gradients(monkeypatch, path, gated, scale):
    monkeypatch.setattr(config, "TILING", config.TilingLimits(**KERNEL_PATHS[path]))
    torch.manual_seed(7)
    x = _large_rows(1000, scale, torch.float32)
    up = torch.randn(x.shape) if gated else None
    w, b, dy = torch.randn(3) * 0.5 + 0.3, torch.randn(1), torch.randn(x.shape)
    ours = check_against_fp64("polynorm", gated, x, up, w, b, dy)
    assert all(torch.isfinite(t).all() for t in ours if t is not None)


@pytest.mark.parametrize("path", ["v1_column_loop", "v2_split_rows"])
def test_scaled_rows_fp64_and_bf16(monkeypatch, path):
    monkeypatch.setattr(config, "TILING", config.TilingLimits(**KERNEL_PATHS[path]))
    torch.manual_seed(8)
    for dtype in (torch.float64, torch.bfloat16):
        x = _large_rows(600, 1e15 if dtype == torch.float64 else 1e7, dtype)
        up, w, b, dy = torch.randn(x.shape).to(dtype), torch.randn(5) * 0.5 + 0.3, torch.randn(1), torch.randn(x.shape)
        check_against_fp64("polynorm", True, x, up, w, b, dy.to(dtype))


@pytest.mark.parametrize("path", sorted(KERNEL_PATHS))
def test_rows_within_one_keep_the_unscaled_statistics(monkeypatch, path):
    """s = 1 for rows with max |x| <= 1: the saved scale is exactly 1 and the statistics are the unscaled ones."""
    monkeypatch.setattr(config, "TILING", config.TilingLimits(**KERNEL_PATHS[path]))
    x = torch.rand(4, 700) * 2 - 1
    _, stats = launch.poly_norm_forward(x, None, torch.randn(3), torch.randn(1), EPS)
    assert torch.equal(stats[:, 3], torch.ones(4))
    x64 = x.double()
    unscaled = torch.stack([torch.rsqrt((x64 ** (2 * i)).mean(-1) + EPS) for i in (1, 2, 3)], dim=-1)
    torch.testing.assert_close(stats[:, :3].double(), unscaled, rtol=2e-6, atol=0)
