"""Gradient-norm clipping that works for plain, FSDP2, tensor-parallel and FSDP2 x TP parameters.

`torch.nn.utils.clip_grad_norm_` fails when one model mixes plain tensors and DTensors, or DTensors
on different meshes (FSDP2 x TP: TP-sharded weights live on the 2-D mesh, the rest on the dp mesh).
Here each gradient contributes the squared sum of its LOCAL values; sums are grouped by the mesh
dimensions over which the gradient is split (Shard, or Partial) and all-reduced over exactly those
dimensions, one dimension at a time; replicated dimensions are not summed (no double counting):

    total_norm = sqrt( sum_g || g ||^2 ),   every g scaled by min(1, max_norm / (total_norm + 1e-6)).

Collectives: one all-reduce per (mesh, split dimension) group, not one per parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Replicate

__all__ = ["grad_norm", "clip_grad_norm_"]


@torch.no_grad()
def grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of all gradients (fp32 scalar on the gradients' device), the same on every rank."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = (grads[0].to_local() if isinstance(grads[0], DTensor) else grads[0]).device
    plain = torch.zeros((), dtype=torch.float32, device=device)
    groups: dict[tuple, torch.Tensor] = {}
    meshes: dict[tuple, object] = {}
    for g in grads:
        if isinstance(g, DTensor):
            split_dims = tuple(i for i, p in enumerate(g.placements) if not isinstance(p, Replicate))
            local = g.to_local().float().square().sum()
            if not split_dims:
                plain += local
                continue
            key = (id(g.device_mesh), split_dims)
            groups[key] = groups.get(key, torch.zeros((), dtype=torch.float32, device=device)) + local
            meshes[key] = g.device_mesh
        else:
            plain += g.float().square().sum()
    total = plain
    for key, value in groups.items():
        mesh = meshes[key]
        for mesh_dim in key[1]:
            dist.all_reduce(value, group=mesh.get_group(mesh_dim))
        total = total + value
    return total.sqrt()


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients in place so their global L2 norm is at most `max_norm`; return the norm before."""
    params = [p for p in parameters if p.grad is not None]
    total = grad_norm(params)
    scale = float(max_norm) / (total.item() + 1e-6)
    if scale < 1.0:
        for p in params:
            p.grad.mul_(scale)
    return total
