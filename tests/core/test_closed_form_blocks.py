"""The closed form walks rows in blocks (`polycom.ops.closed_form._BLOCK_ELEMENTS`): results must not
depend on where the blocks fall.

Blocks are shrunk to 3 rows so a 10-row input spans 4 blocks, the last one partial (and the fused MLP
streams its rows in 4-row blocks, 2-row for gated forms, so the two blockings do not line up); one row is
scaled by 1e5 so PolyNorm's row-scaling shortcut is taken in some blocks and not in others. Oracle: the formulas
in fp64 written here (PolyNorm / PolyReLU with weight[0] on the highest power, SwiGLU, gated product).
"""

from __future__ import annotations

import copy

import pytest
import torch

import polycom
from polycom.ops import closed_form, fused_mlp

D, H, ROWS = 12, 20, 10


@pytest.fixture
def three_row_blocks(monkeypatch):
    """Closed-form blocks of 3 rows and fused-MLP row blocks of 4 rows (gated forms 2: gate and up count together)."""
    monkeypatch.setattr(closed_form, "_BLOCK_ELEMENTS", 3 * H)
    monkeypatch.setattr(fused_mlp, "_GEMM_BLOCK_BYTES", 4 * H * 4)  # 4 rows of fp32
    assert len(closed_form._row_blocks(torch.empty(ROWS, H))) == 4
    with polycom.use_backend("torch"):
        assert [(s.start, s.stop) for s in fused_mlp._mlp_row_blocks(torch.empty(ROWS, D), H)] == [
            (0, 4),
            (4, 8),
            (8, 10),
        ]


def _activation64(name, act, h):
    if name == "swiglu":
        return h * torch.sigmoid(h)
    w, b, r = act.weight.double(), act.bias.double(), act.order
    if "polynorm" in name:
        terms = [h**i / torch.sqrt((h**i).pow(2).mean(-1, keepdim=True) + act.eps) for i in range(1, r + 1)]
    else:
        terms = [torch.relu(h) ** i for i in range(1, r + 1)]
    return b + sum(w[r - i] * terms[i - 1] for i in range(1, r + 1))


def _mlp64(m, x):
    lin = lambda layer, t: t @ layer.weight.T + layer.bias  # noqa: E731
    h = lin(m.gate_proj, x) if m.gated else lin(m.up_proj, x)
    a = _activation64(m.activation_name, m.act, h)
    return lin(m.down_proj, a * lin(m.up_proj, x) if m.gated else a)


def _input(layout):
    torch.manual_seed(1)
    if layout == "non_contiguous":
        x = torch.randn(D, ROWS).T
    else:
        x = torch.randn(ROWS, D)
    x = x.clone() if layout != "non_contiguous" else x
    with torch.no_grad():
        x[7] *= 1e5  # a row whose pre-activations need PolyNorm's row scaling, in the third block
    return x.reshape(2, 5, D) if layout == "3d" else x


@pytest.mark.parametrize("name", ["polynorm", "polyrelu", "polynorm_glu", "polyrelu_glu", "swiglu"])
@pytest.mark.parametrize("layout", ["2d", "3d", "non_contiguous"])
def test_fused_mlp_in_row_blocks_matches_fp64(three_row_blocks, name, layout):
    torch.manual_seed(0)
    m = polycom.MLP(D, name, H, bias=True)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _input(layout).requires_grad_(True)
    with polycom.use_backend("torch"):
        y = m(x)
        dy = torch.randn_like(y)
        grads = torch.autograd.grad(y, [x, *m.parameters()], dy)
    m64 = copy.deepcopy(m).double()
    x64 = x.detach().double().requires_grad_(True)
    y64 = _mlp64(m64, x64)
    want = torch.autograd.grad(y64, [x64, *m64.parameters()], dy.double())
    scale = y64.abs().max().item()
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5 * scale)
    for got, ref in zip(grads, want, strict=True):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("op", ["poly_norm", "poly_relu", "poly_norm_gated", "poly_relu_gated"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unfused_ops_in_row_blocks_match_the_single_block_result(three_row_blocks, monkeypatch, op, dtype):
    """Blocked vs one block: the same math in a different order of rows, so equal to fp32 rounding."""
    torch.manual_seed(2)
    x = (torch.randn(ROWS, H) * torch.logspace(-2, 4, ROWS)[:, None]).to(dtype)
    up = torch.randn(ROWS, H).to(dtype)
    w, b = torch.tensor([0.7, -0.4, 1.3]), torch.tensor([0.25])

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, up, w, b)]
        args = [leaves[0], leaves[1]] if op.endswith("gated") else [leaves[0]]
        with polycom.use_backend("torch"):
            y = getattr(polycom, op)(*args, leaves[2], leaves[3])
            grads = torch.autograd.grad(
                y, [t for t in leaves if t is not leaves[1] or op.endswith("gated")], y.detach()
            )
        return y, grads

    blocked = run()
    monkeypatch.setattr(closed_form, "_BLOCK_ELEMENTS", 1 << 30)
    whole = run()
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(blocked[0], whole[0], **tol)
    for got, ref in zip(blocked[1], whole[1], strict=True):
        torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=tol["atol"] * ref.abs().max().item())


def test_empty_input_gives_empty_outputs_and_zero_coefficient_gradients():
    w, b = torch.full((3,), 1 / 3, requires_grad=True), torch.zeros(1, requires_grad=True)
    x = torch.empty(0, H, requires_grad=True)
    with polycom.use_backend("torch"):
        for op in (polycom.poly_norm, polycom.poly_relu):
            y = op(x, w, b)
            gx, gw, gb = torch.autograd.grad(y.sum(), [x, w, b])
            assert y.shape == (0, H) and gx.shape == (0, H)
            assert torch.equal(gw, torch.zeros(3)) and torch.equal(gb, torch.zeros(1))


def test_mlp_row_blocks_cover_every_row_once_and_stay_whole_when_small_low_precision_or_compiled(monkeypatch):
    monkeypatch.setattr(fused_mlp, "_GEMM_BLOCK_BYTES", 4 * H * 4)  # 4 rows of fp32
    with polycom.use_backend("torch"):
        for rows in (7, 10, 23):
            blocks = fused_mlp._mlp_row_blocks(torch.empty(rows, D), H)
            covered = torch.cat([torch.arange(rows)[s] for s in blocks])
            assert torch.equal(covered, torch.arange(rows))
            assert all((s.stop - s.start) * H * 4 <= 4 * H * 4 for s in blocks)
        assert fused_mlp._mlp_row_blocks(torch.empty(6, D), H) == [slice(None)]  # 1.5x the block size: whole
        assert len(fused_mlp._mlp_row_blocks(torch.empty(7, D), H)) == 2
        assert len(fused_mlp._mlp_row_blocks(torch.empty(10, D, dtype=torch.float64), H)) == 5  # by bytes
        # bf16 weight gradients would be summed across blocks in bf16: one block
        assert fused_mlp._mlp_row_blocks(torch.empty(ROWS, D, dtype=torch.bfloat16), H) == [slice(None)]


@pytest.mark.parametrize("name", ["polynorm", "polyrelu_glu"])
def test_streamed_mlp_saves_x_and_each_row_block_of_h(three_row_blocks, name):
    """Block bytes count all hidden pre-activations of a row: plain h of width H in 4-row blocks, gated gate + up
    (2 H per row) in 2-row blocks."""
    from polycom.bench.saved import count_saved

    m = polycom.MLP(D, name, H)
    x = torch.randn(ROWS, D, requires_grad=True)
    with polycom.use_backend("torch"):
        _, saved = count_saved(lambda: m(x), exclude=m.parameters())
    if name == "polynorm":  # h blocks, then the (rows, r + 1) statistics of each block
        want = [(ROWS, D), *[(rows, H) for rows in (4, 4, 2)], *[(rows, 4) for rows in (4, 4, 2)]]
    else:  # gate blocks, then up blocks
        want = [(ROWS, D), *[(2, H)] * 5, *[(2, H)] * 5]
    assert [shape for shape, _ in saved.tensors] == want
    assert saved.bytes == 4 * (ROWS * D + sum(rows * cols for rows, cols in want[1:]))


def test_poly_relu_on_relu_input_with_relu_done_gives_the_same_output_and_gradients():
    """The fused MLP keeps q = relu(h) and tells the closed form (relu_done): output and gradients must equal
    those of h itself, including where h <= 0 (zero gradient), at 0 and at NaN (propagated as torch.relu)."""
    torch.manual_seed(3)
    h = torch.randn(6, H) * 2
    h[0, :3] = torch.tensor([0.0, -0.0, float("nan")])
    up, g = torch.randn(6, H), torch.randn(6, H)
    w, b = torch.tensor([0.7, -0.4, 1.3]), torch.tensor([0.25])
    for gate in (None, up):
        plain_y = closed_form.poly_relu_forward(h, gate, w, b)
        done_y = closed_form.poly_relu_forward(torch.relu(h), gate, w, b, relu_done=True)
        torch.testing.assert_close(done_y, plain_y, equal_nan=True)
        plain = closed_form.poly_relu_backward(g, h, gate, w, b)
        done = closed_form.poly_relu_backward(g, torch.relu(h), gate, w, b, relu_done=True)
        for got, want in zip(done, plain, strict=True):
            if want is None:
                assert got is None
            else:
                torch.testing.assert_close(got, want, equal_nan=True)
