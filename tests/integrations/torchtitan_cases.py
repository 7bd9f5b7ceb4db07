"""Shared builders for the torchtitan tests: stock SwiGLU configs, the polycom references, weight copies.

The references are polycom's own modules (`polycom.MLP`, `polycom.models.moe.Experts`), not the code
under test: the integration must give the same numbers with the same weights.
"""

from __future__ import annotations

import torch
from torchtitan.models.common.feed_forward import FeedForward
from torchtitan.models.common.linear import Linear
from torchtitan.models.common.moe import GroupedExperts

from polycom import MLP
from polycom.compare.arms import parse_arm
from polycom.models.moe import Experts
from polycom.modules import get_activation

D = 16  # model width of the unit tests
SWIGLU_H = 48  # the SwiGLU hidden width being replaced (ungated: 72)
NUM_EXPERTS = 4
EXPERT_H = 12  # SwiGLU expert width (ungated: 18)

# The four arms the integration must match polycom on: plain PolyNorm and PolyReLU (ungated), gated PolyNorm
# (replace), and a general PolyCom arm with options.
ARMS = ["polynorm", "polyrelu", "polynorm_glu", "polycom:base=silu:composition=2:order=2"]


def stock_ffn_config(d: int = D, h: int = SWIGLU_H) -> FeedForward.Config:
    return FeedForward.Config(
        w1=Linear.Config(in_features=d, out_features=h),
        w2=Linear.Config(in_features=h, out_features=d),
        w3=Linear.Config(in_features=d, out_features=h),
    )


def stock_experts_config(d: int = D, h: int = EXPERT_H, e: int = NUM_EXPERTS) -> GroupedExperts.Config:
    init = {name: torch.nn.init.normal_ for name in ("w1_EFD", "w2_EDF", "w3_EFD")}  # as the model registries set
    return GroupedExperts.Config(dim=d, hidden_dim=h, num_experts=e, param_init=init)


def build_real(cfg, seed: int = 0, dtype=torch.float64):
    """Build `cfg` on the meta device (as torchtitan does), materialise on the CPU, init, then random
    weights (seeded) for every matrix and random coefficients, so a wrong mapping cannot hide behind init."""
    with torch.device("meta"):
        module = cfg.build()
    module.to_empty(device="cpu")
    with torch.no_grad():
        module.init_states()
    module = module.to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if name.startswith("act.") else 0.3  # coefficients around 0.5, matrices std 0.3
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * scale)
    return module


def reference_mlp(ffn, dtype=torch.float64) -> MLP:
    """polycom's MLP with the weights of the torchtitan `PolyComFeedForward` `ffn`."""
    arm = parse_arm(ffn.act.activation)
    h = ffn.w1.out_features
    mlp = MLP(ffn.w1.in_features, arm.activation, hidden_size=h, activation_kwargs=arm.options).to(dtype)
    with torch.no_grad():
        if ffn.mode == "ungated":
            mlp.up_proj.weight.copy_(ffn.w1.weight)
        else:
            mlp.gate_proj.weight.copy_(ffn.w1.weight)
            mlp.up_proj.weight.copy_(ffn.w3.weight)
        mlp.down_proj.weight.copy_(ffn.w2.weight)
        for name, p in mlp.act.named_parameters():
            p.copy_(getattr(ffn.act, name))
    return mlp


def reference_experts(experts, dtype=torch.float64):
    """(polycom `Experts`, its activation or ModuleList) with the weights of `PolyComGroupedExperts` `experts`."""
    arm = parse_arm(experts.act.activation)
    e, h, d = experts.w1_EFD.shape
    gated = experts.mode == "replace"
    ref = Experts(e, d, h, gated).to(dtype)
    with torch.no_grad():
        if gated:
            ref.gate_proj.copy_(experts.w1_EFD)
            ref.up_proj.copy_(experts.w3_EFD)
        else:
            ref.up_proj.copy_(experts.w1_EFD)
        ref.down_proj.copy_(experts.w2_EDF)
    if experts.shared_coefficients:
        act = get_activation(arm.activation, **arm.options).to(dtype)
        with torch.no_grad():
            for name, p in act.named_parameters():
                p.copy_(getattr(experts.act, name))
    else:
        act = torch.nn.ModuleList(get_activation(arm.activation, **arm.options) for _ in range(e)).to(dtype)
        with torch.no_grad():
            for i, a in enumerate(act):
                for name, p in a.named_parameters():
                    p.copy_(getattr(experts.act, name)[i])
    return ref, act


def routed_tokens(counts: list[int], d: int = D, padding: int = 0, seed: int = 1, dtype=torch.float64):
    """Expert-sorted token rows (sum(counts) + padding, d) and the counts tensor."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts) + padding, d, generator=gen, dtype=dtype)
    return x, torch.tensor(counts, dtype=torch.int64)
