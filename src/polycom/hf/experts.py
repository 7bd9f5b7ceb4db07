"""Stacked MoE experts with PolyCom activations, in transformers' experts layout.

transformers 5 stores the experts of a sparse MoE block (OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE) as
two stacked tensors and runs them through ``experts(hidden_states, top_k_index, top_k_weights)``:

    gated (E experts, width h):  gate, up = chunk(x @ gate_up_proj[e].T, 2);  y = (act(gate) * up) @ down_proj[e].T
    plain:                       y = act(x @ up_proj[e].T) @ down_proj[e].T

with ``gate_up_proj`` (E, 2h, d), ``up_proj`` (E, h, d), ``down_proj`` (E, d, h); each token's output
is the routing-weighted sum over its top-k experts. `StackedExperts` is that module for the cases a
stock experts class cannot express:

* ``ungated`` conversion: plain experts (``up_proj`` / ``down_proj``) at the parameter-matched width;
* per-expert coefficients: ``act_fn`` is an ``nn.ModuleList`` of E PolyCom modules, expert e uses
  ``act_fn[e]`` (saved as ``...experts.act_fn.{e}.weight``).

With one shared activation the forward dispatches like transformers' own experts classes on
``config._experts_implementation`` (``grouped_mm`` / ``batched_mm``: the fast stacked paths, which
read the attributes set in ``__init__``); per-expert coefficients always take the loop over experts
(the fast paths call one activation on the rows of all experts at once).
"""

from __future__ import annotations

import torch
from torch import nn


class StackedExperts(nn.Module):
    """E experts d -> h -> d as stacked tensors; gated (``gate_up_proj``) or plain (``up_proj``).

    forward(hidden_states (N, d), top_k_index (N, k) int, top_k_weights (N, k)) -> (N, d).
    `input_proj` (E, 2h, d) gated / (E, h, d) plain and `down_proj` (E, d, h) are used as given
    (the same Parameter objects, so a conversion keeps weights bitwise); `act` is one module shared
    by the experts or an ``nn.ModuleList`` with one module per expert.
    """

    # attributes read by transformers' stacked expert paths (transformers.integrations.moe)
    has_bias = False
    is_transposed = False
    is_concatenated = True
    has_post_expert_norm = False
    _is_expert_parallel = False

    def __init__(self, config, input_proj: nn.Parameter, down_proj: nn.Parameter, act: nn.Module, *, gated: bool):
        super().__init__()
        num_experts, d, h = down_proj.shape
        expected = (num_experts, 2 * h if gated else h, d)
        if tuple(input_proj.shape) != expected:
            raise ValueError(f"input projection of shape {tuple(input_proj.shape)}, expected {expected}")
        if isinstance(act, nn.ModuleList) and len(act) != num_experts:
            raise ValueError(f"{len(act)} per-expert activations for {num_experts} experts")
        self.config = config
        self.num_experts, self.hidden_dim, self.intermediate_dim = num_experts, d, h
        self.has_gate = gated
        if gated:
            self.gate_up_proj = input_proj
        else:
            self.up_proj = input_proj
        self.down_proj = down_proj
        self.act_fn = act

    @property
    def per_expert(self) -> bool:
        return isinstance(self.act_fn, nn.ModuleList)

    def _act(self, expert: int) -> nn.Module:
        return self.act_fn[expert] if self.per_expert else self.act_fn

    def _apply_gate(self, gate_up_out: torch.Tensor) -> torch.Tensor:
        """(S, 2h) -> act(gate) * up (S, h): the gate is the first half (transformers' concatenated layout)."""
        gate, up = gate_up_out.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def expert_forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        """One expert on its tokens: x (n, d) -> (n, d)."""
        act = self._act(expert)
        if self.has_gate:
            gate, up = nn.functional.linear(x, self.gate_up_proj[expert]).chunk(2, dim=-1)
            hidden = act(gate) * up
        else:
            hidden = act(nn.functional.linear(x, self.up_proj[expert]))
        return nn.functional.linear(hidden, self.down_proj[expert])

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        implementation = getattr(self.config, "_experts_implementation", None)
        if not self.per_expert and implementation not in (None, "eager"):
            from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

            fast = ALL_EXPERTS_FUNCTIONS.get_interface(implementation, None)
            if fast is not None:
                return fast(self, hidden_states, top_k_index, top_k_weights)
        return self._loop_forward(hidden_states, top_k_index, top_k_weights)

    def _loop_forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        """Loop over the experts that received tokens (transformers' eager experts forward)."""
        out = torch.zeros_like(hidden_states)
        with torch.no_grad():
            hit = torch.unique(top_k_index[top_k_index < self.num_experts]).tolist()
        for expert in hit:
            token_idx, k_pos = torch.where(top_k_index == expert)
            y = self.expert_forward(hidden_states[token_idx], expert)
            y = y * top_k_weights[token_idx, k_pos, None]
            out.index_add_(0, token_idx, y.to(out.dtype))
        return out

    def extra_repr(self) -> str:
        kind = "gated" if self.has_gate else "plain"
        coefficients = "per expert" if self.per_expert else "shared"
        return f"{self.num_experts} experts, {kind}, d={self.hidden_dim}, h={self.intermediate_dim}, coefficients {coefficients}"
