"""`PolyComConfig.fused_mlp`: a real config field that round-trips and switches the dense MLPs' fused path.

ModelConfig -> PolyComConfig -> ModelConfig, save_pretrained / from_pretrained and harness export keep
the value; the built MLP modules carry it; fused and unfused models with the same weights agree.
"""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import one_torch_thread_hf  # noqa: F401  (autouse fixture)

import polycom
import polycom.hf  # noqa: F401
from polycom.hf import PolyComConfig, PolyComForCausalLM
from polycom.hf.export import harness_to_hf, hf_to_harness
from polycom.models import ModelConfig, MoEConfig, build_model
from polycom.modules.polycom import PolyCoefficients

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def _mlp_flags(model: torch.nn.Module) -> list[bool]:
    """`.fused` of every dense `polycom.MLP` in a model (one per layer)."""
    return [m.fused for m in model.modules() if isinstance(m, polycom.MLP)]


def test_default_is_fused():
    assert PolyComConfig().fused_mlp is True
    assert PolyComConfig.from_model_config(ModelConfig()).fused_mlp is True
    assert _mlp_flags(PolyComForCausalLM(PolyComConfig(activation="polynorm", **TINY))) == [True, True]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("moe", [None, MoEConfig(num_experts=4, top_k=2)], ids=["dense", "moe"])
def test_model_config_round_trip_keeps_fused_mlp(fused, moe):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="polynorm", fused_mlp=fused, moe=moe)
    hf_config = PolyComConfig.from_model_config(cfg)
    assert hf_config.fused_mlp is fused
    assert hf_config.to_model_config().fused_mlp is fused
    assert PolyComConfig.from_dict(hf_config.to_dict()).fused_mlp is fused


@pytest.mark.parametrize("fused", [True, False])
def test_fused_mlp_is_applied_and_survives_save_pretrained(fused, tmp_path):
    from transformers import AutoModelForCausalLM

    model = PolyComForCausalLM(PolyComConfig(activation="polyrelu", fused_mlp=fused, **TINY))
    assert _mlp_flags(model) == [fused, fused]
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.fused_mlp is fused
    assert _mlp_flags(loaded) == [fused, fused]
    # a run-time choice, not part of the weights: a load-time override wins over the saved value
    flipped = AutoModelForCausalLM.from_pretrained(tmp_path, fused_mlp=not fused)
    assert _mlp_flags(flipped) == [not fused, not fused]


def test_harness_export_and_back_keep_unfused():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="swiglu", fused_mlp=False)
    hf = harness_to_hf(build_model(cfg))
    assert hf.config.fused_mlp is False and _mlp_flags(hf) == [False, False]
    back = hf_to_harness(hf)
    assert back.config.fused_mlp is False and _mlp_flags(back) == [False, False]


def _loss_and_grads(model: PolyComForCausalLM, ids: torch.Tensor):
    model.zero_grad()
    out = model(ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu", "polynorm_glu", "swiglu"])
def test_fused_and_unfused_models_agree(activation):
    """Same weights, fused_mlp True vs False: logits and every parameter gradient agree in fp32."""
    torch.manual_seed(0)
    fused = PolyComForCausalLM(PolyComConfig(activation=activation, **TINY)).train()
    with torch.no_grad():  # non-trivial PolyCom coefficients, so the coefficient gradients are tested too
        for i, m in enumerate(fused.modules()):
            if isinstance(m, PolyCoefficients):
                m.weight.add_(0.1 * (i + 1))
                m.bias.add_(0.05 * i)
    unfused = PolyComForCausalLM(PolyComConfig(activation=activation, fused_mlp=False, **TINY)).train()
    unfused.load_state_dict(fused.state_dict())
    assert _mlp_flags(fused) == [True, True] and _mlp_flags(unfused) == [False, False]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    logits_f, grads_f = _loss_and_grads(fused, ids)
    logits_u, grads_u = _loss_and_grads(unfused, ids)
    torch.testing.assert_close(logits_f, logits_u, rtol=0, atol=1e-5)
    assert grads_f.keys() == grads_u.keys()
    for name, g in grads_u.items():
        torch.testing.assert_close(grads_f[name], g, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
