"""Worker functions run on every rank by the distributed tests (importable, so spawn can pickle them).

Each worker starts through `polycom.distributed.init_distributed` from the torchrun-like environment
that `dist_harness.run_workers` sets, and returns plain tensors/numbers for the parent to compare.
"""

from __future__ import annotations

import torch


def polynorm_formula(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """PolyNorm written from the paper, in fp64: sum_i w[r-i] x^i / sqrt(mean(x^2i) + eps) + b."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    r = weight.numel()
    y = bias.expand_as(x).clone()
    for i in range(1, r + 1):
        p = x**i
        y = y + weight[r - i] * p / torch.sqrt((p * p).mean(-1, keepdim=True) + eps)
    return y


# ----------------------------------------------------------------------------------------------------
# tensor-parallel PolyNorm
# ----------------------------------------------------------------------------------------------------


def make_polynorm_case(seed: int, shape: tuple[int, ...], order: int, dtype: torch.dtype, gated: bool) -> dict:
    """Inputs of one case, the same on every process for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    case = {
        "x": (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.3).to(dtype),
        "weight": torch.randn(order, generator=gen, dtype=torch.float64).float(),
        "bias": torch.randn(1, generator=gen, dtype=torch.float64).float(),
        "grad": torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype),
    }
    if gated:
        case["up"] = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return case


def tp_polynorm_worker(rank: int, world_size: int, cases: list[dict]) -> list[dict]:
    """Run each case through poly_norm(_gated)_dtensor on a Shard(-1) DTensor; return full results.

    case keys: seed, shape, order, dtype, gated, placement ("shard_last" | "replicate" | "shard_rows"),
    dtensor_coeffs (bool), eps.
    """
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from polycom.distributed import ParallelConfig, init_distributed
    from polycom.distributed import tensor_parallel_polynorm as tpn

    ctx = init_distributed(ParallelConfig(tp=world_size, timeout_s=60))
    mesh = ctx.tp_mesh
    calls = {"n": 0}
    original = tpn._all_reduce

    def counting_all_reduce(t, group):
        calls["n"] += 1
        return original(t, group)

    tpn._all_reduce = counting_all_reduce
    out = []
    for spec in cases:
        c = make_polynorm_case(spec["seed"], spec["shape"], spec["order"], spec["dtype"], spec["gated"])
        placement = {"shard_last": Shard(len(spec["shape"]) - 1), "replicate": Replicate(), "shard_rows": Shard(0)}[
            spec["placement"]
        ]
        x = distribute_tensor(c["x"], mesh, [placement]).requires_grad_()
        if spec["dtensor_coeffs"]:
            w = distribute_tensor(c["weight"], mesh, [Replicate()]).requires_grad_()
            b = distribute_tensor(c["bias"], mesh, [Replicate()]).requires_grad_()
        else:
            w = c["weight"].clone().requires_grad_()
            b = c["bias"].clone().requires_grad_()
        calls["n"] = 0
        if spec["gated"]:
            up = distribute_tensor(c["up"], mesh, [placement]).requires_grad_()
            y = tpn.poly_norm_gated_dtensor(x, up, w, b, spec["eps"])
            per_shard = tpn.poly_norm_gated_per_shard(x.detach(), up.detach(), w.detach(), b.detach(), spec["eps"])
        else:
            up = None
            y = tpn.poly_norm_dtensor(x, w, b, spec["eps"])
            per_shard = tpn.poly_norm_per_shard(x.detach(), w.detach(), b.detach(), spec["eps"])
        forward_calls = calls["n"]
        y.backward(distribute_tensor(c["grad"], mesh, list(y.placements)))
        res = {
            "y": y.full_tensor().detach(),
            "placements": [(type(p).__name__, getattr(p, "dim", None)) for p in y.placements],
            "type": type(y).__name__,
            "per_shard": per_shard.full_tensor(),
            "dx": x.grad.full_tensor(),
            "dw": w.grad.full_tensor() if hasattr(w.grad, "full_tensor") else w.grad,
            "db": b.grad.full_tensor() if hasattr(b.grad, "full_tensor") else b.grad,
            "dw_local": w.grad.to_local() if hasattr(w.grad, "to_local") else w.grad,
            "forward_all_reduces": forward_calls,
            "backward_all_reduces": calls["n"] - forward_calls,
        }
        if up is not None:
            res["dup"] = up.grad.full_tensor()
        out.append(res)
    return out
