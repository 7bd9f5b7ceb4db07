"""`hidden_act="polynorm"` / `"polyrelu"` in stock transformers configs after `import polycom.hf`."""

from __future__ import annotations

import torch
from hf_tiny_models import VOCAB, one_torch_thread_hf, one_trainer_step, polynorm_ref, polyrelu_ref  # noqa: F401

import polycom.hf  # noqa: F401  (registers the activation names)
from polycom import PolyNorm, PolyReLU


def _tiny_llama(hidden_act: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act=hidden_act,
    )
    return LlamaForCausalLM(cfg)


def test_names_are_registered_in_both_tables():
    from transformers.activations import ACT2CLS, ACT2FN, get_activation

    for name, cls in (("polynorm", PolyNorm), ("polyrelu", PolyReLU)):
        assert name in ACT2CLS and name in ACT2FN
        a, b = ACT2FN[name], get_activation(name)
        assert type(a) is cls and type(b) is cls
        assert a is not b  # a fresh module (own coefficients) per lookup


def test_llama_polynorm_has_per_layer_coefficients_in_state_dict():
    model = _tiny_llama("polynorm")
    sd = model.state_dict()
    for i in range(3):
        assert sd[f"model.layers.{i}.mlp.act_fn.weight"].shape == (3,)
        assert sd[f"model.layers.{i}.mlp.act_fn.bias"].shape == (1,)
    acts = [layer.mlp.act_fn for layer in model.model.layers]
    assert len({id(a.weight) for a in acts}) == 3
    # the init (1/3, 0) must survive transformers' post_init
    torch.testing.assert_close(acts[0].weight.detach(), torch.full((3,), 1 / 3))
    torch.testing.assert_close(acts[0].bias.detach(), torch.zeros(1))


def test_llama_mlp_is_gated_polynorm_against_formula():
    model = _tiny_llama("polynorm")
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        mlp.act_fn.weight.copy_(torch.tensor([0.5, -0.3, 0.8]))
        mlp.act_fn.bias.fill_(0.1)
    x = torch.randn(2, 5, 32)
    gate, up = x.double() @ mlp.gate_proj.weight.double().T, x.double() @ mlp.up_proj.weight.double().T
    expected = (polynorm_ref(gate, mlp.act_fn.weight, mlp.act_fn.bias) * up) @ mlp.down_proj.weight.double().T
    torch.testing.assert_close(mlp(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_gpt2_activation_function_polyrelu_is_plain_form():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, activation_function="polyrelu")
    model = GPT2LMHeadModel(cfg)
    mlp = model.transformer.h[0].mlp
    mlp.eval()
    assert isinstance(mlp.act, PolyReLU)
    with torch.no_grad():
        mlp.act.weight.copy_(torch.tensor([0.2, 0.7, -0.4]))
    x = torch.randn(3, 32)
    h = x.double() @ mlp.c_fc.weight.double() + mlp.c_fc.bias.double()
    expected = polyrelu_ref(h, mlp.act.weight, mlp.act.bias) @ mlp.c_proj.weight.double() + mlp.c_proj.bias.double()
    torch.testing.assert_close(mlp(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_trainer_one_step_updates_polynorm_coefficients(tmp_path):

    model = _tiny_llama("polynorm")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "act_fn" in n}
    assert torch.isfinite(torch.tensor(one_trainer_step(model, tmp_path)))
    after = dict(model.named_parameters())
    assert len(before) == 6
    for name, old in before.items():
        assert not torch.equal(after[name].detach(), old), f"{name} was not updated by the optimizer step"
