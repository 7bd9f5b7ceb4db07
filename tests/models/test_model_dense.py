"""Dense LM: shapes, causality, attention/RoPE/RMSNorm against formulas, GQA, tying, init, grads, autocast."""

from __future__ import annotations

import math

import pytest
import torch

import polycom
from polycom.models import Attention, ModelConfig, RMSNorm, apply_rope, build_model, rope_tables


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, d_model=64, n_layers=2, n_heads=4, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("activation", polycom.activation_names())
def test_shapes_loss_and_grads_for_every_activation(activation):
    model = build_model(tiny(activation=activation))
    ids = torch.randint(0, 61, (3, 11))
    out = model(ids, ids)
    assert out.logits.shape == (3, 11, 61)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.aux_loss.item() == 0.0 and out.tokens_per_expert is None
    # Near-uniform predictions at init: loss close to log(V).
    assert abs(out.ce_loss.item() - math.log(61)) < 0.5
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert model(ids).loss is None


def test_odd_length_and_single_token():
    model = build_model(tiny(activation="polynorm"))
    assert model(torch.randint(0, 61, (1, 1))).logits.shape == (1, 1, 61)
    assert model(torch.randint(0, 61, (2, 31))).logits.shape == (2, 31, 61)


def test_causal_mask_future_tokens_do_not_change_past_logits():
    model = build_model(tiny(activation="polyrelu", n_kv_heads=2)).eval()
    ids = torch.randint(0, 61, (2, 16))
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 61
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4


def test_ignore_index_targets_match_manual_cross_entropy():
    model = build_model(tiny())
    ids = torch.randint(0, 61, (2, 9))
    targets = torch.randint(0, 61, (2, 9))
    targets[0, :4] = -100
    out = model(ids, targets)
    logits = out.logits.double()
    keep = targets != -100
    logp = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    expected = -(logp[keep]).mean()
    torch.testing.assert_close(out.ce_loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, out.ce_loss)


def test_bad_inputs_raise_clear_errors():
    model = build_model(tiny())
    with pytest.raises(ValueError, match="max_seq_len 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\) integer tensor"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets shape"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model({"d_model": 64})


# ---------------------------------------------------------------------------------------------------
def test_rmsnorm_matches_formula_in_fp64():
    norm = RMSNorm(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 24, dtype=torch.bfloat16)
    xd = x.double()
    ref = xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(norm(x.float()).double(), ref, rtol=1e-5, atol=1e-5)


def test_rope_matches_complex_rotation():
    B, H, T, hd, theta = 2, 3, 7, 16, 500.0
    x = torch.randn(B, H, T, hd)
    cos, sin = rope_tables(torch.arange(T), hd, theta)
    y = apply_rope(x, cos, sin)
    # Independent reference: pair (x_j, x_{j+hd/2}) as a complex number, rotated by angle p * theta^(-2j/hd).
    half = hd // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    freqs = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)
    rot = torch.polar(torch.ones(T, half, dtype=torch.float64), torch.arange(T, dtype=torch.float64)[:, None] * freqs)
    ref = z * rot
    torch.testing.assert_close(y.double(), torch.cat([ref.real, ref.imag], dim=-1), rtol=1e-5, atol=1e-5)
    # Relative position: <rope(q, m), rope(k, n)> depends only on m - n.
    q, k = torch.randn(hd), torch.randn(hd)
    c, s = rope_tables(torch.arange(12), hd, theta)
    rq = apply_rope(q.expand(1, 1, 12, hd), c, s)[0, 0]
    rk = apply_rope(k.expand(1, 1, 12, hd), c, s)[0, 0]
    torch.testing.assert_close(rq[5] @ rk[2], rq[9] @ rk[6], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_attention_matches_explicit_formula_with_gqa(n_kv_heads):
    cfg = tiny(n_heads=4, n_kv_heads=n_kv_heads)
    attn = Attention(cfg).double()
    B, T, d, H, hd = 2, 9, 64, 4, 16
    kv = cfg.kv_heads
    assert attn.k_proj.weight.shape == (kv * hd, d) and attn.v_proj.weight.shape == (kv * hd, d)
    x = torch.randn(B, T, d, dtype=torch.float64)
    cos, sin = rope_tables(torch.arange(T), hd)
    y = attn(x, cos.double(), sin.double())
    # Reference: per query head h, use kv head h // (H / kv); explicit masked softmax.
    q = apply_rope((x @ attn.q_proj.weight.T).view(B, T, H, hd).transpose(1, 2), cos.double(), sin.double())
    k = apply_rope((x @ attn.k_proj.weight.T).view(B, T, kv, hd).transpose(1, 2), cos.double(), sin.double())
    v = (x @ attn.v_proj.weight.T).view(B, T, kv, hd).transpose(1, 2)
    heads = []
    for h in range(H):
        g = h // (H // kv)
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, g])
    ref = torch.stack(heads, 1).transpose(1, 2).reshape(B, T, H * hd) @ attn.o_proj.weight.T
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)


def test_qk_norm_option_adds_norms_and_changes_output():
    a = build_model(tiny(qk_norm=True))
    keys = a.state_dict().keys()
    assert "layers.0.attn.q_norm.weight" in keys and "layers.1.attn.k_norm.weight" in keys
    assert torch.isfinite(a(torch.randint(0, 61, (1, 5))).logits).all()


# ---------------------------------------------------------------------------------------------------
def test_state_dict_names_follow_the_contract():
    sd = build_model(tiny(activation="polynorm")).state_dict()
    expected = {"embed.weight", "norm.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {
            f"layers.{i}.attn_norm.weight",
            f"layers.{i}.mlp_norm.weight",
            f"layers.{i}.mlp.up_proj.weight",
            f"layers.{i}.mlp.down_proj.weight",
            f"layers.{i}.mlp.act.weight",
            f"layers.{i}.mlp.act.bias",
        } | {f"layers.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert set(sd) == expected
    gated = build_model(tiny(activation="swiglu")).state_dict()
    assert "layers.0.mlp.gate_proj.weight" in gated and "layers.0.mlp.act.weight" not in gated


def test_tied_embeddings_share_storage_and_gradient():
    model = build_model(tiny(tie_embeddings=True))
    assert model.lm_head is None and "lm_head.weight" not in model.state_dict()
    assert model.output_weight is model.embed.weight
    untied = build_model(tiny(tie_embeddings=False))
    assert untied.num_parameters() - model.num_parameters() == 61 * 64
    # The output projection really is the embedding: changing a row of embed changes that token's logit.
    ids = torch.tensor([[1, 2, 3]])
    before = model(ids).logits[0, -1, 50].item()
    with torch.no_grad():
        model.embed.weight[50] += 1.0
    assert model(ids).logits[0, -1, 50].item() != before
    # The gradient of embed.weight collects both uses (row 50 is only an output row here).
    model.zero_grad()
    model(ids, torch.tensor([[50, 50, 50]])).loss.backward()
    assert model.embed.weight.grad[50].abs().sum() > 0


def test_init_statistics():
    L, std = 4, 0.02
    model = build_model(ModelConfig(vocab_size=512, d_model=256, n_layers=L, n_heads=4, activation="polynorm"))
    out_std = std / math.sqrt(2 * L)

    def close(t, target):
        return abs(t.float().std().item() - target) / target < 0.03 and abs(t.float().mean().item()) < target * 0.05

    assert close(model.embed.weight, std) and close(model.lm_head.weight, std)
    for block in model.layers:
        for p in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.mlp.up_proj):
            assert close(p.weight, std)
        assert close(block.attn.o_proj.weight, out_std)
        assert close(block.mlp.down_proj.weight, out_std)
        assert torch.equal(block.attn_norm.weight, torch.ones(256))
        torch.testing.assert_close(block.mlp.act.weight, torch.full((3,), 1 / 3))
        assert block.mlp.act.bias.item() == 0.0
    # init_weights() restores the initial state of coefficients and norms.
    with torch.no_grad():
        model.layers[0].mlp.act.weight.fill_(5.0)
        model.norm.weight.fill_(2.0)
    model.init_weights()
    torch.testing.assert_close(model.layers[0].mlp.act.weight, torch.full((3,), 1 / 3))
    assert torch.equal(model.norm.weight, torch.ones(256))


def test_flops_per_token_formula():
    cfg = tiny(tie_embeddings=False)
    model = build_model(cfg)
    non_emb = model.num_parameters(non_embedding=True)
    expected = 6 * (non_emb + 61 * 64) + 12 * 2 * 64 * 20
    assert model.flops_per_token(20) == pytest.approx(expected)
    assert model.flops_per_token() == pytest.approx(6 * (non_emb + 61 * 64) + 12 * 2 * 64 * 32)


@pytest.mark.parametrize("activation", ["swiglu", "polynorm", "polyrelu"])
def test_autocast_bf16_cpu_forward_backward(activation):
    model = build_model(tiny(activation=activation))
    ids = torch.randint(0, 61, (2, 12))
    ref = model(ids, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, ids)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.loss) and abs(out.loss.item() - ref.loss.item()) < 0.05
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.embed.weight.dtype == torch.float32


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "polyrelu", "polynorm"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_model_learns_a_fixed_batch(activation, moe):
    from polycom.models import MoEConfig

    cfg = tiny(activation=activation, moe=MoEConfig(num_experts=4, top_k=2) if moe else None)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 61, (4, 24))
    first = None
    for _ in range(25):
        out = model(ids[:, :-1], ids[:, 1:])
        first = first if first is not None else out.ce_loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.ce_loss.item() < 0.5 * first, (first, out.ce_loss.item())
