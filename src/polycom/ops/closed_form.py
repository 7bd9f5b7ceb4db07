"""Closed-form forward and backward of PolyNorm and PolyReLU (plain and gated) in plain PyTorch.

The same formulas as the Triton kernels (`polycom.ops.triton.launch`), written as a few whole-tensor
passes: the CPU (``torch`` backend) path of `polycom.ops` and of the fused MLP (`polycom.ops.fused_mlp`).
Compared with autograd over `polycom.ops.reference`, the backward keeps only x (and up) plus r
statistics per row and runs about a third of the passes.

PolyNorm, per row of n values, on the scaled row q = x / s with s = max(max_j |x_j|, 1) and
e_i = eps / s**(2i) (row scaling of `polycom.ops.reference`: the same formula exactly, no power can
overflow; s = 1 for rows with max |x| <= 1, which then compute exactly as the unscaled formula),
p_i = q**i, with c_i = w[r-i] * inv_i (per-row scalars):

    inv_i = rsqrt(mean(p_i**2) + e_i),  y = b + sum_i c_i p_i   (Horner in q)
    D_i = sum_j g_j p_ij,  k_i = i c_i inv_i**2 D_i / n
    dx = (g * sum_i i c_i q**(i-1) - q * sum_i k_i q**(2i-2)) / s,    dw[r-i] = sum_rows inv_i D_i,  db = sum g

PolyReLU, elementwise with q = relu(x):

    y = b + sum_i w[r-i] q**i,  dx = g * [x > 0] * sum_i i w[r-i] q**(i-1),  dw[r-i] = sum g q**i,  db = sum g

Gated forms: out = act(gate) * up, so d_up = g * act(gate) and the activation sees g * up.
Everything is computed in `compute_dtype` (fp32; fp64 for fp64 input) and cast once. Signatures
follow the kernel launchers: forward returns (y, stats (..., r + 1)) for PolyNorm (columns 0..r-1:
inv_1..inv_r of the scaled row, column r: its scale s); backward takes
``needs = (dx, d_up, coefficients)`` and returns (dx, d_up or None, dweight, dbias), None for what
is not needed.
"""

from __future__ import annotations

import torch

from polycom.ops.dtypes import compute_dtype

Needs = tuple[bool, bool, bool]
ALL_GRADS: Needs = (True, True, True)


def _horner(coefficients: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """sum_k coefficients[k] * x**k (coefficients lowest power first; scalars or per-row (..., 1))."""
    acc = coefficients[-1] * x if len(coefficients) > 1 else coefficients[0].expand_as(x)
    for k in range(len(coefficients) - 2, 0, -1):
        acc = (acc + coefficients[k]) * x
    return acc + coefficients[0] if len(coefficients) > 1 else acc


def row_scale(xc: torch.Tensor) -> torch.Tensor:
    """s = max(max_j |x_j|, 1) over the last dimension, (..., 1), in xc's dtype (max and -min: no |x| tensor)."""
    return torch.maximum(xc.amax(dim=-1, keepdim=True), -xc.amin(dim=-1, keepdim=True)).clamp_min(1.0)


def _all_unit_scale(values: torch.Tensor, limit_is_scale: bool) -> bool:
    """True when every row's s is 1, so q = x and e_i = eps exactly and the rescaling can be skipped:
    max |x| <= 1 over the whole tensor (one aminmax pass instead of per-row max and min plus two
    divisions), or, for saved scales, all of them 1. Eager only: under torch.compile the scaled path is
    traced (no data-dependent branch; Inductor fuses the extra work anyway). NaN gives False."""
    if torch.compiler.is_compiling() or values.numel() == 0:
        return False
    if limit_is_scale:
        return bool((values == 1).all())
    lo, hi = torch.aminmax(values)
    return bool(torch.maximum(hi, -lo) <= 1)


def poly_norm_stats(qc: torch.Tensor, s: torch.Tensor | None, r: int, eps: float) -> torch.Tensor:
    """(..., r + 1): rsqrt(mean(q**(2i), -1) + eps / s**(2i)) for i = 1..r, then s (q = x / s);
    s None: every row's scale is 1 (eps as is, a column of ones)."""
    q2 = qc * qc
    even = q2  # q**(2i)
    s_even = s * s if s is not None else None  # s**(2i)
    s2 = s_even
    stats = []
    for i in range(1, r + 1):
        if i > 1:
            even = even * q2
            s_even = s_even * s2 if s is not None else None
        stats.append(torch.rsqrt(even.mean(dim=-1, keepdim=True) + (eps / s_even if s is not None else eps)))
    if s is None:
        s = torch.ones_like(stats[0])
    return torch.cat([*stats, s], dim=-1)


def _scaled(x: torch.Tensor, stats: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """q = x / s in the compute dtype, s the last column of the saved statistics (unit: every s is 1)."""
    return x.to(stats.dtype) if unit else x.to(stats.dtype) / stats[..., -1:]


def _poly_norm_values(qc, wc, bc, stats):
    """y = b + sum_i w[r-i] inv_i q**i from saved statistics; returns (y, [c_1..c_r]) with c_i (..., 1)."""
    r = wc.numel()
    c = [wc[r - i] * stats[..., i - 1 : i] for i in range(1, r + 1)]
    return _horner([bc, *c], qc), c


def poly_norm_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(PolyNorm(x) (* up) in x's dtype, stats (..., r + 1) in the compute dtype: inv_1..inv_r, s)."""
    cd = compute_dtype(x.dtype)
    xc = x.to(cd)
    if _all_unit_scale(xc, limit_is_scale=False):  # the common case: no rescaling work at all
        qc, s = xc, None
    else:
        s = row_scale(xc)
        qc = xc / s
    stats = poly_norm_stats(qc, s, weight.numel(), eps)
    y, _ = _poly_norm_values(qc, weight.to(cd), bias.to(cd), stats)
    if up is not None:
        y = y * up.to(cd)
    return y.to(x.dtype), stats


def poly_norm_from_stats(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, stats: torch.Tensor
) -> torch.Tensor:
    """PolyNorm(x) (* up) recomputed from the saved statistics (no reductions), in x's dtype."""
    cd = stats.dtype
    unit = _all_unit_scale(stats[..., -1], limit_is_scale=True)
    y, _ = _poly_norm_values(_scaled(x, stats, unit), weight.to(cd), bias.to(cd), stats)
    if up is not None:
        y = y * up.to(cd)
    return y.to(x.dtype)


def poly_norm_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    stats: torch.Tensor,
    needs: Needs = ALL_GRADS,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, d_up, dweight, dbias) of PolyNorm (gated when `up` is given) from x and the saved statistics."""
    cd = stats.dtype
    unit = _all_unit_scale(stats[..., -1], limit_is_scale=True)  # then q = x and dx needs no / s
    qc, g, wc = _scaled(x, stats, unit), grad.to(cd), weight.to(cd)
    r, n = wc.numel(), x.shape[-1]
    inv, s = stats[..., :r], stats[..., r:]
    d_up = None
    if up is not None:
        if needs[1]:
            y, _ = _poly_norm_values(qc, wc, bias.to(cd), stats)
            d_up = (g * y).to(up.dtype)
        g = g * up.to(cd)
    c = [wc[r - i] * inv[..., i - 1 : i] for i in range(1, r + 1)]
    powers = [qc]
    for _ in range(1, r):
        powers.append(powers[-1] * qc)
    dots = torch.cat([torch.linalg.vecdot(g, p).unsqueeze(-1) for p in powers], dim=-1)  # D_i (..., r)
    dx = None
    if needs[0]:
        slope = _horner([i * c[i - 1] for i in range(1, r + 1)], qc)  # sum_i i c_i q**(i-1)
        k = [i * c[i - 1] * inv[..., i - 1 : i] ** 2 * dots[..., i - 1 : i] / n for i in range(1, r + 1)]
        correction = _horner(k, powers[1]) if r > 1 else k[0].expand_as(qc)  # sum_i k_i q**(2i-2)
        dx = torch.addcmul(g * slope, qc, correction, value=-1)
        dx = (dx if unit else dx / s).to(x.dtype)
    dweight = dbias = None
    if needs[2]:
        per_power = (inv * dots).reshape(-1, r).sum(dim=0)  # index i-1 -> dL/dw[r-i]
        dweight = per_power.flip(0).to(weight.dtype)
        dbias = g.sum().reshape(1).to(bias.dtype)
    return dx, d_up, dweight, dbias


def poly_relu_forward(
    x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """PolyReLU(x) (* up) in x's dtype."""
    cd = compute_dtype(x.dtype)
    wc = weight.to(cd)
    r = wc.numel()
    y = _horner([bias.to(cd)[0], *(wc[r - i] for i in range(1, r + 1))], torch.relu(x.to(cd)))
    if up is not None:
        y = y * up.to(cd)
    return y.to(x.dtype)


def poly_relu_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    up: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    needs: Needs = ALL_GRADS,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(dx, d_up, dweight, dbias) of PolyReLU (gated when `up` is given)."""
    cd = compute_dtype(x.dtype)
    xc, g, wc = x.to(cd), grad.to(cd), weight.to(cd)
    r = wc.numel()
    q = torch.relu(xc)
    d_up = None
    if up is not None:
        if needs[1]:
            d_up = (g * _horner([bias.to(cd)[0], *(wc[r - i] for i in range(1, r + 1))], q)).to(up.dtype)
        g = g * up.to(cd)
    dx = None
    if needs[0]:
        slope = _horner([i * wc[r - i] for i in range(1, r + 1)], q)
        dx = torch.where(xc > 0, g * slope, torch.zeros((), dtype=cd, device=x.device)).to(x.dtype)
    dweight = dbias = None
    if needs[2]:
        flat_g, power, sums = g.reshape(-1), q.reshape(-1), []
        for i in range(1, r + 1):
            if i > 1:
                power = power * q.reshape(-1)
            sums.append(torch.dot(flat_g, power))
        dweight = torch.stack(sums).flip(0).to(weight.dtype)
        dbias = flat_g.sum().reshape(1).to(bias.dtype)
    return dx, d_up, dweight, dbias


def swiglu_forward(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up in the input dtype (the same ops as `polycom.SwiGLU`)."""
    return torch.nn.functional.silu(gate) * up


def swiglu_backward(
    grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, needs: Needs = ALL_GRADS
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d_gate, d_up): d_up = g silu(gate), d_gate = g up s (1 + gate (1 - s)), s = sigmoid(gate)."""
    cd = compute_dtype(gate.dtype)
    g, gc, uc = grad.to(cd), gate.to(cd), up.to(cd)
    s = torch.sigmoid(gc)
    d_up = (g * gc * s).to(up.dtype) if needs[1] else None
    d_gate = (g * uc * s * (1 + gc * (1 - s))).to(gate.dtype) if needs[0] else None
    return d_gate, d_up
