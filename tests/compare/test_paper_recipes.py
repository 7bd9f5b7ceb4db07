"""The paper-scale configs (configs/paper-1b.toml, configs/paper-moe-1b-7b.toml) and the options they use:
token counts, OLMoE's truncated init, weight-decay groups and schedule length, Megatron's dropout."""

import math
from pathlib import Path

import pytest
import torch

from polycom.models import ModelConfig, build_model
from polycom.train.config import load_config
from polycom.train.optim import build_optimizer
from polycom.train.schedule import WarmupCosine

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def global_tokens_per_step(cfg, ranks: int) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * ranks * cfg.seq_len


def test_paper_1b_trains_the_papers_250b_tokens():
    cfg = load_config(CONFIGS / "paper-1b.toml")
    per_step = global_tokens_per_step(cfg, ranks=8)
    assert per_step == 64 * 4096 == 262_144
    assert abs(cfg.train.steps * per_step - 250e9) < per_step
    assert abs(381_470 * per_step - 100e9) < per_step  # the official script's 100B (documented override)
    assert "--train.steps=381470" in (CONFIGS / "paper-1b.toml").read_text()
    assert cfg.model.attention_dropout == cfg.model.hidden_dropout == 0.0  # Megatron's dropout is an option


def test_paper_moe_recipe_follows_olmoe():
    cfg = load_config(CONFIGS / "paper-moe-1b-7b.toml")
    per_step = global_tokens_per_step(cfg, ranks=8)
    assert per_step == 1024 * 4096
    assert abs(cfg.train.steps * per_step - 200e9) < per_step
    assert abs(cfg.optim.schedule_steps * per_step - 5e12) < per_step  # t_max
    o = cfg.optim
    assert (o.lr, o.warmup_steps, o.weight_decay, o.decay_vectors) == (4e-4, 2500, 0.1, True)
    assert (cfg.model.init_std, cfg.model.init_truncation) == (0.02, 3.0)
    assert cfg.model.moe.num_experts == 64 and cfg.model.expert_hidden_size() == 1536
    # the rate at the last step is still ~0.997 x peak: cosine over t_max, not over the run
    sched = WarmupCosine(o.lr, o.schedule_steps, o.warmup_steps, o.min_lr_ratio)
    p = (cfg.train.steps - 1 - o.warmup_steps) / (o.schedule_steps - o.warmup_steps)
    want = o.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    assert sched.lr(cfg.train.steps - 1) == pytest.approx(want) and want / o.lr > 0.996


def test_truncated_init_stays_within_three_std():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(d_model=128, n_layers=2, vocab_size=4096, init_std=0.02))
    torch.manual_seed(0)
    trunc = build_model(ModelConfig(d_model=128, n_layers=2, vocab_size=4096, init_std=0.02, init_truncation=3.0))
    assert plain.embed.weight.abs().max() > 3 * 0.02  # 524k normal draws: some beyond 3 std
    for name, w in trunc.named_parameters():
        if w.ndim == 2:
            std = 0.02 if "o_proj" not in name and "down_proj" not in name else 0.02 / math.sqrt(4)
            assert w.abs().max() <= 3 * std + 1e-7, name
    # std of N(0, s^2) truncated at +-3s is s * 0.98658...
    assert trunc.embed.weight.std().item() == pytest.approx(0.02 * 0.98658, rel=0.01)


def test_decay_vectors_moves_norms_but_never_polycom_coefficients():
    cfg = load_config(overrides=["--model.activation=polynorm", "--optim.decay_vectors=true"])
    model = build_model(cfg.model)
    decayed = {id(p) for p in build_optimizer(model, cfg, torch.device("cpu")).param_groups[0]["params"]}
    named = dict(model.named_parameters())
    assert id(named["layers.0.attn_norm.weight"]) in decayed
    assert id(named["layers.0.mlp.act.weight"]) not in decayed and id(named["layers.0.mlp.act.bias"]) not in decayed
    default = load_config(overrides=["--model.activation=polynorm"])
    decayed = {id(p) for p in build_optimizer(model, default, torch.device("cpu")).param_groups[0]["params"]}
    assert id(named["layers.0.attn_norm.weight"]) not in decayed


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    base = build_model(ModelConfig())
    with_dropout = build_model(ModelConfig(attention_dropout=0.1, hidden_dropout=0.1))
    with_dropout.load_state_dict(base.state_dict())
    ids = torch.randint(0, 256, (2, 16))
    base.train()
    with_dropout.train()
    assert not torch.equal(with_dropout(ids).logits, base(ids).logits)
    base.eval()
    with_dropout.eval()
    torch.testing.assert_close(with_dropout(ids).logits, base(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="attention_dropout"):
        ModelConfig(attention_dropout=1.0)
