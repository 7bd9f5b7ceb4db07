"""`PolyComActivation`: a polycom activation as a torchtitan `Module`, exact under tensor and expert parallelism.

The maths is polycom's own activation module (`polycom.get_activation(name, **options)`: PolyNorm, PolyReLU,
their gated forms, the general PolyCom, ...), kept as a *template* outside the module tree and run with
this module's parameters through `torch.func.functional_call`; so the same ops run as in polycom (Triton
kernels on CUDA, the closed form elsewhere, the exact DTensor path for DTensors). The parameters live here,
where torchtitan's `Module` protocol can initialise them (``init_states`` -> `reset_parameters`: weight
1/r, bias 0, a PReLU slope 0.25) and place them (`parallel_layout`).

Parameters: each of the template's parameters (``weight`` (r,), ``bias`` (1,), ...) with a leading
``num_sets`` dimension when ``num_sets > 0`` (one coefficient set per MoE expert: ``weight`` (E, r)).

Parallelism. When the hidden vectors reach `forward` as plain tensors holding this rank's columns
(torchtitan's default ``spmd_types`` backend after a column-wise projection, and the experts' local
region), the owner sets `shard_group` at parallelize time and:

* PolyNorm (plain, gated) runs `polycom.ops.tensor_parallel.poly_norm_local_shard`: per-row sums of
  powers are combined across the group, so the output equals the unsharded op and the coefficient
  gradients are already complete on every rank;
* an elementwise activation (PolyReLU, gated forms, the general PolyCom without a row normalisation)
  is exact per column; its coefficient gradients are summed over the group (`sum_grad_over_group`);
* an activation that normalises over the hidden vector in another way (the general PolyCom with base
  ``rms_norm`` or ``normalize=True``) has no exact sharded form here and is refused at parallelize time.

`grad_sum_group` (expert parallelism, shared coefficients) sums the coefficient gradients over the
ranks that hold other experts. Either way the coefficients end up with the same complete gradient on
every rank, so their placement on those mesh axes is ``I`` (invariant): torchtitan must not reduce them
again. DTensor inputs (the DTensor backends) take polycom's DTensor ops with the parameters as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import spmd_types as spmd
import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call
from torchtitan.distributed.parallel_dims import MeshAxisName
from torchtitan.models.common.decoder_sharding import dense_param_placement
from torchtitan.protocols.module import Module
from torchtitan.protocols.sharding import ShardingConfig, SpmdLayout

from polycom.compare.arms import parse_arm
from polycom.modules import PolyNorm, PolyNormGated, get_activation, is_gated
from polycom.modules.general_polycom import PolyCom
from polycom.ops.tensor_parallel import (
    is_dtensor,
    poly_norm_gated_local_shard,
    poly_norm_local_shard,
    sum_grad_over_group,
)

__all__ = ["PolyComActivation", "activation_kind"]


def activation_kind(act: nn.Module) -> str:
    """How `act` behaves on a column slice of the hidden vector: ``"polynorm"`` (exact with a reduction over
    the slices), ``"elementwise"`` (exact per column) or ``"row"`` (needs the whole row; not shardable)."""
    if type(act) in (PolyNorm, PolyNormGated):
        return "polynorm"
    if isinstance(act, PolyCom) and (act.normalize or act.base == "rms_norm"):
        return "row"
    return "elementwise"


class PolyComActivation(Module):
    """A polycom activation whose parameters torchtitan initialises and places (module docstring).

    forward(h) for plain activations, forward(gate, up) for gated ones; (..., h_local) -> same shape.
    """

    @dataclass(kw_only=True, slots=True)
    class Config(Module.Config):
        activation: str = "polynorm"
        """A polycom activation name with options, e.g. ``polynorm``, ``polynorm:order=2``, ``polycom:base=silu``."""
        width: int
        """The full hidden width (all tensor-parallel slices together), for PolyNorm's mean over it."""
        num_sets: int = 0
        """0: one coefficient set; E > 0: E sets (one per expert), stacked on a leading dimension."""

    def __init__(self, config: Config):
        super().__init__()
        arm = parse_arm(config.activation)
        if config.width < 1 or config.num_sets < 0:
            raise ValueError(f"width must be >= 1 and num_sets >= 0, got {config.width} and {config.num_sets}")
        with torch.device("cpu"):  # the template is tiny and always real, also when the model is built on meta
            template = get_activation(arm.activation, **arm.options)
        # Not a submodule: torchtitan wants every submodule to be one of its Modules, and the parameters live here.
        self._template = (template,)
        self.activation = arm.label
        self.width = config.width
        self.num_sets = config.num_sets
        self.gated = is_gated(template)
        self.kind = activation_kind(template)
        self.shard_group: dist.ProcessGroup | None = None
        self.grad_sum_group: dist.ProcessGroup | None = None
        for name, value in template.named_parameters():
            shape = (config.num_sets, *value.shape) if config.num_sets else tuple(value.shape)
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=torch.float32)))

    @property
    def template(self) -> nn.Module:
        return self._template[0]

    def reset_parameters(self) -> None:
        """The template's init (PolyCom: weight 1/r, bias 0; PReLU slope 0.25) for every coefficient set."""
        if hasattr(self.template, "reset_parameters"):
            self.template.reset_parameters()
        reference = dict(self.template.named_parameters())
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                local = param.to_local() if is_dtensor(param) else param
                local.copy_(reference[name].detach().to(local.device, local.dtype).expand_as(local))

    # -- parallelism ---------------------------------------------------------------------------------
    def parallel_layout(self, *, expert_parallel: bool, per_expert: bool) -> ShardingConfig:
        """Placements of the coefficients: ``I`` on the axes whose gradient `forward` completes itself, the
        expert axis ``S(0)`` for per-expert sets under expert parallelism, ``R`` on the data-parallel axes."""
        if expert_parallel:
            ep = spmd.S(0) if per_expert else spmd.I
            layout = SpmdLayout({MeshAxisName.DP_REPLICATE: spmd.R, MeshAxisName.EFSDP: spmd.R, MeshAxisName.EP: ep})
        else:
            layout = dense_param_placement(tp=spmd.I)
        return ShardingConfig(state_shardings={name: layout for name, _ in self.named_parameters(recurse=False)})

    def set_groups(self, *, shard_group: dist.ProcessGroup | None, grad_sum_group: dist.ProcessGroup | None) -> None:
        """Called by the owner at parallelize time (module docstring); a group of one rank counts as none."""
        self.shard_group = _real_group(shard_group)
        self.grad_sum_group = _real_group(grad_sum_group)
        if self.shard_group is not None and self.kind == "row":
            raise ValueError(
                f"activation {self.activation!r} normalises over the whole hidden vector and has no exact "
                "tensor-parallel form: use polynorm (exact under TP) or tensor_parallel_degree 1"
            )

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, h: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_sets:
            raise RuntimeError("an activation with one coefficient set per expert runs through forward_segments")
        return self._run(self._parameters_for(h), h, up)

    def forward_segments(self, h: torch.Tensor, up: torch.Tensor | None, counts: list[int]) -> torch.Tensor:
        """Per-expert coefficients: rows [sum(counts[:e]), sum(counts[:e+1])) use set e; rows past the last
        segment (padding) come back as zeros. h (rows, h_local)."""
        params = self._parameters_for(h)
        parts, start = [], 0
        for e, n in enumerate(counts):
            if n:
                rows = slice(start, start + n)
                segment = {name: value[e] for name, value in params.items()}
                parts.append(self._run(segment, h[rows], None if up is None else up[rows]))
            start += n
        if start < h.shape[0]:
            parts.append(h.new_zeros(h.shape[0] - start, h.shape[1]))
        return torch.cat(parts, dim=0) if parts else h.new_zeros(h.shape)

    def _parameters_for(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters(recurse=False))
        if is_dtensor(h):  # DTensor backends: polycom's DTensor ops take the (replicated) coefficients as they are
            return params
        params = {name: p.to_local() if is_dtensor(p) else p for name, p in params.items()}
        if self.grad_sum_group is not None:
            params = {name: sum_grad_over_group(p, self.grad_sum_group) for name, p in params.items()}
        if self.shard_group is not None and self.kind == "elementwise":
            params = {name: sum_grad_over_group(p, self.shard_group) for name, p in params.items()}
        return params

    def _run(self, params: dict[str, torch.Tensor], h: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
        if (up is None) == self.gated:
            raise TypeError(f"activation {self.activation!r} takes {'(gate, up)' if self.gated else 'one tensor'}")
        if self.shard_group is not None and self.kind == "polynorm" and not is_dtensor(h):
            eps = self.template.eps
            if up is None:
                return poly_norm_local_shard(h, params["weight"], params["bias"], eps, self.shard_group, self.width)
            return poly_norm_gated_local_shard(
                h, up, params["weight"], params["bias"], eps, self.shard_group, self.width
            )
        args = (h,) if up is None else (h, up)
        return functional_call(self.template, params, args)

    def extra_repr(self) -> str:
        sets = f", num_sets={self.num_sets}" if self.num_sets else ""
        return f"activation={self.activation!r}, width={self.width}{sets}"


def _real_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    if group is None or dist.get_world_size(group) == 1:
        return None
    return group
