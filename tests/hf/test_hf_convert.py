"""`polycom.hf.convert` on tiny Llama, Mistral, Qwen2, GPT-2 and GPT-NeoX models built from configs."""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import GATED, VOCAB, one_torch_thread_hf, polynorm_ref, tiny_models  # noqa: F401

import polycom.hf  # noqa: F401
from polycom import MLP, PolyNorm, PolyReLU
from polycom.errors import UserError
from polycom.hf import convert, find_mlps, load_converted

ARCHS = list(tiny_models())
D, H, LAYERS = 32, 64, 2  # tiny model width, MLP width (GPT-2: 4 d = 128), layers


def _hidden(arch: str) -> int:
    return 4 * D if arch == "gpt2" else H


def _mlp_params(arch: str) -> int:
    """Parameters of one original MLP, written out from the architecture (weights + biases)."""
    h = _hidden(arch)
    if arch in GATED:
        return 3 * D * h  # gate, up, down; no biases
    return 2 * D * h + h + D  # fc in + fc out with biases


@pytest.mark.parametrize("mode", ["replace", "ungated"])
@pytest.mark.parametrize("arch", ARCHS)
def test_convert_forward_backward_and_report(arch, mode, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_models()[arch]()
    before = sum(p.numel() for p in model.parameters())
    report = convert(model, "polynorm", mode)

    assert report.num_changed == LAYERS
    assert report.params_before == before
    h = _hidden(arch)
    for change in report.changes:
        assert change.params_before == _mlp_params(arch)
        assert change.kind == ("gated" if arch in GATED else "plain")
        if mode == "ungated" and arch in GATED:
            # plain PolyCom MLP at the parameter-matched width 3h/2: 2 d (3h/2) = 3 d h weights, + 4 coefficients
            assert change.hidden_after == 3 * h // 2
            assert change.params_after == 2 * D * (3 * h // 2) + 4
        else:
            assert change.hidden_after == h
            assert change.params_after == _mlp_params(arch) + 4
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after - report.params_before == sum(c.params_after - c.params_before for c in report.changes)
    assert "| module |" in report.to_markdown()

    ids = torch.randint(0, VOCAB, (2, 10))
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    polys = [m for m in model.modules() if isinstance(m, PolyNorm)]
    assert len(polys) == LAYERS and len({id(p) for p in polys}) == LAYERS
    for p in polys:
        assert p.weight.grad is not None and torch.isfinite(p.weight.grad).all() and p.weight.grad.abs().sum() > 0

    # save_pretrained / reload gives the same logits (Auto API when expressible, load_converted otherwise)
    model.eval()
    model.save_pretrained(tmp_path)
    expected = model(input_ids=ids).logits
    reloaded = load_converted(tmp_path)
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=0, atol=0)
    if report.auto_loadable:
        auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(auto(input_ids=ids).logits, expected, rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match="load_converted"):
            AutoModelForCausalLM.from_pretrained(tmp_path)


def test_replace_is_auto_loadable_and_ungated_is_not():
    llama = tiny_models()["llama"]()
    assert convert(llama, "polyrelu", "replace").auto_loadable
    assert llama.config.hidden_act == "polyrelu"
    llama2 = tiny_models()["llama"]()
    report = convert(llama2, "polynorm", "ungated")
    assert not report.auto_loadable and report.config_activation_field == "hidden_act"
    assert llama2.config.polycom_conversion["original_activation"] == {"hidden_act": "silu"}
    gpt2 = tiny_models()["gpt2"]()
    assert convert(gpt2, "polynorm", "replace").config_activation_field == "activation_function"


def test_replace_keeps_weights_and_computes_gated_polynorm():
    model = tiny_models()["qwen2"]()
    mlp = model.model.layers[0].mlp
    weights = {n: p.detach().clone() for n, p in mlp.named_parameters()}
    convert(model, "polynorm", "replace")
    assert isinstance(mlp.act_fn, PolyNorm)
    for n, p in weights.items():
        assert torch.equal(dict(mlp.named_parameters())[n], p)
    with torch.no_grad():
        mlp.act_fn.weight.copy_(torch.tensor([0.4, -0.2, 0.9]))
    x = torch.randn(3, 4, D)
    gate = x.double() @ weights["gate_proj.weight"].double().T
    up = x.double() @ weights["up_proj.weight"].double().T
    expected = (polynorm_ref(gate, mlp.act_fn.weight, mlp.act_fn.bias) * up) @ weights["down_proj.weight"].double().T
    torch.testing.assert_close(mlp(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_ungated_builds_plain_polycom_mlp_with_fresh_weights():
    model = tiny_models()["mistral"]()
    convert(model, "polyrelu", "ungated")
    mlp = model.model.layers[1].mlp
    assert isinstance(mlp, MLP) and mlp.gate_proj is None and isinstance(mlp.act, PolyReLU)
    assert mlp.up_proj.weight.shape == (96, D)
    assert abs(mlp.up_proj.weight.std().item() - model.config.initializer_range) < 0.005


def test_find_mlps_by_structure_not_names():
    from torch import nn

    class Odd(nn.Module):  # unusual attribute names, GPT-style
        def __init__(self):
            super().__init__()
            self.widen = nn.Linear(8, 24)
            self.nonlin = nn.GELU()
            self.drop = nn.Dropout(0.0)
            self.narrow = nn.Linear(24, 8)

        def forward(self, x):
            return self.narrow(self.drop(self.nonlin(self.widen(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.block = Odd()
            self.attn = nn.ModuleDict({"q": nn.Linear(8, 8), "k": nn.Linear(8, 8)})

    net = Net()
    found = find_mlps(net)
    assert [(f.name, f.kind, f.act_attr, f.d_model, f.hidden) for f in found] == [("block", "plain", "nonlin", 8, 24)]
    report = convert(net, "polynorm", "replace")
    assert report.num_changed == 1 and isinstance(net.block.nonlin, PolyNorm)
    assert net.block(torch.randn(2, 8)).shape == (2, 8)


def test_no_mlp_is_a_clear_error():
    from torch import nn

    with pytest.raises(UserError, match="no recognisable MLP in Sequential"):
        convert(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), "polynorm")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "polynrm"}, "unknown PolyCom activation 'polynrm'; choose one of: polynorm, polyrelu"),
        ({"activation": "polynorm", "mode": "swap"}, "unknown conversion mode 'swap'"),
        ({"activation": "polynorm", "order": 0}, "order must be a positive integer"),
    ],
)
def test_bad_arguments(kwargs, message):
    model = tiny_models()["llama"]()
    with pytest.raises(ValueError, match=message):
        convert(model, **kwargs)


def test_non_default_order_round_trips_through_load_converted(tmp_path):
    model = tiny_models()["gpt_neox"]()
    report = convert(model, "polynorm", "replace", order=2)
    assert not report.auto_loadable
    assert model.gpt_neox.layers[0].mlp.act.weight.shape == (2,)
    model.eval().save_pretrained(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 7))
    torch.testing.assert_close(load_converted(tmp_path)(input_ids=ids).logits, model(input_ids=ids).logits)


def test_convert_cli(tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM

    from polycom.cli import main

    model = tiny_models()["llama"]().eval()
    model.save_pretrained(tmp_path / "llama")
    args = ["convert", "--model", str(tmp_path / "llama"), "--activation", "polynorm"]
    assert main([*args, "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")]) == 0
    assert "2 MLPs changed" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_changed"] == 2 and report["params_after"] - report["params_before"] == 8
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert isinstance(converted.model.layers[0].mlp.act_fn, PolyNorm)
    # weights kept: with the activation swapped back to the original the logits are unchanged
    ids = torch.randint(0, VOCAB, (1, 6))
    for layer in converted.model.layers:
        layer.mlp.act_fn = torch.nn.SiLU()
    torch.testing.assert_close(converted.eval()(ids).logits, model(ids).logits)

    # ungated on an already converted folder, then bad inputs
    assert main(["convert", "--model", str(tmp_path / "out"), "--out", str(tmp_path / "ug"), "--mode", "ungated"]) == 0
    assert isinstance(load_converted(tmp_path / "ug").model.layers[0].mlp, MLP)
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "notamodel").mkdir()
    assert main(["convert", "--model", str(tmp_path / "notamodel"), "--out", str(tmp_path / "x")]) == 2
    assert "not a Hugging Face model folder (no config.json)" in capsys.readouterr().err
    assert (
        main(["convert", "--model", str(tmp_path / "llama"), "--out", str(tmp_path / "y"), "--activation", "gelu"]) == 2
    )
    assert "unknown PolyCom activation 'gelu'" in capsys.readouterr().err


@pytest.mark.parametrize(("activation", "mode"), [("swiglu", "replace"), ("swiglu", "ungated"), ("gelu", "replace")])
def test_convert_polycom_model_is_recorded_natively(activation, mode, tmp_path):
    from transformers import AutoModelForCausalLM

    from polycom import PolyNormGated
    from polycom.hf import PolyComConfig, PolyComForCausalLM

    model = PolyComForCausalLM(
        PolyComConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, activation=activation
        )
    ).eval()
    report = convert(model, "polynorm", mode)
    assert report.auto_loadable and report.config_activation_field == "activation"
    gated = activation == "swiglu" and mode == "replace"
    assert model.config.activation == ("polynorm_glu" if gated else "polynorm")
    act = model.model.layers[0].mlp.act
    assert type(act) is (PolyNormGated if gated else PolyNorm)
    ids = torch.randint(0, VOCAB, (2, 7))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
