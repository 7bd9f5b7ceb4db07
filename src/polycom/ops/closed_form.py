"""Closed-form forward and backward of PolyNorm, PolyReLU and SwiGLU (plain and gated) in plain PyTorch.

The same formulas as the Triton kernels (`polycom.ops.triton.launch`): the CPU (``torch`` backend)
path of `polycom.ops` and of the fused MLP (`polycom.ops.fused_mlp`). Compared with autograd over
`polycom.ops.reference`, the backward keeps only x (and up) plus r + 1 statistics per row.

PolyNorm, per row of n values, on the scaled row q = x / s with s = max(max_j |x_j|, 1) and
e_i = eps / s**(2i) (row scaling of `polycom.ops.reference`: the same formula exactly, no power can
overflow), p_i = q**i, with c_i = w[r-i] * inv_i (per-row scalars):

    inv_i = rsqrt(mean(p_i**2) + e_i),  y = b + sum_i c_i p_i   (Horner in q)
    D_i = sum_j g_j p_ij,  k_i = i c_i inv_i**2 D_i / n
    dx = (g * sum_i i c_i q**(i-1) - sum_i k_i q**(2i-1)) / s,    dw[r-i] = sum_rows inv_i D_i,  db = sum g

PolyReLU, elementwise with q = relu(x):

    y = b + sum_i w[r-i] q**i,  dx = g * [x > 0] * sum_i i w[r-i] q**(i-1),  dw[r-i] = sum g q**i,  db = sum g

Gated forms: out = act(gate) * up, so d_up = g * act(gate) and the activation sees g * up.
Everything is computed in `compute_dtype` (fp32; fp64 for fp64 input) and cast once. Signatures
follow the kernel launchers: forward returns (y, stats (..., r + 1)) for PolyNorm (columns 0..r-1:
inv_1..inv_r of the scaled row, column r: its scale s); backward takes
``needs = (dx, d_up, coefficients)`` and returns (dx, d_up or None, dweight, dbias), None for what
is not needed.

Why the code is written as row blocks of in-place passes: on a CPU the cost of these ops is memory,
not arithmetic. A fresh 35 MB tensor is mapped from the OS and every page faults on first write (about
10 ms at 4096 x 2112 fp32 on a 2-core EPYC), an in-place pass over it takes 1-2 ms, and the same pass
over a 2 MB block that is already in cache a fraction of that. So each function allocates only what it
returns, walks the rows in blocks of about `_BLOCK_ELEMENTS` values (every temporary is block-sized and
reused from the allocator's cache), evaluates polynomials as one ``addcmul`` per power, and can write
its result into the caller's dead upstream gradient (``grad_writable``: the fused MLP's own d(a)).
When every |x| in a block is small enough that no power the formulas form can overflow or lose range
(max |x|**r <= 2**30), PolyNorm's row scaling is skipped (s = 1 is saved): the same formula exactly,
without the q = x / s copy. Under torch.compile everything is one block and the scaled form is always
traced (no data-dependent branch; Inductor fuses the passes anyway).
"""

from __future__ import annotations

import torch

from polycom.ops.dtypes import compute_dtype
from polycom.ops.host_reads import host_reads_allowed

Needs = tuple[bool, bool, bool]
ALL_GRADS: Needs = (True, True, True)

# Skip PolyNorm's row scaling when max |x|**r stays below this: then |x|**(2r) <= 2**60, its row mean and
# inv_r**3 >= 2**-90 stay far inside fp32's range, so s = 1 gives the scaled formula's result to rounding.
_UNSCALED_POWER_LIMIT = 2.0**30

# Row blocks of this many values (2 MB of fp32): a block's passes run in cache and its temporaries are
# small. A one-off timing on the 2-core EPYC (not a benchmark row), whole-tensor passes vs blocks, forward +
# recompute + backward at 4096 x 2112 fp32: PolyNorm 92 -> 70 ms, PolyReLU 84 -> 46 ms, SwiGLU 34 -> 26 ms;
# about even at 1024 rows.
_BLOCK_ELEMENTS = 1 << 19


def _row_blocks(t: torch.Tensor) -> list[slice]:
    """Slices of t's rows (dim 0) holding about `_BLOCK_ELEMENTS` values each; one slice under torch.compile."""
    if torch.compiler.is_compiling():
        return [slice(None)]
    step = max(1, _BLOCK_ELEMENTS // max(t.shape[-1], 1))
    return [slice(i, i + step) for i in range(0, t.shape[0], step)]


def as_rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """t as (rows, last dim) (a view when t's layout allows), None stays None."""
    return None if t is None else t.reshape(-1, t.shape[-1])


def row_block(t: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """t[rows], None stays None."""
    return None if t is None else t[rows]


def _horner_into(out: torch.Tensor, coefficients: list, q: torch.Tensor) -> torch.Tensor:
    """out <- sum_k coefficients[k] * q**k (lowest power first; tensors: 0-dim or per-row (..., 1)); returns out.

    Eager: one pass per power, ``addcmul`` written into out. Under torch.compile the same steps are written
    functionally (a new tensor is returned; Inductor fuses them), so callers use the return value."""
    top = coefficients[-1]
    if torch.compiler.is_compiling():
        acc = top.expand_as(q).clone()
        for c in reversed(coefficients[:-1]):
            acc = torch.addcmul(c, acc, q)
        return acc
    if len(coefficients) == 1:
        return out.copy_(top.expand_as(out))
    # The first step c + top q: not addcmul(c, q, top), which with two broadcast operands (0-dim or per-row) runs
    # 2.5-3.5x slower than mul + add on an in-cache block (one-off timing); a 0-dim top on the CPU goes in as alpha,
    # one pass (reading it is free there; on a GPU it would be a device sync)
    if top.dim() == 0 and top.device.type == "cpu":
        torch.add(coefficients[-2], q, alpha=float(top), out=out)
    else:
        torch.mul(q, top, out=out).add_(coefficients[-2])
    for c in reversed(coefficients[:-2]):
        torch.addcmul(c, out, q, out=out)
    return out


def _odd_horner_into(out: torch.Tensor, coefficients: list, q: torch.Tensor) -> torch.Tensor:
    """out <- sum_i coefficients[i-1] * q**(2i-1), i = 1..len, i.e. q (k_1 + q**2 (k_2 + ...)); returns out
    (a new tensor under torch.compile, as `_horner_into`)."""
    if torch.compiler.is_compiling():
        q2, acc = q * q, coefficients[-1].expand_as(q).clone()
        for k in reversed(coefficients[:-1]):
            acc = torch.addcmul(k, acc, q2)
        return acc * q
    torch.mul(q, coefficients[-1], out=out)  # k_r q, then (k + q (acc q)) q per step
    for k in reversed(coefficients[:-1]):
        torch.addcmul(k, out, q, out=out).mul_(q)
    return out


def row_scale(xc: torch.Tensor) -> torch.Tensor:
    """s = max(max_j |x_j|, 1) over the last dimension, (..., 1), in xc's dtype (max and -min: no |x| tensor)."""
    return torch.maximum(xc.amax(dim=-1, keepdim=True), -xc.amin(dim=-1, keepdim=True)).clamp_min(1.0)


def _scaling_needed(xc: torch.Tensor, r: int) -> bool:
    """False when the whole tensor is small enough to skip the row scaling (see `_UNSCALED_POWER_LIMIT`);
    always True where the host may not read the data (torch.compile, CUDA graph capture). NaN or inf give True."""
    if not host_reads_allowed(xc):
        return True
    if xc.numel() == 0:
        return False
    lo, hi = torch.aminmax(xc)
    return not float(torch.maximum(hi, -lo)) <= _UNSCALED_POWER_LIMIT ** (1.0 / r)


def _all_unit_scale(scales: torch.Tensor) -> bool:
    """True when every saved row scale is 1 (then q = x and dx needs no / s); False where the host may not read
    the data (torch.compile, CUDA graph capture)."""
    if not host_reads_allowed(scales) or scales.numel() == 0:
        return False
    return bool((scales == 1).all())


def poly_norm_stats(qc: torch.Tensor, s: torch.Tensor | None, r: int, eps: float):
    """(stats, power): stats (rows, r + 1) = rsqrt(mean(q**(2i)) + eps / s**(2i)) for i = 1..r, then s
    (s None: every scale is 1, eps as is, a column of ones); power = q**r in a new tensor (None if r == 1).
    qc is (rows, n).

    mean(q**(2i)) = ||q**i||**2 / n: one fused read per power (`vector_norm`), no squared copy."""
    n = qc.shape[-1]
    norms, power = [], qc
    for i in range(1, r + 1):
        if i == 2:
            power = qc * qc
        elif i > 2:
            power.mul_(qc)
        norms.append(torch.linalg.vector_norm(power, dim=-1, keepdim=True))
    mean_sq = torch.cat(norms, dim=-1).square_().div_(n)
    if s is None:
        stats = torch.cat([mean_sq.add_(eps).rsqrt_(), torch.ones_like(mean_sq[:, :1])], dim=-1)
    else:
        even = torch.arange(2, 2 * r + 1, 2, dtype=qc.dtype, device=qc.device)
        stats = torch.cat([mean_sq.add_(eps / s.pow(even)).rsqrt_(), s], dim=-1)
    return stats, (power if r > 1 else None)


def _scaled(x: torch.Tensor, stats: torch.Tensor, unit: bool) -> torch.Tensor:
    """q = x / s in the compute dtype, s the last column of the saved statistics (unit: every s is 1)."""
    return x.to(stats.dtype) if unit else x.to(stats.dtype) / stats[..., -1:]


def _poly_norm_into(out, q, c, bc) -> torch.Tensor:
    """out <- b + sum_i c_i q**i with c (rows, r) = w[r-i] inv_i in column i-1; returns out (see `_horner_into`)."""
    return _horner_into(out, [bc, *c.split(1, dim=-1)], q)


def _coefficients(wc: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """c (rows, r): column i-1 holds c_i = w[r-i] inv_i (inv (rows, r): inv_1..inv_r)."""
    return wc.flip(0) * inv


def _poly_norm_forward_rows(xb, ub, wc, bc, eps, out):
    """One row block (rows, n) in the compute dtype: (y = PolyNorm(x) (* up), written into out when given
    (eager), stats (rows, r + 1))."""
    r = wc.numel()
    s = row_scale(xb) if _scaling_needed(xb, r) else None
    qb = xb if s is None else xb / s
    stats, power = poly_norm_stats(qb, s, r, eps)
    if out is None:  # compile (one block): the power's buffer becomes the output
        out = power if power is not None else torch.empty_like(qb)
    y = _poly_norm_into(out, qb, _coefficients(wc, stats[:, :r]), bc)
    return (y if ub is None else y.mul_(ub)), stats


def poly_norm_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(PolyNorm(x) (* up) in x's dtype, stats (..., r + 1) in the compute dtype: inv_1..inv_r, s), by row block."""
    cd = compute_dtype(x.dtype)
    x2, u2, wc, bc = as_rows(x.to(cd)), as_rows(up), weight.to(cd), bias.to(cd)
    if torch.compiler.is_compiling():
        y, stats = _poly_norm_forward_rows(x2, u2, wc, bc, eps, None)
    else:
        y, stats = torch.empty_like(x2), x2.new_empty(x2.shape[0], wc.numel() + 1)
        for rows in _row_blocks(x2):
            stats[rows] = _poly_norm_forward_rows(x2[rows], row_block(u2, rows), wc, bc, eps, y[rows])[1]
    return y.view(x.shape).to(x.dtype), stats.view(*x.shape[:-1], wc.numel() + 1)


def poly_norm_from_stats(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, stats: torch.Tensor
) -> torch.Tensor:
    """PolyNorm(x) (* up) recomputed from the saved statistics (no reductions), in x's dtype, by row block."""
    cd = stats.dtype
    x2, u2, st2, wc, bc = as_rows(x), as_rows(up), as_rows(stats), weight.to(cd), bias.to(cd)
    r, unit = wc.numel(), _all_unit_scale(st2[:, -1])
    c = _coefficients(wc, st2[:, :r])
    y = None if torch.compiler.is_compiling() else torch.empty(x2.shape, dtype=cd, device=x.device)
    for rows in _row_blocks(x2):
        yb = _poly_norm_into(row_block(y, rows), _scaled(x2[rows], st2[rows], unit), c[rows], bc)
        yb = yb if u2 is None else yb.mul_(u2[rows])
        y = yb if y is None else y
    return y.view(x.shape).to(x.dtype)


def _writable(t: torch.Tensor, cd: torch.dtype, writable: bool) -> tuple[torch.Tensor, bool]:
    """t in the compute dtype, and whether this function may overwrite it (a fresh copy, or the caller said so)."""
    tc = t.to(cd)
    return tc, writable or tc is not t


def _gate_grads(g, owns_g, up, needs, activation):
    """Gated forms: (d_up = g * act(gate) in up's dtype or None, g * up, whether that is writable);
    activation() returns act(gate) as a new tensor."""
    d_up = None
    if needs[1]:
        d_up = activation().mul_(g).to(up.dtype)
    return d_up, (g.mul_(up) if owns_g else g * up), True


def _poly_norm_backward_rows(g, owns_g, q, ub, bc, per_row, needs, outs):
    """One row block (rows, n) of the scaled input q: (dx, d_up, D (rows, r), sum g) in the compute dtype.

    per_row = (c, slope, k_factor, s): (rows, r) columns i-1 = c_i, i c_i, i c_i inv_i**2 / n, and the row
    scales (rows, 1) or None when every s is 1. outs = (dx_out, d_up_out): dx goes into dx_out when given
    (eager), else over g when owns_g (the caller's writable gradient), else into a new tensor."""
    c, slope_c, k_factor, s = per_row
    dx_out, d_up_out = outs
    d_up = None
    if ub is not None:
        if needs[1]:
            d_up = _poly_norm_into(d_up_out if d_up_out is not None else torch.empty_like(q), q, c, bc).mul_(g)
        g, owns_g = (g.mul_(ub) if owns_g else g * ub), True
    g_sum = g.sum() if needs[2] else None
    t = g * q  # g q**i, for D_i = sum_j g_j q_j**i
    dots = [t.sum(dim=-1, keepdim=True)]
    for _ in range(1, c.shape[-1]):
        dots.append(t.mul_(q).sum(dim=-1, keepdim=True))
    dots = torch.cat(dots, dim=-1)
    dx = None
    if needs[0]:
        slope = _horner_into(t, slope_c.split(1, dim=-1), q)  # sum_i i c_i q**(i-1)
        correction = _odd_horner_into(torch.empty_like(q), (k_factor * dots).split(1, dim=-1), q)  # sum k_i q**(2i-1)
        dx = (torch.mul(g, slope, out=dx_out) if dx_out is not None or not owns_g else g.mul_(slope)).sub_(correction)
        if s is not None:
            dx.div_(s)
    return dx, d_up, dots, g_sum


def poly_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stats: torch.Tensor,
    needs: Needs = ALL_GRADS,
    *,
    grad_writable: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, d_up, dweight, dbias) of PolyNorm (gated when `up` is given) from x and the saved statistics,
    by row block. grad_writable: grad may be overwritten (dx is then written into it, no new tensor)."""
    cd = stats.dtype
    wc, bc, r, n = weight.to(cd), bias.to(cd), weight.numel(), x.shape[-1]
    g, owns_g = _writable(grad, cd, grad_writable)
    x2, g2, u2, st2 = as_rows(x), as_rows(g), as_rows(up), as_rows(stats)
    unit = _all_unit_scale(st2[:, -1])  # then q = x and dx needs no / s
    inv = st2[:, :r]
    c = _coefficients(wc, inv)
    slope_c = c * torch.arange(1, r + 1, dtype=cd, device=c.device)
    per_row = (c, slope_c, slope_c * inv.square() / n, None if unit else st2[:, r:])
    eager = not torch.compiler.is_compiling()
    dx_all = torch.empty(x2.shape, dtype=cd, device=x.device) if eager and needs[0] and not owns_g else None
    d_up_all = torch.empty(x2.shape, dtype=cd, device=x.device) if eager and up is not None and needs[1] else None
    parts = [
        _poly_norm_backward_rows(
            g2[rows],
            owns_g,
            _scaled(x2[rows], st2[rows], unit),
            row_block(u2, rows),
            bc,
            [row_block(t, rows) for t in per_row],
            needs,
            (row_block(dx_all, rows), row_block(d_up_all, rows)),
        )  # fmt: skip
        for rows in _row_blocks(x2)
    ]
    dx = d_up = dweight = dbias = None
    if needs[0]:
        dx = (g2 if owns_g else dx_all) if eager else parts[0][0]
        dx = dx.view(x.shape).to(x.dtype)
    if up is not None and needs[1]:
        d_up = (d_up_all if eager else parts[0][1]).view(up.shape).to(up.dtype)
    if needs[2]:
        dots = torch.cat([p[2] for p in parts]) if parts else inv.new_zeros(0, r)
        dweight = (inv * dots).sum(dim=0).flip(0).to(weight.dtype)  # index i-1 -> dL/dw[r-i]
        dbias = (torch.stack([p[3] for p in parts]).sum() if parts else bc.new_zeros(())).reshape(1).to(bias.dtype)
    return dx, d_up, dweight, dbias


def _poly_relu_into(out, q, wc, bc) -> torch.Tensor:
    """out <- b + sum_i w[r-i] q**i, q = relu(x); returns out (see `_horner_into`)."""
    r = wc.numel()
    return _horner_into(out, [bc, *(wc[r - i] for i in range(1, r + 1))], q)


def _relu(x: torch.Tensor, relu_done: bool) -> torch.Tensor:
    """relu(x) (a new tensor; keeps NaN, as torch.relu), or x itself when the caller says x = relu(x) already."""
    return x if relu_done else torch.relu(x)


def _poly_relu_values(xc: torch.Tensor, wc: torch.Tensor, bc: torch.Tensor, relu_done: bool) -> torch.Tensor:
    """PolyReLU(x) in xc's dtype, as a new tensor; relu(x) only ever exists one row block at a time."""
    if torch.compiler.is_compiling():
        return _poly_relu_into(None, _relu(xc, relu_done), wc, bc)
    x2 = xc.reshape(-1, xc.shape[-1])
    y = torch.empty_like(x2)
    for rows in _row_blocks(x2):
        _poly_relu_into(y[rows], _relu(x2[rows], relu_done), wc, bc)
    return y.view(xc.shape)


def poly_relu_forward(
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    relu_done: bool = False,
) -> torch.Tensor:
    """PolyReLU(x) (* up) in x's dtype. relu_done: x already holds relu(x) (the same result; no relu pass)."""
    cd = compute_dtype(x.dtype)
    y = _poly_relu_values(x.to(cd), weight.to(cd), bias.to(cd), relu_done)
    if up is not None:
        y.mul_(up)
    return y.to(x.dtype)


def _poly_relu_backward_block(gb, xb, slope, r, needs, out_b, relu_done):
    """One row block of `poly_relu_backward`: ([sum g q**i for i = 1..r] or [], dx block or None); the dx
    block is written into out_b when given (eager; out_b may be gb itself). The block's scratch tensors are small."""
    q = _relu(xb, relu_done)
    sums, scratch, dx = [], None, None
    if needs[2]:
        scratch = gb * q  # g q**(i-1)
        sums.append(scratch.sum())
        for i in range(2, r + 1):
            if i > 2:
                scratch.mul_(q)
            sums.append(torch.dot(scratch.reshape(-1), q.reshape(-1)))
    if needs[0]:
        # g [x > 0]: torch.relu's own backward (g passes where x is NaN, as for torch.relu)
        g_masked = torch.ops.aten.threshold_backward(gb, xb, 0)
        slope_q = _horner_into(scratch if scratch is not None else torch.empty_like(q), slope, q)
        dx = torch.mul(slope_q, g_masked, out=out_b) if out_b is not None else slope_q.mul_(g_masked)
    return sums, dx


def poly_relu_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    needs: Needs = ALL_GRADS,
    *,
    grad_writable: bool = False,
    relu_done: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, d_up, dweight, dbias) of PolyReLU (gated when `up` is given); grad_writable as in
    `poly_norm_backward`. Row blocks: relu(x) and the powers never exist for the whole tensor.

    relu_done: x already holds q = relu(x). The backward needs only q (dx = g [q > 0] sum_i i w[r-i] q**(i-1),
    since q > 0 exactly where x > 0), so the result is the same without the relu pass."""
    cd = compute_dtype(x.dtype)
    xc, wc, bc = x.to(cd), weight.to(cd), bias.to(cd)
    r, n = wc.numel(), x.shape[-1]
    g, owns_g = _writable(grad, cd, grad_writable)
    d_up = None
    if up is not None:
        d_up, g, owns_g = _gate_grads(g, owns_g, up, needs, lambda: _poly_relu_values(xc, wc, bc, relu_done))
    x2, g2 = xc.reshape(-1, n), g.reshape(-1, n)
    slope = [i * wc[r - i] for i in range(1, r + 1)]  # sum_i i w[r-i] q**(i-1)
    dbias = g.sum().reshape(1).to(bias.dtype) if needs[2] else None  # before dx may overwrite g
    out = None
    if needs[0] and not torch.compiler.is_compiling():
        out = g2 if owns_g else torch.empty_like(x2)
    per_block = [
        _poly_relu_backward_block(g2[rows], x2[rows], slope, r, needs, row_block(out, rows), relu_done)
        for rows in _row_blocks(x2)
    ]
    dweight = dx = None
    if needs[2]:
        sums = [torch.stack(block) for block, _ in per_block]
        dweight = (torch.stack(sums).sum(dim=0) if sums else wc.new_zeros(r)).flip(0).to(weight.dtype)
    if needs[0]:
        dx = (out if out is not None else per_block[0][1]).view(x.shape).to(x.dtype)
    return dx, d_up, dweight, dbias


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in the input dtype (the same ops as `polycom.SwiGLU`; one new tensor)."""
    return torch.nn.functional.silu(gate).mul_(up)


def _swiglu_backward_rows(g, owns_g, gate, up, needs, d_gate_out, d_up_out):
    """One row block: (d_gate, d_up); d_gate overwrites g when owns_g, else goes into d_gate_out (eager)."""
    s = torch.sigmoid(gate)
    silu = gate * s
    factor = s.addcmul_(silu, s, value=-1).add_(silu).mul_(up) if needs[0] else None  # s + silu - silu s
    d_up = torch.mul(silu, g, out=d_up_out) if needs[1] else None  # before g may be overwritten
    d_gate = None
    if needs[0]:
        d_gate = g.mul_(factor) if owns_g else torch.mul(factor, g, out=d_gate_out)
    return d_gate, d_up


def swiglu_backward(
    grad: torch.Tensor,
    gate: torch.Tensor,
    up: torch.Tensor,
    needs: Needs = ALL_GRADS,
    *,
    grad_writable: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d_gate, d_up): d_up = g silu(gate), d_gate = g up (s + silu(gate) (1 - s)), s = sigmoid(gate), by row
    block; grad_writable as in `poly_norm_backward`."""
    cd = compute_dtype(gate.dtype)
    g, owns_g = _writable(grad, cd, grad_writable)
    ga2, u2, g2 = as_rows(gate.to(cd)), as_rows(up.to(cd)), as_rows(g)
    eager = not torch.compiler.is_compiling()
    d_gate_all = torch.empty_like(ga2) if eager and needs[0] and not owns_g else None
    d_up_all = torch.empty_like(ga2) if eager and needs[1] else None
    parts = [
        _swiglu_backward_rows(
            g2[rows], owns_g, ga2[rows], u2[rows], needs, row_block(d_gate_all, rows), row_block(d_up_all, rows)
        )
        for rows in _row_blocks(ga2)
    ]
    d_gate = d_up = None
    if needs[0]:
        d_gate = ((g2 if owns_g else d_gate_all) if eager else parts[0][0]).view(gate.shape).to(gate.dtype)
    if needs[1]:
        d_up = (d_up_all if eager else parts[0][1]).view(up.shape).to(up.dtype)
    return d_gate, d_up
