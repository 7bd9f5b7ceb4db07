"""PolyCom MoE experts for torchtitan and the override that puts them in place of `GroupedExperts`.

For the routed tokens x (R, d), sorted by expert (``num_tokens_per_expert`` (E,) rows each; rows past the
last expert are padding) and each expert's weights ``w1_EFD`` (E, h, d), ``w2_EDF`` (E, d, h),
``w3_EFD`` (E, h, d) (``replace`` mode only):

    ungated:  y_e = w2_e act(w1_e x)          h = 1.5 x the SwiGLU expert width (same parameters)
    replace:  y_e = w2_e act(w1_e x, w3_e x)

``act`` is a `PolyComActivation`: one coefficient set per layer shared by the experts (the paper's MoE,
``act.weight`` (r,)) or one per expert (``shared_coefficients=False``, ``act.weight`` (E, r)). PolyNorm
normalises each row over its expert's hidden vector, so a shared set applies to all rows at once.

Parallelism: under expert parallelism torchtitan shards the expert dimension; per-expert coefficients
are sharded with it (each rank keeps its experts' sets) and shared coefficients get the sum of every
expert-parallel rank's gradient. With tensor-parallel experts (``ep == 1``, ``tp > 1``) the hidden
dimension is sharded and the activation reduces over the TP group as the dense FFN does.

The matmuls: on CUDA, and for bf16 input anywhere, torchtitan's grouped GEMM (``_grouped_mm`` in bf16, its
seam for float8 / MX converters), as torchtitan's own experts; fp32 / fp64 input on the CPU loops over the
experts (never over tokens) in the input's dtype, since the CPU grouped GEMM takes neither fp64 nor
unaligned strides. Either way rows past the last expert give zero output and receive zero gradient.

CUDA graphs (torchtitan captures each training step by default): the grouped path with shared coefficients
never reads token counts on the host, so it can be captured. Per-expert coefficients split the rows by the
counts on the host (one sync per layer), which capture forbids: such a layer refuses to run while a graph is
captured and names the two ways out (``--training.disable_cuda_graphs`` or shared coefficients).

    --override.imports polycom.integrations.torchtitan.experts.polycom_grouped_experts
    --override.imports 'polycom.integrations.torchtitan.experts.polycom_grouped_experts={"shared_coefficients": false}'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchtitan.config import derive, override
from torchtitan.models.common.moe import GroupedExperts

from polycom.integrations.torchtitan.activation import PolyComActivation
from polycom.integrations.torchtitan.widths import resolve_ffn
from polycom.models.moe import grouped_linear
from polycom.ops.host_reads import cuda_graph_capturing
from polycom.ops.tensor_parallel import is_dtensor

__all__ = ["PolyComGroupedExperts", "polycom_grouped_experts", "polycom_grouped_experts_config"]


def _local(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.to_local() if t is not None and is_dtensor(t) else t


class PolyComGroupedExperts(GroupedExperts):
    """PolyCom routed experts (module docstring). forward(x (R, d), num_tokens_per_expert (E,)) -> (R, d)."""

    @dataclass(kw_only=True, slots=True)
    class Config(GroupedExperts.Config):
        activation: str = "polynorm"
        mode: str = "ungated"
        shared_coefficients: bool = True

    def __init__(self, config: Config):
        super().__init__(config)
        self.mode = config.mode
        if config.mode == "ungated":
            del self.w3_EFD
        self.shared_coefficients = config.shared_coefficients
        self.act = PolyComActivation.Config(
            activation=config.activation,
            width=config.hidden_dim,
            num_sets=0 if config.shared_coefficients else config.num_experts,
        ).build()

    def forward(self, x_RD: torch.Tensor, num_tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
        w1, w2 = _local(self.w1_EFD), _local(self.w2_EDF)
        w3 = _local(self.w3_EFD) if self.mode == "replace" else None
        rows = x_RD.shape[0]
        grouped = x_RD.is_cuda or x_RD.dtype == torch.bfloat16
        counts = None if self.shared_coefficients and grouped else self._host_counts(num_tokens_per_expert_E)
        if grouped:
            offsets = torch.cumsum(num_tokens_per_expert_E, dim=0, dtype=torch.int32)
            valid = (torch.arange(rows, device=x_RD.device) < offsets[-1])[:, None]

            def matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                # The grouped GEMM leaves the rows past the last expert unwritten (whatever memory held), in
                # its output and in its input gradient: masking both sides keeps them out of the activation's
                # row sums and coefficient gradients and away from the caller, forward and backward.
                a = torch.where(valid, a, 0)
                out = self._grouped_mm(A=a.bfloat16(), B_t=w.bfloat16().transpose(-2, -1), offs=offsets)
                return torch.where(valid, out, 0)
        else:
            n = sum(counts)

            def matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                out = grouped_linear(a[:n], w.to(a.dtype), counts)
                return torch.cat([out, out.new_zeros(rows - n, out.shape[1])]) if rows > n else out

        gate = matmul(x_RD, w1)
        up = matmul(x_RD, w3) if w3 is not None else None
        hidden = self._activate(gate, up, counts)
        return matmul(hidden, w2).type_as(x_RD)

    @staticmethod
    def _host_counts(num_tokens_per_expert_E: torch.Tensor) -> list[int]:
        if cuda_graph_capturing(num_tokens_per_expert_E):
            raise RuntimeError(
                "PolyCom experts with per-expert coefficients split the routed rows by token counts read on the "
                "host, which a CUDA graph capture (torchtitan's default) forbids: pass "
                "--training.disable_cuda_graphs, or use shared coefficients (shared_coefficients=true, the paper's MoE)"
            )
        return num_tokens_per_expert_E.tolist()

    def _activate(self, gate: torch.Tensor, up: torch.Tensor | None, counts: list[int] | None) -> torch.Tensor:
        gated_act = up is not None and self.act.gated
        if not self.shared_coefficients:
            hidden = self.act.forward_segments(gate, up if gated_act else None, counts)
        else:
            hidden = self.act(gate, up) if gated_act else self.act(gate)
        return hidden * up if up is not None and not gated_act else hidden

    def parallelize(self, parallel_dims) -> None:
        expert_parallel = parallel_dims.ep > 1
        self.act._sharding_config = self.act.parallel_layout(
            expert_parallel=expert_parallel, per_expert=not self.shared_coefficients
        )
        super().parallelize(parallel_dims)
        if expert_parallel:  # the TP axis carries tokens here; the expert weights are whole per expert
            ep_mesh = parallel_dims.get_optional_mesh("ep")
            shared = ep_mesh.get_group() if ep_mesh is not None and self.shared_coefficients else None
            self.act.set_groups(shard_group=None, grad_sum_group=shared)
        else:
            tp_mesh = parallel_dims.get_optional_mesh("tp")
            self.act.set_groups(shard_group=tp_mesh.get_group() if tp_mesh is not None else None, grad_sum_group=None)


def polycom_grouped_experts_config(
    cfg: GroupedExperts.Config,
    *,
    activation: str = "polynorm",
    mode: str | None = None,
    shared_coefficients: bool = True,
) -> PolyComGroupedExperts.Config:
    """The `PolyComGroupedExperts.Config` replacing the stock SwiGLU experts `cfg` (widths: `resolve_ffn`)."""
    if type(cfg) is not GroupedExperts.Config:
        raise ValueError(
            f"polycom replaces torchtitan's stock GroupedExperts; {type(cfg).__qualname__} has its own forward "
            "(remove the other override or narrow the fqns)"
        )
    if not isinstance(shared_coefficients, bool):
        raise ValueError(f"shared_coefficients must be true or false, got {shared_coefficients!r}")
    choice = resolve_ffn(activation, mode, cfg.hidden_dim)
    return derive(
        cfg,
        PolyComGroupedExperts.Config,
        hidden_dim=choice.width,
        activation=choice.activation,
        mode=choice.mode,
        shared_coefficients=shared_coefficients,
    )


@override(target=GroupedExperts.Config, description="polycom: PolyCom MoE experts in place of SwiGLU experts")
def polycom_grouped_experts(
    cfg: GroupedExperts.Config, activation: str = "polynorm", mode: str | None = None, shared_coefficients: bool = True
) -> PolyComGroupedExperts.Config:
    """Override factory: stock `GroupedExperts` become `PolyComGroupedExperts` (kwargs as the config function)."""
    return polycom_grouped_experts_config(
        cfg, activation=activation, mode=mode, shared_coefficients=shared_coefficients
    )
