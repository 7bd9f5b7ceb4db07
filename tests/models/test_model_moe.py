"""MoE layer: top-k routing, dropless dispatch vs a per-token loop, aux losses by hand, coefficients."""

from __future__ import annotations

import math

import pytest
import torch

from polycom.models import ModelConfig, MoEConfig, MoEMLP, build_model, load_balancing_loss, router_z_loss


def moe_cfg(activation="polynorm", E=6, k=2, **moe_kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=53,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        activation=activation,
        multiple_of=16,
        moe=MoEConfig(num_experts=E, top_k=k, **moe_kw),
    )


def act_fp64(name: str, coeffs, gate: torch.Tensor, up: torch.Tensor | None) -> torch.Tensor:
    """The activations written from their formulas in fp64 (coeffs = (weight, bias) or None)."""
    if name == "swiglu":
        return gate * torch.sigmoid(gate) * up
    if name == "gelu":
        return 0.5 * up * (1 + torch.erf(up / math.sqrt(2)))
    w, b = (c.double() for c in coeffs)
    r = w.numel()
    if name == "polynorm":
        return (
            sum(w[r - i] * up**i / torch.sqrt((up ** (2 * i)).mean(-1, keepdim=True) + 1e-6) for i in range(1, r + 1))
            + b
        )
    if name == "polyrelu":
        return sum(w[r - i] * torch.relu(up) ** i for i in range(1, r + 1)) + b
    raise AssertionError(name)


def per_token_reference(layer: MoEMLP, x: torch.Tensor, name: str, normalize: bool) -> torch.Tensor:
    """Loop over tokens: route each one by hand in fp64 and sum its top-k weighted experts."""
    xs = x.reshape(-1, x.shape[-1]).double()
    ex = layer.experts
    out = torch.zeros_like(xs)
    for t in range(xs.shape[0]):
        probs = torch.softmax(xs[t] @ layer.router.weight.double().T, -1)
        w, idx = probs.topk(layer.top_k)
        if normalize:
            w = w / w.sum()
        for weight, e in zip(w, idx.tolist()):
            act = layer.act if layer.expert_acts is None else layer.expert_acts[e]
            coeffs = (act.weight, act.bias) if hasattr(act, "bias") else None
            up = xs[t : t + 1] @ ex.up_proj[e].double().T
            gate = xs[t : t + 1] @ ex.gate_proj[e].double().T if ex.gate_proj is not None else None
            hidden = act_fp64(name, coeffs, gate, up)
            out[t] += weight * (hidden @ ex.down_proj[e].double().T)[0]
    return out.view(x.shape)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu", "polyrelu", "gelu"])
@pytest.mark.parametrize("normalize", [False, True])
def test_dropless_dispatch_matches_per_token_loop(activation, normalize):
    cfg = moe_cfg(activation, normalize_top_k=normalize)
    layer = build_model(cfg).layers[0].mlp
    with torch.no_grad():
        layer.router.weight.normal_(0, 0.5)  # spread the routing over the experts
    x = torch.randn(3, 7, 32)
    y, stats = layer(x)
    torch.testing.assert_close(y.double(), per_token_reference(layer, x, activation, normalize), rtol=1e-4, atol=1e-5)
    # Every (token, expert) assignment was processed: counts sum to N * k.
    assert int(stats.tokens_per_expert.sum()) == 21 * 2


def test_each_token_routed_to_exactly_k_distinct_experts():
    layer = build_model(moe_cfg(E=8, k=3)).layers[0].mlp
    x = torch.randn(50, 32)
    _, probs, weights, idx = layer.route(x)
    assert idx.shape == (50, 3)
    assert all(len(set(row)) == 3 for row in idx.tolist())
    # The chosen experts are the k largest probabilities, and the weights are those probabilities.
    torch.testing.assert_close(weights, probs.gather(1, idx))
    assert (probs.gather(1, idx).min(1).values >= probs.topk(3).values[:, -1] - 1e-7).all()
    _, stats = layer(x[None])
    counts = torch.bincount(idx.flatten(), minlength=8)
    assert torch.equal(stats.tokens_per_expert, counts)


def test_normalize_top_k_weights_sum_to_one():
    layer = build_model(moe_cfg(E=8, k=3, normalize_top_k=True)).layers[0].mlp
    _, _, weights, _ = layer.route(torch.randn(20, 32))
    torch.testing.assert_close(weights.sum(-1), torch.ones(20))
    raw = build_model(moe_cfg(E=8, k=3)).layers[0].mlp
    assert (raw.route(torch.randn(20, 32))[2].sum(-1) < 1).all()


def test_aux_losses_on_constructed_router_by_hand():
    # 4 experts, top-1, router = c * identity; tokens e0, e0, e1, e2 -> experts 0, 0, 1, 2.
    c = 2.0
    cfg = ModelConfig(
        vocab_size=10, d_model=4, n_layers=1, n_heads=1, activation="relu", multiple_of=4, moe=MoEConfig(4, 1)
    )
    layer = build_model(cfg).layers[0].mlp
    with torch.no_grad():
        layer.router.weight.copy_(c * torch.eye(4))
    x = torch.eye(4)[[0, 0, 1, 2]][None]
    _, stats = layer(x)
    hi, lo = math.exp(c) / (math.exp(c) + 3), 1 / (math.exp(c) + 3)
    f = [2 / 4, 1 / 4, 1 / 4, 0]
    P = [(2 * hi + 2 * lo) / 4, (hi + 3 * lo) / 4, (hi + 3 * lo) / 4, 4 * lo / 4]
    lb = 4 * sum(fe * pe for fe, pe in zip(f, P))
    assert stats.lb_loss.item() == pytest.approx(lb, rel=1e-6)
    assert stats.z_loss.item() == pytest.approx(math.log(math.exp(c) + 3) ** 2, rel=1e-6)
    assert stats.tokens_per_expert.tolist() == [2, 1, 1, 0]


def test_uniform_router_gives_unit_load_balancing_loss():
    probs = torch.full((12, 4), 0.25)
    idx = torch.randint(0, 4, (12, 2))
    assert load_balancing_loss(probs, idx, 4).item() == pytest.approx(1.0)
    assert router_z_loss(torch.zeros(5, 4)).item() == pytest.approx(math.log(4) ** 2)


def test_model_aux_loss_combines_layers_with_coefficients():
    cfg = moe_cfg(lb_loss_coef=0.5, z_loss_coef=0.25)
    model = build_model(cfg)
    ids = torch.randint(0, 53, (2, 10))
    out = model(ids, ids)
    assert len(out.tokens_per_expert) == 2 and out.tokens_per_expert[0].shape == (6,)
    # Recompute the per-layer statistics from each layer's input.
    layer_stats = []
    hooks = [blk.mlp.register_forward_hook(lambda m, inp, o: layer_stats.append(o[1])) for blk in model.layers]
    out2 = model(ids, ids)
    for h in hooks:
        h.remove()
    lb = sum(s.lb_loss for s in layer_stats) / 2
    z = sum(s.z_loss for s in layer_stats) / 2
    torch.testing.assert_close(out2.aux_loss, 0.5 * lb + 0.25 * z)
    torch.testing.assert_close(out2.loss, out2.ce_loss + out2.aux_loss)
    assert out2.aux_loss.item() > 0


def test_moe_backward_reaches_router_experts_and_shared_coefficients():
    model = build_model(moe_cfg("polynorm"))
    ids = torch.randint(0, 53, (2, 16))
    model(ids, ids).loss.backward()
    mlp = model.layers[0].mlp
    assert mlp.router.weight.grad.abs().sum() > 0
    assert mlp.act.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_shared_coefficients_are_one_module_per_layer():
    model = build_model(moe_cfg("polynorm"))
    sd = model.state_dict()
    assert "layers.0.mlp.act.weight" in sd and not any("expert_acts" in k for k in sd)
    # Expert width: gated d/2 = 16 (multiple_of 16), plain (polynorm) 1.5 x 16 = 24.
    assert sd["layers.0.mlp.experts.up_proj"].shape == (6, 24, 32)
    assert sd["layers.0.mlp.experts.down_proj"].shape == (6, 32, 24)
    assert sd["layers.0.mlp.router.weight"].shape == (6, 32)
    # Changing the shared coefficients changes the output of every token.
    layer = model.layers[0].mlp
    x = torch.randn(1, 8, 32)
    before = layer(x)[0]
    with torch.no_grad():
        layer.act.bias.fill_(0.3)
    after = layer(x)[0]
    assert ((after - before).abs().sum(-1) > 1e-6).all()


def test_per_expert_coefficients_only_affect_their_expert():
    cfg = moe_cfg("polyrelu", E=4, k=1, shared_coefficients=False)
    layer = build_model(cfg).layers[0].mlp
    assert layer.act is None and len(layer.expert_acts) == 4
    x = torch.randn(1, 30, 32)
    idx = layer.route(x[0])[3][:, 0]
    before = layer(x)[0][0]
    with torch.no_grad():
        layer.expert_acts[0].bias.fill_(0.7)
    after = layer(x)[0][0]
    moved = (after - before).abs().sum(-1) > 1e-6
    assert torch.equal(moved, idx == 0) and moved.any()


def test_moe_under_bf16_autocast():
    model = build_model(moe_cfg("polynorm"))
    ids = torch.randint(0, 53, (2, 12))
    ref = model(ids, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, ids)
    assert abs(out.loss.item() - ref.loss.item()) < 0.05
    assert out.aux_loss.dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("activation", ["polynorm", "swiglu"])
def test_grouped_mm_path_matches_expert_loop_under_bf16(activation, monkeypatch):
    calls = []
    real = torch.nn.functional.grouped_mm

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "grouped_mm", spy)
    cfg = ModelConfig(
        vocab_size=64, d_model=64, n_layers=1, n_heads=4, activation=activation, moe=MoEConfig(16, 2, grouped_mm=True)
    )
    layer = build_model(cfg).layers[0].mlp
    x = torch.randn(1, 5, 64)  # 10 assignments over 16 experts: some experts get no token
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_grouped, stats = layer(x)
    assert len(calls) == (3 if activation == "swiglu" else 2) and (stats.tokens_per_expert == 0).any()
    y_grouped.float().square().sum().backward()
    grads = [p.grad.clone() for p in layer.experts.parameters()]
    layer.zero_grad()
    layer.use_grouped_mm = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_loop, _ = layer(x)
    y_loop.float().square().sum().backward()
    assert len(calls) == (3 if activation == "swiglu" else 2)
    torch.testing.assert_close(y_grouped, y_loop, rtol=2e-2, atol=1e-3)
    for g, p in zip(grads, layer.experts.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=2e-2, atol=1e-3)
    # In fp32 (no autocast) the grouped path is not taken: the loop runs.
    layer.use_grouped_mm = True
    layer(x)
    assert len(calls) == (3 if activation == "swiglu" else 2)
