"""OLMoE-style mixture-of-experts MLP: softmax router, top-k experts, dropless sort-based dispatch.

For N tokens x (N, d), router weight W_r (E, d):

    logits = x W_r^T (fp32)            probs = softmax(logits)          (N, E)
    (w, idx) = top_k(probs, k)                                          (N, k)  [w /= sum(w) if normalize_top_k]
    with an expert bias b (E,) (MoEConfig.expert_bias): idx = top_k(probs + b, k), w = probs[idx]
    y_t = sum_j w_tj * expert_{idx_tj}(x_t)

Dispatch is dropless: the N*k (token, expert) assignments are sorted by expert (a stable argsort of
the flattened idx), so each expert reads one contiguous segment of the permuted tokens; the loop
runs over experts, never over tokens, and every assignment is computed (no capacity factor).

Auxiliary losses (per layer; the model averages them over layers):

    load balancing  lb = E * sum_e f_e * P_e,  f_e = (#assignments to e) / (N k),  P_e = mean_t probs_te
    router z-loss   z  = mean_t logsumexp(logits_t)**2

lb = 1 for perfectly uniform routing. Expert weights are stacked (E, out, in), one slice per expert
in nn.Linear layout: ``experts.gate_proj`` (E, h, d) (gated activations only), ``experts.up_proj``
(E, h, d), ``experts.down_proj`` (E, d, h).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from polycom.models.config import ModelConfig
from polycom.modules.activations import get_activation


class RouterStats(NamedTuple):
    """What one MoE layer reports: unweighted aux losses (0-dim fp32) and assignments per expert (E,)."""

    lb_loss: torch.Tensor
    z_loss: torch.Tensor
    tokens_per_expert: torch.Tensor


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E * sum_e f_e * P_e for router probs (N, E) and chosen experts (N, k); see module docstring."""
    counts = torch.bincount(expert_idx.flatten(), minlength=num_experts).to(probs.dtype)
    f = counts / expert_idx.numel()
    p = probs.mean(dim=0)
    return num_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over tokens of logsumexp(logits)**2 for logits (N, E)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


def grouped_linear(
    x: torch.Tensor, weight: torch.Tensor, counts: list[int], offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-expert linear on expert-sorted rows: x (M, in), weight (E, out, in) -> (M, out).

    Rows [sum(counts[:e]), sum(counts[:e+1])) use weight[e]. With `offsets` (int32 cumulative counts)
    one `F.grouped_mm` kernel does every expert; without, a loop over experts (never over tokens).
    """
    if offsets is not None:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return F.grouped_mm(x.to(dtype), weight.to(dtype).transpose(-2, -1), offs=offsets)
    parts, start = [], 0
    for e, n in enumerate(counts):
        if n:
            parts.append(F.linear(x[start : start + n], weight[e]))
        start += n
    if not parts:
        return x.new_zeros(0, weight.shape[1])
    return torch.cat(parts, dim=0)


def grouped_mm_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """`F.grouped_mm` exists and would see bf16 operands (its kernels' requirement)."""
    if not hasattr(F, "grouped_mm"):
        return False
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    return dtype == torch.bfloat16 and weight.dtype in (torch.bfloat16, torch.float32)


class Experts(nn.Module):
    """E expert MLPs with stacked weights, run on expert-sorted tokens in three phases.

    up (and gate) projections of every expert -> activation -> down projections. A shared activation
    (per-layer PolyCom coefficients, the paper) is applied once to all rows (PolyNorm normalises
    each row over its expert hidden vector, so this equals applying it per expert); per-expert
    activations (a ModuleList) are applied segment by segment.
    """

    def __init__(self, num_experts: int, d_model: int, hidden_size: int, gated: bool) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.d_model = d_model
        self.hidden_size = hidden_size
        self.gated = gated
        E, h, d = num_experts, hidden_size, d_model
        self.gate_proj = nn.Parameter(torch.empty(E, h, d)) if gated else None
        self.up_proj = nn.Parameter(torch.empty(E, h, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, h))

    def expert_forward(self, e: int, x: torch.Tensor, act: nn.Module) -> torch.Tensor:
        """Expert `e` alone on tokens x (n, d) -> (n, d) (reference path, used for checks)."""
        up = F.linear(x, self.up_proj[e])
        hidden = act(F.linear(x, self.gate_proj[e]), up) if self.gated else act(up)
        return F.linear(hidden, self.down_proj[e])

    def forward(
        self, x: torch.Tensor, counts: list[int], act: nn.Module | nn.ModuleList, use_grouped_mm: bool = False
    ) -> torch.Tensor:
        """x (M, d) sorted by expert with counts[e] rows for expert e -> (M, d)."""
        offsets = None
        if use_grouped_mm and grouped_mm_supported(x, self.up_proj):
            offsets = torch.tensor(counts, device=x.device).cumsum(0).to(torch.int32)
        up = grouped_linear(x, self.up_proj, counts, offsets)
        gate = grouped_linear(x, self.gate_proj, counts, offsets) if self.gated else None
        if isinstance(act, nn.ModuleList):
            parts, start = [], 0
            for e, n in enumerate(counts):
                if n:
                    seg = slice(start, start + n)
                    parts.append(act[e](gate[seg], up[seg]) if self.gated else act[e](up[seg]))
                start += n
            hidden = torch.cat(parts, dim=0) if parts else up
        else:
            hidden = act(gate, up) if self.gated else act(up)
        return grouped_linear(hidden, self.down_proj, counts, offsets)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, hidden_size={self.hidden_size}, gated={self.gated}"


class MoEMLP(nn.Module):
    """Router + experts. Input (B, T, d) -> (output (B, T, d), RouterStats)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        moe = cfg.moe
        assert moe is not None
        self.num_experts = moe.num_experts
        self.top_k = moe.top_k
        self.normalize_top_k = moe.normalize_top_k
        self.use_grouped_mm = moe.grouped_mm
        self.router = nn.Linear(cfg.d_model, moe.num_experts, bias=False)
        # Load-balancing bias of the top-k choice (MoEConfig.expert_bias); not a parameter: nothing trains it here.
        self.register_buffer("expert_bias", torch.zeros(moe.num_experts) if moe.expert_bias else None)
        self.experts = Experts(moe.num_experts, cfg.d_model, cfg.expert_hidden_size(), cfg.gated)
        if moe.shared_coefficients:
            self.act = get_activation(cfg.activation, **cfg.activation_kwargs())
            self.expert_acts = None
        else:
            self.act = None
            self.expert_acts = nn.ModuleList(
                get_activation(cfg.activation, **cfg.activation_kwargs()) for _ in range(moe.num_experts)
            )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, d) -> (logits (N, E) fp32, probs (N, E) fp32, weights (N, k) fp32, expert idx (N, k))."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = F.linear(x.float(), self.router.weight.float())
        probs = logits.softmax(dim=-1)
        if self.expert_bias is None:
            weights, idx = probs.topk(self.top_k, dim=-1)
        else:  # the bias moves the choice; the weights stay the unbiased probabilities
            idx = (probs + self.expert_bias.float()).topk(self.top_k, dim=-1).indices
            weights = probs.gather(-1, idx)
        if self.normalize_top_k:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, probs, weights, idx

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RouterStats]:
        B, T, d = x.shape
        flat = x.reshape(-1, d)
        logits, probs, weights, idx = self.route(flat)

        # Sort the N*k assignments by expert: expert e owns the contiguous slice [starts[e], starts[e] + counts[e]).
        flat_idx = idx.flatten()
        order = torch.argsort(flat_idx, stable=True)
        token_of = order // self.top_k  # the token each sorted assignment belongs to
        counts = torch.bincount(flat_idx, minlength=self.num_experts)
        permuted = flat.index_select(0, token_of)
        combine = weights.flatten().index_select(0, order)

        act = self.act if self.expert_acts is None else self.expert_acts
        expert_out = self.experts(permuted, counts.tolist(), act, self.use_grouped_mm)
        expert_out = expert_out.float() * combine[:, None]
        # Sum the k weighted expert outputs of each token in fp32, then cast once.
        y = torch.zeros(flat.shape[0], d, device=x.device, dtype=torch.float32).index_add_(0, token_of, expert_out)
        stats = RouterStats(
            lb_loss=load_balancing_loss(probs, idx, self.num_experts),
            z_loss=router_z_loss(logits),
            tokens_per_expert=counts.detach(),
        )
        return y.to(x.dtype).view(B, T, d), stats
