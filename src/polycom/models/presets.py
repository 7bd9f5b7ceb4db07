"""Named model sizes. `get_preset(name)` returns a fresh copy (safe to modify).

All presets use SwiGLU by default; set ``activation`` (e.g. ``dataclasses.replace(cfg,
activation="polynorm")``) to compare activations at matched parameter counts.

| preset | layers | d | heads | vocab | seq | notes |
|---|---|---|---|---|---|---|
| tiny | 2 | 128 | 4 | 256 (bytes) | 256 | CPU demo |
| small | 6 | 512 | 8 | 8192 | 512 | ~20M non-embedding |
| 125m | 12 | 768 | 12 | 32000 | 1024 | |
| 350m | 24 | 1024 | 16 | 32000 | 1024 | |
| anchor | 8 | 1024 | 16 | 32000 | 1024 | reference-measurement config, docs/measurements.md (~165M) |
| paper-1b | 24 | 2048 | 16 | 32000 | 4096 | dense run of the paper (~1.35B incl. embeddings) |
| moe-tiny | 2 | 128 | 4 | 256 | 256 | 8 experts, top-2 |
| paper-moe-1b-7b | 16 | 2048 | 16 | 50304 | 4096 | 64 experts, top-8, QK-norm (OLMoE-1B-7B) |
"""

from __future__ import annotations

import copy

from polycom.models.config import ModelConfig, MoEConfig

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, max_seq_len=256),
    "small": ModelConfig(vocab_size=8192, d_model=512, n_layers=6, n_heads=8, max_seq_len=512),
    "125m": ModelConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024),
    "350m": ModelConfig(vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024),
    "anchor": ModelConfig(vocab_size=32000, d_model=1024, n_layers=8, n_heads=16, max_seq_len=1024),
    "paper-1b": ModelConfig(vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, max_seq_len=4096),
    "moe-tiny": ModelConfig(
        vocab_size=256, d_model=128, n_layers=2, n_heads=4, max_seq_len=256, moe=MoEConfig(num_experts=8, top_k=2)
    ),
    "paper-moe-1b-7b": ModelConfig(
        vocab_size=50304,
        d_model=2048,
        n_layers=16,
        n_heads=16,
        max_seq_len=4096,
        qk_norm=True,
        moe=MoEConfig(num_experts=64, top_k=8, lb_loss_coef=0.01, z_loss_coef=0.001),
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str, **overrides) -> ModelConfig:
    """A copy of preset `name` with optional field overrides; unknown name -> ValueError listing presets."""
    if not isinstance(name, str) or name.strip().lower() not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; available presets: {', '.join(PRESETS)}")
    cfg = copy.deepcopy(PRESETS[name.strip().lower()])
    if overrides:
        d = cfg.to_dict()
        d.update(overrides)
        cfg = ModelConfig.from_dict(d)
    return cfg
