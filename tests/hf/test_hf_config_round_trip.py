"""`PolyComConfig` carries every `ModelConfig` field that changes the model, and the HF model applies it.

A ModelConfig with every field off its default (dense and MoE) survives ModelConfig -> PolyComConfig ->
ModelConfig exactly, also through config.json (to_dict / JSON, save_pretrained / from_pretrained); the
fields are listed from `dataclasses.fields`, so a new field fails here until it is carried or listed in
NOT_STORED with its reason. The HF model built from the converted config has the harness model's module
settings, truncated init, dropout draws and, after save/load, its logits with non-default activation options.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hf_tiny_models import one_torch_thread_hf  # noqa: F401  (autouse fixture)

import polycom.hf  # noqa: F401
from polycom.hf import PolyComConfig, PolyComForCausalLM
from polycom.hf.export import harness_to_hf
from polycom.models import ModelConfig, MoEConfig, build_model

GENERAL_POLYCOM = {"base": "silu", "composition": 2, "normalize": True, "eps": 1e-3}

# every ModelConfig field but moe, off its default and consistent with each other
MODEL_FIELDS = dict(
    vocab_size=80,
    d_model=48,
    n_layers=3,
    n_heads=6,
    n_kv_heads=2,
    max_seq_len=96,
    activation="polycom",
    activation_order=2,
    activation_options=GENERAL_POLYCOM,
    hidden_size=72,
    multiple_of=32,
    tie_embeddings=True,
    rope_theta=5e5,
    norm_eps=1e-6,
    init_std=0.05,
    init_truncation=2.5,
    attention_dropout=0.1,
    hidden_dropout=0.2,
    qk_norm=True,
    qk_norm_per_head=True,
    fused_mlp=False,
)
MOE_FIELDS = dict(
    num_experts=4,
    top_k=3,
    expert_hidden_size=40,
    shared_coefficients=False,
    normalize_top_k=True,
    lb_loss_coef=0.02,
    z_loss_coef=0.003,
    grouped_mm=True,
    expert_bias=True,
)
# fields PolyComConfig does not store, with the reason; they come back at their default
NOT_STORED = {
    "multiple_of": "only rounds the parameter-matched widths, which PolyComConfig stores resolved",
}


def _config(moe: bool) -> ModelConfig:
    return ModelConfig(**MODEL_FIELDS, moe=MoEConfig(**MOE_FIELDS) if moe else None)


def _typed(value):
    """`value` with every leaf as (type name, value): True vs 1 or 2 vs 2.0 count as different."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def _expected(cfg: ModelConfig) -> dict:
    d = cfg.to_dict()
    defaults = ModelConfig().to_dict()
    d.update({name: defaults[name] for name in NOT_STORED})
    return d


def test_every_field_is_set_off_its_default_or_listed():
    """A new ModelConfig / MoEConfig field must get a value here (and round-trip) or a NOT_STORED reason."""
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert model_names == set(MODEL_FIELDS) | {"moe"}, "add the new field to MODEL_FIELDS (or NOT_STORED)"
    assert {f.name for f in dataclasses.fields(MoEConfig)} == set(MOE_FIELDS), "add the new field to MOE_FIELDS"
    assert set(NOT_STORED) <= model_names
    for defaults, values in ((ModelConfig(), MODEL_FIELDS), (MoEConfig(), MOE_FIELDS)):
        for name, value in values.items():
            assert getattr(defaults, name) != value, f"{name} is at its default: the round trip would prove nothing"


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_round_trip_is_exact(moe, tmp_path):
    cfg = _config(moe)
    expected = _typed(_expected(cfg))
    hf_config = PolyComConfig.from_model_config(cfg)
    assert _typed(hf_config.to_model_config().to_dict()) == expected
    # config.json: plain JSON text, and save_pretrained / from_pretrained
    via_json = PolyComConfig.from_dict(json.loads(json.dumps(hf_config.to_dict())))
    assert _typed(via_json.to_model_config().to_dict()) == expected
    hf_config.save_pretrained(tmp_path)
    assert _typed(PolyComConfig.from_pretrained(tmp_path).to_model_config().to_dict()) == expected
    # the harness -> HF model conversion keeps them too (export goes through it)
    assert _typed(harness_to_hf(build_model(cfg)).config.to_model_config().to_dict()) == expected


def _settings(module: torch.nn.Module) -> dict:
    """The plain settings a module keeps as attributes (eps, dropout p, fused, base, ...)."""
    scalars = (int, float, str, bool)
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, scalars)}


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_built_hf_model_has_the_harness_module_settings(moe):
    """Every harness module's settings (activation options, dropout, fused, grouped_mm, ...) and parameter
    shapes are the same in PolyComForCausalLM built from the converted config."""
    cfg = _config(moe)
    harness = build_model(cfg)
    hf = PolyComForCausalLM(PolyComConfig.from_model_config(cfg))
    compared = 0
    for name, module in harness.named_modules():
        if not name:
            continue
        mine = hf.get_submodule(name if name.startswith("lm_head") else "model." + name)
        assert _settings(mine) | _settings(module) == _settings(mine), name
        compared += 1
    assert compared > 10
    hf_shapes = {k: v.shape for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    assert hf_shapes == {("model." + k): v.shape for k, v in harness.state_dict().items()}
    acts = [m for m in hf.modules() if type(m).__name__ == "PolyCom"]
    assert len(acts) == (3 * 4 if moe else 3)
    assert {(a.order, a.base, a.composition, a.normalize, a.eps) for a in acts} == {(2, "silu", 2, True, 1e-3)}


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_initializer_truncation_bounds_every_normal_draw(moe):
    """k = 1.5: every drawn matrix lies in [-k s, k s] for its std s; without truncation some do not."""
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="polynorm", init_std=0.02)
    if moe:
        base.update(num_experts=4, num_experts_per_tok=2)
    out_std = 0.02 / 2.0  # std / sqrt(2 L)
    torch.manual_seed(0)
    for k in (1.5, 0.0):
        model = PolyComForCausalLM(PolyComConfig(initializer_truncation=k, **base))
        outside = []
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            std = out_std if ("o_proj" in name or "down_proj" in name) else 0.02
            outside.append((p.abs() > 1.5 * std * (1 + 1e-6)).any().item())
        assert not any(outside) if k else all(outside)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_training_dropout_matches_the_harness(moe):
    """attention_dropout 0.1, hidden_dropout 0.2: in training the HF model draws the harness model's masks
    (same seed, same logits); in eval no dropout."""
    cfg = ModelConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        activation="polynorm",
        attention_dropout=0.1,
        hidden_dropout=0.2,
    )
    if moe:
        cfg.moe = MoEConfig(num_experts=4, top_k=2)
    harness = build_model(cfg)
    hf = harness_to_hf(harness)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    harness.train()
    hf.train()
    torch.manual_seed(5)
    expected = harness(ids).logits
    torch.manual_seed(5)
    got = hf(ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        eval_logits = hf.eval()(ids).logits
    assert (got - eval_logits).abs().max() > 1e-2  # the masks really changed the outputs


def test_activation_options_must_be_json_values():
    with pytest.raises(ValueError, match="activation_options must map option names to str, int, float or bool"):
        PolyComConfig(activation="polynorm", activation_options={"eps": torch.tensor(1e-3)})
    with pytest.raises(ValueError, match="does not take base"):
        PolyComConfig(activation="polynorm", activation_options={"base": "silu"})


@pytest.mark.parametrize(
    "activation, options",
    [("polynorm", {"eps": 1e-3}), ("polycom", GENERAL_POLYCOM)],
    ids=["polynorm-eps", "general-polycom"],
)
def test_saved_model_with_activation_options_gives_the_harness_logits(activation, options, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(
        vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation=activation, activation_options=options
    )
    torch.manual_seed(0)
    harness = build_model(cfg).eval()
    harness_to_hf(harness).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_options"] == options
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = harness(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=1e-6)
        # the options matter: the same weights with the default options give other logits
        plain = build_model(dataclasses.replace(cfg, activation_options={})).eval()
        plain.load_state_dict(harness.state_dict())
        assert (plain(ids).logits - expected).abs().max() > 1e-2


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_init_weights_resets_a_general_polycoms_prelu_slope(moe):
    """`_init_weights` (transformers' init of a new or partly loaded model) gives the general PolyCom with base
    prelu the harness init: coefficients 1/r, 0 and the PReLU slope 0.25."""
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, activation="polycom")
    if moe:
        base.update(num_experts=4, num_experts_per_tok=2)
    model = PolyComForCausalLM(PolyComConfig(activation_options={"base": "prelu"}, **base))
    acts = [m for m in model.modules() if type(m).__name__ == "PolyCom"]
    assert acts and all(a.base == "prelu" for a in acts)
    with torch.no_grad():
        for act in acts:
            act.prelu_weight.fill_(-3.0)
            act.weight.fill_(7.0)
    model.apply(model._init_weights)
    for act in acts:
        assert act.prelu_weight.tolist() == [0.25]
        torch.testing.assert_close(act.weight, torch.full_like(act.weight, 1 / 3))
