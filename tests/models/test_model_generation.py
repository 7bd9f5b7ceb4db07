"""Generation: KV-cache decoding equals recomputation, sampling rules, length limits, bad input."""

from __future__ import annotations

import pytest
import torch

from polycom.models import ModelConfig, MoEConfig, build_model, sample_next


def make(**kw):
    base = dict(vocab_size=47, d_model=64, n_layers=2, n_heads=4, max_seq_len=40, activation="polynorm")
    base.update(kw)
    return build_model(ModelConfig(**base))


def greedy_by_recomputation(model, ids, n):
    """Reference decoding written in the test: full forward over the growing sequence, argmax each step."""
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            nxt = model(seq).logits[:, -1].argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


@pytest.mark.parametrize(
    "kw",
    [{}, {"n_kv_heads": 2, "activation": "swiglu"}, {"qk_norm": True}, {"moe": MoEConfig(num_experts=4, top_k=2)}],
    ids=["mha-polynorm", "gqa-swiglu", "qknorm", "moe"],
)
def test_cached_greedy_equals_recomputed_greedy(kw):
    model = make(**kw)
    with torch.no_grad():  # sharper logits so that argmax ties cannot occur
        model.output_weight.mul_(20)
    ids = torch.randint(0, 47, (3, 6))
    cached = model.generate(ids, 12, temperature=0)
    assert cached.shape == (3, 18) and cached.dtype == torch.long
    assert torch.equal(cached[:, :6], ids)
    assert torch.equal(cached, greedy_by_recomputation(model.eval(), ids, 12))
    assert torch.equal(cached, model.generate(ids, 12, temperature=0, use_cache=False))


def test_cached_logits_equal_full_forward_logits():
    model = make(n_kv_heads=1).eval()
    ids = torch.randint(0, 47, (2, 15))
    full = model(ids).logits
    cache = model.new_cache(2)
    prefill = model(ids[:, :5], cache=cache).logits
    chunk = model(ids[:, 5:9], cache=cache).logits  # several new tokens at once with a past
    steps = [model(ids[:, t : t + 1], cache=cache).logits for t in range(9, 15)]
    torch.testing.assert_close(torch.cat([prefill, chunk, *steps], dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 15


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model = make()
    ids = torch.randint(0, 47, (2, 4))
    a = model.generate(ids, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = model.generate(ids, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(model.generate(ids, 10, top_k=1), model.generate(ids, 10, temperature=0))


def test_sample_next_respects_top_k_and_temperature():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.9]]).expand(4000, 6)
    g = torch.Generator().manual_seed(0)
    picks = sample_next(logits, temperature=1.0, top_k=3, generator=g)
    assert set(picks.tolist()) <= {1, 3, 5}
    # Frequencies follow softmax over the kept logits at temperature 0.5.
    picks = sample_next(logits, temperature=0.5, top_k=3, generator=g)
    kept = torch.tensor([3.0, 2.5, 2.9]) / 0.5
    expected = kept.softmax(0)
    observed = torch.stack([(picks == i).float().mean() for i in (1, 3, 5)])
    torch.testing.assert_close(observed, expected, atol=0.03, rtol=0)
    assert torch.equal(sample_next(logits[:3], temperature=0), torch.tensor([1, 1, 1]))


def test_eos_stops_rows_and_keeps_width():
    model = make()
    with torch.no_grad():  # make token 7 overwhelmingly likely after anything
        model.lm_head.weight.zero_()
        model.lm_head.weight[7] = 1.0
        model.norm.weight.fill_(50.0)
    ids = torch.randint(0, 47, (2, 3))
    # Choose a bias direction: logit_7 = 50 * sum(normalised hidden); force it positive through the sign.
    out = model.generate(ids, 8, temperature=0, eos_id=int(model(ids).logits[:, -1].argmax(-1)[0]))
    assert out.shape == (2, 11)
    first = out[0, 3].item()
    assert (out[0, 3:] == first).all()


def test_length_limit_and_bad_arguments():
    model = make()
    ids = torch.randint(0, 47, (1, 30))
    with pytest.raises(ValueError, match="30 \\+ max_new_tokens 11 = 41 exceeds the model's max_seq_len 40"):
        model.generate(ids, 11)
    assert model.generate(ids, 10, temperature=0).shape == (1, 40)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids[:, :3], 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(ids[:, :3], 2, top_k=0)
    with pytest.raises(ValueError, match="vocab_size=47"):
        model.generate(torch.tensor([[3, 47]]), 2)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.generate(torch.tensor([3, 4]), 2)


def test_generate_restores_training_mode():
    model = make()
    model.train()
    model.generate(torch.tensor([[1, 2]]), 3)
    assert model.training
    model.eval()
    model.generate(torch.tensor([[1, 2]]), 3)
    assert not model.training


def test_cache_follows_autocast_dtype():
    model = make()
    ids = torch.randint(0, 47, (2, 5))
    cache = model.new_cache(2, 10)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, cache=cache)
        model(ids[:, :1], cache=cache)
    assert cache.k.dtype == torch.bfloat16 and cache.length == 6
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(ids, 4, temperature=0)
    assert out.shape == (2, 9)
    with pytest.raises(ValueError, match="KV cache holds 10 positions"):
        model(torch.randint(0, 47, (2, 5)), cache=cache)
