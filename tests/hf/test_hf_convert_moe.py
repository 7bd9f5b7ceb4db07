"""`polycom.hf.convert` on stacked-expert MoE models (OLMoE, Mixtral, Qwen3-MoE, Qwen2-MoE) and fused gate_up (Phi-3)."""

from __future__ import annotations

import pytest
import torch
from hf_tiny_models import (  # noqa: F401
    EXPERT_HIDDEN,
    NUM_EXPERTS,
    VOCAB,
    one_torch_thread_hf,
    one_trainer_step,
    polynorm_ref,
    polyrelu_ref,
    tiny_moe_models,
)
from torch import nn

import polycom.hf  # noqa: F401
from polycom import MLP, PolyNorm, PolyReLU
from polycom.errors import UserError
from polycom.hf import convert, find_mlps, load_converted
from polycom.hf.experts import StackedExperts

D, LAYERS, R = 32, 2, 3
MOE_ARCHS = ["olmoe", "mixtral", "qwen3_moe", "qwen2_moe"]
SHARED_EXPERT_HIDDEN = 48  # Qwen2-MoE's gated shared expert (a dense MLP next to the experts)
VARIANTS = [("replace", False), ("replace", True), ("ungated", False)]


def _expert_block_params(hidden: int, gated: bool) -> int:
    """Weights of E stacked experts d -> hidden -> d, written out: gated (E, 2h, d) + (E, d, h), plain (E, h, d) + (E, d, h)."""
    return NUM_EXPERTS * (3 if gated else 2) * D * hidden


@pytest.mark.parametrize(("mode", "per_expert"), VARIANTS)
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_convert_moe_forward_backward_report_round_trip(arch, mode, per_expert, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_moe_models()[arch]()
    report = convert(model, "polynorm", mode, per_expert=per_expert)

    experts = [c for c in report.changes if c.num_experts]
    assert len(experts) == LAYERS and all(c.name.endswith("mlp.experts") for c in experts)
    sets = NUM_EXPERTS if per_expert else 1
    for c in experts:
        assert (c.kind, c.num_experts, c.coefficient_sets, c.d_model) == ("experts", NUM_EXPERTS, sets, D)
        assert c.params_before == _expert_block_params(EXPERT_HIDDEN, gated=True)
        if mode == "ungated":  # plain experts at 3h/2: 2 d (3h/2) = 3 d h weights per expert
            assert c.hidden_after == 3 * EXPERT_HIDDEN // 2
            assert c.params_after == _expert_block_params(3 * EXPERT_HIDDEN // 2, gated=False) + sets * (R + 1)
        else:
            assert c.hidden_after == EXPERT_HIDDEN and c.params_after == c.params_before + sets * (R + 1)
    dense = [c for c in report.changes if not c.num_experts]
    assert len(dense) == (LAYERS if arch == "qwen2_moe" else 0)  # Qwen2-MoE's shared expert
    assert all(c.kind == "gated" and c.hidden_before == SHARED_EXPERT_HIDDEN for c in dense)
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_after - report.params_before == sum(c.params_after - c.params_before for c in report.changes)
    assert f"{NUM_EXPERTS} ({sets} coefficient sets)" in report.to_markdown()
    assert f"({LAYERS} expert blocks, {LAYERS * NUM_EXPERTS} experts)" in report.to_markdown()

    ids = torch.randint(0, VOCAB, (2, 12))
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    polys = [m for m in model.modules() if isinstance(m, PolyNorm)]
    assert len(polys) == LAYERS * sets + len(dense)
    for p in polys:
        assert p.weight.grad is not None and torch.isfinite(p.weight.grad).all()
    # every shared coefficient set is used; per expert, at least the experts that got tokens
    assert all(p.weight.grad.abs().sum() > 0 for p in polys) or per_expert
    assert sum(int(p.weight.grad.abs().sum() > 0) for p in polys) >= LAYERS

    model.eval().save_pretrained(tmp_path)
    expected = model(input_ids=ids).logits
    torch.testing.assert_close(load_converted(tmp_path)(input_ids=ids).logits, expected, rtol=0, atol=0)
    assert report.auto_loadable == (mode == "replace" and not per_expert)
    if report.auto_loadable:
        auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(auto(input_ids=ids).logits, expected, rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match="load_converted"):
            AutoModelForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("per_expert", [False, True])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_replace_keeps_router_and_expert_weights_bitwise(arch, per_expert):
    model = tiny_moe_models()[arch]()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    convert(model, "polyrelu", "replace", per_expert=per_expert)
    after = dict(model.named_parameters())
    kept = [n for n in before if "act_fn" not in n]
    assert len(kept) == len(before)  # the original model had no parameter in an activation
    for name in kept:
        assert torch.equal(after[name], before[name]), name
    routers = [n for n in kept if n.endswith("mlp.gate.weight")]
    assert len(routers) == LAYERS


def _experts_ref(experts, x, top_k_index, top_k_weights, act_ref) -> torch.Tensor:
    """fp64: sum over a token's top-k experts e of weight * down_e(act(gate_e x) * up_e x) (or down_e(act(up_e x)))."""
    gated = hasattr(experts, "gate_up_proj")
    w_in = (experts.gate_up_proj if gated else experts.up_proj).detach().double()
    w_down = experts.down_proj.detach().double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for k in range(top_k_index.shape[1]):
            e = int(top_k_index[t, k])
            h = w_in[e] @ x[t].double()
            if gated:
                gate, up = h[: h.numel() // 2], h[h.numel() // 2 :]
                hidden = act_ref(gate[None], e)[0] * up
            else:
                hidden = act_ref(h[None], e)[0]
            out[t] += float(top_k_weights[t, k]) * (w_down[e] @ hidden)
    return out


def _route(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    idx = torch.stack([torch.randperm(NUM_EXPERTS, generator=g)[:2] for _ in range(n)])
    idx[0] = torch.tensor([0, NUM_EXPERTS - 1])  # first and last expert always used
    weights = torch.rand(n, 2, generator=g)
    return x, idx, weights


def _set_coefficients(acts: list[nn.Module]) -> None:
    with torch.no_grad():
        for i, act in enumerate(acts):
            act.weight.copy_(torch.tensor([0.4, -0.2, 0.9]) * (1 + i))
            act.bias.fill_(0.1 * i)


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm", "batched_mm"])
@pytest.mark.parametrize(("mode", "per_expert"), [*VARIANTS, ("ungated", True)])
def test_converted_experts_equal_fp64_formula(mode, per_expert, implementation):
    """The stock experts class (shared coefficients) and StackedExperts, on every transformers experts path."""
    model = tiny_moe_models()["olmoe"]()
    model.set_experts_implementation(implementation)
    convert(model, "polynorm", mode, per_expert=per_expert)
    experts = model.model.layers[1].mlp.experts
    assert isinstance(experts, StackedExperts) == (per_expert or mode == "ungated")
    acts = list(experts.act_fn) if per_expert else [experts.act_fn]
    _set_coefficients(acts)

    def act_ref(u, e):
        a = acts[e if per_expert else 0]
        return polynorm_ref(u, a.weight.detach(), a.bias.detach())

    x, idx, weights = _route(10)
    got = experts(x, idx, weights)
    torch.testing.assert_close(got.double(), _experts_ref(experts, x, idx, weights, act_ref), rtol=1e-4, atol=1e-5)


def test_ungated_experts_are_plain_stacked_with_fresh_weights():
    model = tiny_moe_models()["mixtral"]()
    convert(model, "polyrelu", "ungated")
    experts = model.model.layers[0].mlp.experts
    h = 3 * EXPERT_HIDDEN // 2
    assert isinstance(experts, StackedExperts) and not experts.has_gate and isinstance(experts.act_fn, PolyReLU)
    assert experts.up_proj.shape == (NUM_EXPERTS, h, D) and experts.down_proj.shape == (NUM_EXPERTS, D, h)
    assert abs(experts.up_proj.std().item() - model.config.initializer_range) < 0.005
    x, idx, weights = _route(6, seed=1)
    a = experts.act_fn
    ref = _experts_ref(experts, x, idx, weights, lambda u, e: polyrelu_ref(u, a.weight.detach(), a.bias.detach()))
    torch.testing.assert_close(experts(x, idx, weights).double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["replace", "ungated"])
def test_fused_gate_up_phi3(mode, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_moe_models()["phi3"]()
    mlp = model.model.layers[0].mlp
    w_gate_up, w_down = mlp.gate_up_proj.weight.detach().clone(), mlp.down_proj.weight.detach().clone()
    found = find_mlps(model)
    assert [(f.kind, f.act_attr, f.d_model, f.hidden) for f in found] == [("fused", "activation_fn", D, 64)] * LAYERS
    report = convert(model, "polynorm", mode)
    assert report.num_changed == LAYERS and all(c.params_before == 3 * D * 64 for c in report.changes)
    if mode == "replace":
        assert report.auto_loadable and model.config.hidden_act == "polynorm"
        act = mlp.activation_fn
        _set_coefficients([act])
        x = torch.randn(3, 5, D)
        gate, up = (x.double() @ w_gate_up.double().T).chunk(2, dim=-1)  # Phi-3: gate is the first half
        expected = (polynorm_ref(gate, act.weight.detach(), act.bias.detach()) * up) @ w_down.double().T
        torch.testing.assert_close(mlp(x).double(), expected, rtol=1e-4, atol=1e-5)
    else:
        new = model.model.layers[0].mlp
        assert isinstance(new, MLP) and new.hidden_size == 96 and new.gate_proj is None
        assert all(c.params_after == 2 * D * 96 + R + 1 for c in report.changes)
    ids = torch.randint(0, VOCAB, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    model.eval().save_pretrained(tmp_path)
    expected = model(input_ids=ids).logits
    loader = AutoModelForCausalLM.from_pretrained if mode == "replace" else load_converted
    torch.testing.assert_close(loader(tmp_path).eval()(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_trainer_step_and_generate_on_converted_olmoe(tmp_path):

    model = tiny_moe_models()["olmoe"]()
    convert(model, "polynorm", "replace")
    router = model.model.layers[0].mlp.gate.weight.detach().clone()
    coefficients = {n: p.detach().clone() for n, p in model.named_parameters() if "act_fn" in n}
    assert len(coefficients) == 2 * LAYERS  # weight + bias per layer, shared by the experts
    assert torch.isfinite(torch.tensor(one_trainer_step(model, tmp_path / "trainer")))
    after = dict(model.named_parameters())
    for name, old in coefficients.items():
        if name.endswith("weight"):
            assert not torch.equal(after[name].detach(), old), f"{name} was not updated"
    assert not torch.equal(model.model.layers[0].mlp.gate.weight.detach(), router)  # the router trains too

    model.eval()
    prompt = torch.randint(1, VOCAB, (1, 5))
    greedy = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (1, 11)
    # the same tokens, one full forward per step without cache
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, model(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(greedy, ids)


def test_per_expert_generate_after_load_converted(tmp_path):
    model = tiny_moe_models()["qwen3_moe"]()
    convert(model, "polynorm", "replace", per_expert=True)
    model.eval().save_pretrained(tmp_path)
    reloaded = load_converted(tmp_path)
    assert isinstance(reloaded.model.layers[0].mlp.experts.act_fn, nn.ModuleList)
    prompt = torch.randint(1, VOCAB, (2, 4))
    torch.testing.assert_close(
        reloaded.generate(prompt, max_new_tokens=5, do_sample=False),
        model.generate(prompt, max_new_tokens=5, do_sample=False),
    )


def test_per_expert_refuses_a_layout_it_cannot_keep():
    model = tiny_moe_models()["olmoe"]()
    model.model.layers[0].mlp.experts.is_concatenated = False  # gate/up interleaved: not the (E, 2h, d) halves
    with pytest.raises(UserError, match="per-expert coefficients need experts stored as"):
        convert(model, "polynorm", "replace", per_expert=True)


def test_find_experts_by_structure_not_names():
    class Bank(nn.Module):  # unusual names; gated experts (E, 2h, d) / (E, d, h)
        def __init__(self):
            super().__init__()
            self.w_in = nn.Parameter(torch.randn(3, 2 * 12, 8))
            self.w_out = nn.Parameter(torch.randn(3, 8, 12))
            self.nonlinearity = nn.SiLU()

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.randn(3, 12, 8))
            self.b = nn.Parameter(torch.randn(3, 8, 12))
            self.act = nn.GELU()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(8, 3)
            self.bank, self.plain = Bank(), Plain()
            self.not_experts = nn.ParameterDict({"x": nn.Parameter(torch.randn(3, 8, 8))})

    found = find_mlps(Net())
    assert [(f.name, f.kind, f.act_attr, f.num_experts, f.d_model, f.hidden) for f in found] == [
        ("bank", "experts", "nonlinearity", 3, 8, 12),
        ("plain", "experts-plain", "act", 3, 8, 12),
    ]


def test_convert_cli_per_expert(tmp_path, capsys):
    import json

    from polycom.cli import main

    tiny_moe_models()["olmoe"]().save_pretrained(tmp_path / "olmoe")
    args = ["convert", "--model", str(tmp_path / "olmoe"), "--out", str(tmp_path / "out"), "--per-expert"]
    assert main([*args, "--report", str(tmp_path / "r.json")]) == 0
    assert "2 MLPs changed (2 expert blocks, 8 experts)" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["per_expert"] and [c["coefficient_sets"] for c in report["changes"]] == [NUM_EXPERTS] * LAYERS
    reloaded = load_converted(tmp_path / "out")
    assert len(reloaded.model.layers[1].mlp.experts.act_fn) == NUM_EXPERTS
