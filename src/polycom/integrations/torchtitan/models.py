"""torchtitan model configs built from polycom's `ModelConfig`: the same decoder, so a checkpoint exports exactly.

`decoder_config(mc)` gives a torchtitan ``Qwen3Model.Config`` (torchtitan's decoder with optional MoE
blocks) with polycom's architecture: RMSNorm pre-norm blocks, grouped-query attention with rotate-half
RoPE (theta ``mc.rope_theta``, no scaling), separate q / kv projections, the MLP or MoE of ``mc``, and
polycom's init (normal ``init_std``, truncated at ``init_truncation`` std; the attention output and MLP /
expert down projections ``init_std / sqrt(2 n_layers)``; coefficients 1/r and 0). The MLPs are built as
torchtitan's SwiGLU at the SwiGLU width; for a PolyCom activation `activation_overrides` names the
override factories (and their kwargs) that turn them into polycom's (the parameter-matched widths
follow from the factory), so the registry and a user's ``--override.imports`` take one path.

Two torchtitan choices differ from polycom's defaults and are kept, because torchtitan 0.3.0 has no
alternative; `polycom_twin` gives the polycom `ModelConfig` that computes exactly what the torchtitan
model computes (what the export writes):

* QK-norm (``mc.qk_norm``, the paper's MoE): torchtitan normalises each head's q and k over ``head_dim``
  (``qk_norm_per_head`` in polycom); OLMoE and polycom's default normalise the whole projection;
* MoE routing: softmax over experts, top-k, no renormalisation of the k weights (OLMoE), and
  torchtitan's auxiliary-loss-free load balancing (an expert bias added for the top-k choice only,
  updated at rate ``load_balance_coeff`` 1e-3; ``MoEConfig.expert_bias`` in polycom) in place of OLMoE's
  load-balancing and z losses, which torchtitan 0.3.0 does not implement.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn as nn
from torchtitan.components.optimizer import register_moe_load_balancing_hook
from torchtitan.distributed.pipeline_parallel import pipeline_llm
from torchtitan.models.common import CosSinRoPE, Embedding, Linear
from torchtitan.models.common.config_utils import (
    get_attention_config,
    make_ffn_config,
    make_gqa_config,
    make_moe_config,
    make_routed_experts_config,
    make_router_config,
)
from torchtitan.models.common.nn_modules import RMSNorm
from torchtitan.models.qwen3.model import Qwen3Model, Qwen3TransformerBlock
from torchtitan.models.qwen3.parallelize import parallelize_qwen3
from torchtitan.protocols.model_spec import ModelSpec

from polycom.models.config import ModelConfig
from polycom.modules import gated_hidden_size

FFN_OVERRIDE = "polycom.integrations.torchtitan.feed_forward.polycom_feed_forward"
EXPERTS_OVERRIDE = "polycom.integrations.torchtitan.experts.polycom_grouped_experts"
_MOE_LOAD_BALANCE_COEFF = 1e-3  # torchtitan's default auxiliary-loss-free expert-bias update rate


def _normal(std: float, truncation: float) -> Callable:
    if truncation > 0:
        return partial(nn.init.trunc_normal_, std=std, a=-truncation * std, b=truncation * std)
    return partial(nn.init.normal_, std=std)


def swiglu_widths(mc: ModelConfig) -> tuple[int, int]:
    """(dense SwiGLU width, SwiGLU expert width; 0 without MoE) of `mc`: what the PolyCom overrides start from.

    Only the parameter-matched rule is supported: an explicit ``hidden_size`` / ``expert_hidden_size``
    would not say what the SwiGLU model it is matched to looks like."""
    if mc.hidden_size is not None or (mc.moe is not None and mc.moe.expert_hidden_size is not None):
        raise ValueError(
            "torchtitan configs use the parameter-matched widths: leave hidden_size / expert_hidden_size unset"
        )
    swiglu = ModelConfig.from_dict(mc.to_dict() | {"activation": "swiglu", "activation_options": {}})
    return gated_hidden_size(mc.d_model, mc.multiple_of), swiglu.expert_hidden_size() if mc.moe is not None else 0


def decoder_config(mc: ModelConfig, *, attn_backend: str = "flex") -> Qwen3Model.Config:
    """torchtitan's decoder config with polycom's architecture `mc` and SwiGLU MLPs (module docstring)."""
    if mc.d_model % mc.n_heads:
        raise ValueError(f"d_model {mc.d_model} is not divisible by n_heads {mc.n_heads}")
    head_dim = mc.d_model // mc.n_heads
    init = {"weight": _normal(mc.init_std, mc.init_truncation), "bias": nn.init.zeros_}
    out_init = {"weight": _normal(mc.init_std / (2 * mc.n_layers) ** 0.5, mc.init_truncation), "bias": nn.init.zeros_}
    ones = {"weight": nn.init.ones_}

    def norm(width: int) -> RMSNorm.Config:
        return RMSNorm.Config(normalized_shape=width, eps=mc.norm_eps, param_init=ones)

    dense_width, expert_width = swiglu_widths(mc)
    layers = []
    for _ in range(mc.n_layers):
        attention = make_gqa_config(
            dim=mc.d_model,
            n_heads=mc.n_heads,
            n_kv_heads=mc.kv_heads,
            wqkv_param_init=init,
            wo_param_init=out_init,
            inner_attention=get_attention_config(attn_backend),
            fuse_qkv=False,
            rope=CosSinRoPE.Config(dim=head_dim, max_seq_len=mc.max_seq_len, theta=mc.rope_theta),
            qk_norm=norm(head_dim) if mc.qk_norm else None,
        )
        block = dict(attention=attention, attention_norm=norm(mc.d_model), ffn_norm=norm(mc.d_model))
        if mc.moe is None:
            block["feed_forward"] = make_ffn_config(
                dim=mc.d_model, hidden_dim=dense_width, w1_param_init=init, w2w3_param_init=out_init
            )
        else:
            experts_init = {"w1_EFD": init["weight"], "w3_EFD": init["weight"], "w2_EDF": out_init["weight"]}
            block["moe"] = make_moe_config(
                num_experts=mc.moe.num_experts,
                router=make_router_config(
                    dim=mc.d_model,
                    num_experts=mc.moe.num_experts,
                    gate_param_init=init,
                    top_k=mc.moe.top_k,
                    score_func="softmax",
                    route_norm=mc.moe.normalize_top_k,
                ),
                routed_experts=make_routed_experts_config(
                    dim=mc.d_model,
                    hidden_dim=expert_width,
                    num_experts=mc.moe.num_experts,
                    top_k=mc.moe.top_k,
                    param_init=experts_init,
                    comm_backend="standard",
                ),
                load_balance_coeff=_MOE_LOAD_BALANCE_COEFF,
            )
        layers.append(Qwen3TransformerBlock.Config(**block))
    embed_init = {"weight": _normal(mc.init_std, mc.init_truncation)}
    return Qwen3Model.Config(
        dim=mc.d_model,
        vocab_size=mc.vocab_size,
        enable_weight_tying=mc.tie_embeddings,
        tok_embeddings=Embedding.Config(num_embeddings=mc.vocab_size, embedding_dim=mc.d_model, param_init=embed_init),
        norm=norm(mc.d_model),
        lm_head=Linear.Config(in_features=mc.d_model, out_features=mc.vocab_size, param_init=init),
        layers=layers,
    )


def model_spec(mc: ModelConfig, flavor: str, *, attn_backend: str = "flex") -> ModelSpec:
    """A torchtitan `ModelSpec` for `mc` (parallelised, pipelined and balanced as torchtitan's Qwen3)."""
    return ModelSpec(
        name="polycom",
        flavor=flavor,
        model=decoder_config(mc, attn_backend=attn_backend),
        parallelize_fn=parallelize_qwen3,
        pipelining_fn=pipeline_llm,
        post_optimizer_build_fn=register_moe_load_balancing_hook if mc.moe is not None else None,
        state_dict_adapter=None,
    )


def polycom_twin(mc: ModelConfig) -> ModelConfig:
    """The polycom `ModelConfig` of the model `decoder_config(mc)` builds: `mc` with per-head QK-norm (where it has
    QK-norm) and a router expert bias (MoE): the same parameters and the same function (module docstring)."""
    d = mc.to_dict() | {"qk_norm_per_head": mc.qk_norm}
    if mc.moe is not None:
        d["moe"] = d["moe"] | {"expert_bias": True}
    return ModelConfig.from_dict(d)


def activation_overrides(mc: ModelConfig) -> list[str | tuple[str, dict]]:
    """The ``override.imports`` entries that give `mc`'s activation (none for SwiGLU)."""
    if mc.activation_name == "swiglu":
        return []
    arm = ":".join([mc.activation_name] + [f"{k}={_toml(v)}" for k, v in mc.activation_kwargs().items()])
    if mc.moe is None:
        return [(FFN_OVERRIDE, {"activation": arm})]
    return [(EXPERTS_OVERRIDE, {"activation": arm, "shared_coefficients": mc.moe.shared_coefficients})]


def _toml(value) -> str:
    """An option value as the arm grammar reads it (TOML literals: true / false, numbers, bare strings)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
