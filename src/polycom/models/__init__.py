"""Decoder-only language models with any registered MLP activation (dense Llama-style or OLMoE-style MoE).

    from polycom.models import ModelConfig, MoEConfig, build_model, get_preset
    model = build_model(get_preset("tiny", activation="polynorm"))
    out = model(input_ids, targets)          # LMOutput: logits, loss, ce_loss, aux_loss, tokens_per_expert
    model.generate(prompt_ids, 50, temperature=0.8, top_k=40)

See docs/models.md for the architecture, parameter-matching rules and state-dict names.
"""

from polycom.models.attention import Attention, KVCache
from polycom.models.config import ModelConfig, MoEConfig
from polycom.models.generation import generate, sample_next
from polycom.models.layers import RMSNorm, apply_rope, rope_tables
from polycom.models.moe import Experts, MoEMLP, RouterStats, load_balancing_loss, router_z_loss
from polycom.models.presets import PRESETS, get_preset, preset_names
from polycom.models.transformer import Block, LMOutput, PolyComLM, build_model

__all__ = [
    "PRESETS",
    "Attention",
    "Block",
    "Experts",
    "KVCache",
    "LMOutput",
    "ModelConfig",
    "MoEConfig",
    "MoEMLP",
    "PolyComLM",
    "RMSNorm",
    "RouterStats",
    "apply_rope",
    "build_model",
    "generate",
    "get_preset",
    "load_balancing_loss",
    "preset_names",
    "rope_tables",
    "router_z_loss",
    "sample_next",
]
