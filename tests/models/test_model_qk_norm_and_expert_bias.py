"""Per-head QK-norm and the router's expert bias (the two torchtitan-model features polycom's model carries so
that torchtitan checkpoints export exactly), against formulas written here."""

from __future__ import annotations

import pytest
import torch

from polycom.models import ModelConfig, MoEConfig, build_model
from polycom.models.moe import MoEMLP


def _rms(u: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return u * torch.rsqrt(u.square().mean(-1, keepdim=True) + eps) * weight


def test_per_head_qk_norm_normalises_each_head_over_head_dim():
    cfg = ModelConfig(
        vocab_size=32, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, qk_norm=True, qk_norm_per_head=True
    )
    attn = build_model(cfg).double().layers[0].attn
    assert attn.q_norm.weight.shape == (8,) and attn.k_norm.weight.shape == (8,)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    cos, sin = torch.ones(5, 8, dtype=torch.float64), torch.zeros(5, 8, dtype=torch.float64)  # RoPE off
    q, k, _ = attn.project_qkv(x, cos, sin)
    q_want = _rms(attn.q_proj(x).view(2, 5, 4, 8), attn.q_norm.weight, cfg.norm_eps).transpose(1, 2)
    k_want = _rms(attn.k_proj(x).view(2, 5, 2, 8), attn.k_norm.weight, cfg.norm_eps).transpose(1, 2)
    torch.testing.assert_close(q, q_want, rtol=1e-5, atol=1e-6)  # RMSNorm computes in fp32
    torch.testing.assert_close(k, k_want, rtol=1e-5, atol=1e-6)
    whole = build_model(ModelConfig(**(cfg.to_dict() | {"qk_norm_per_head": False}))).layers[0].attn
    assert whole.q_norm.weight.shape == (32,)  # the OLMoE form normalises the whole projection


def test_per_head_needs_qk_norm():
    with pytest.raises(ValueError, match="qk_norm_per_head needs qk_norm"):
        ModelConfig(qk_norm_per_head=True)


def test_expert_bias_moves_the_choice_not_the_weights():
    cfg = ModelConfig(d_model=16, n_heads=2, moe=MoEConfig(num_experts=4, top_k=2, expert_bias=True))
    moe = MoEMLP(cfg).double()
    assert "expert_bias" in moe.state_dict()  # saved with the model (a torchtitan checkpoint carries it)
    x = torch.randn(6, 16, dtype=torch.float64)
    _, probs, weights, idx = moe.route(x)
    assert torch.equal(idx, probs.topk(2, dim=-1).indices)  # zero bias: plain top-k
    with torch.no_grad():
        moe.expert_bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0]))  # expert 3 always chosen
    _, probs, weights, idx = moe.route(x)
    assert (idx == 3).any(dim=-1).all()
    torch.testing.assert_close(weights, probs.gather(-1, idx))  # the weights are the unbiased probabilities
    no_bias = MoEMLP(ModelConfig(d_model=16, n_heads=2, moe=MoEConfig(num_experts=4, top_k=2)))
    assert no_bias.expert_bias is None and "expert_bias" not in no_bias.state_dict()
