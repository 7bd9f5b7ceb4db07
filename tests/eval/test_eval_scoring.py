"""Continuation log-likelihoods and perplexity against direct fp64 computations on the model's logits."""

from __future__ import annotations

import math

import pytest
import torch
from eval_runs import TEXT, fake_run, one_torch_thread  # noqa: F401  (autouse fixture)

from polycom.eval import continuation_logprobs, load_eval_model, text_perplexity
from polycom.eval.scoring import rolling_windows


@pytest.fixture(scope="module")
def em_and_model(tmp_path_factory):
    folder, model = fake_run(tmp_path_factory.mktemp("run") / "r")
    return load_eval_model(folder), model


def _direct_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    ids = torch.tensor([(context + continuation)[:-1]])  # the last token is only a target
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    positions = range(len(context) - 1, len(context) + len(continuation) - 1)
    total = sum(logp[p, t].item() for p, t in zip(positions, continuation))
    greedy = all(logp[p].argmax().item() == t for p, t in zip(positions, continuation))
    return total, greedy


def test_continuation_logprobs_match_direct_computation_any_batch_size(em_and_model):
    em, model = em_and_model
    g = torch.Generator().manual_seed(1)
    requests = [
        (torch.randint(0, 256, (n,), generator=g).tolist(), torch.randint(0, 256, (m,), generator=g).tolist())
        for n, m in [(5, 1), (17, 4), (1, 9), (30, 2), (8, 8)]
    ]
    expected = [_direct_logprob(model, c, x) for c, x in requests]
    for batch_size in (1, 2, 8):
        got = continuation_logprobs(em, requests, batch_size=batch_size)
        for (lp, greedy), (lp_ref, greedy_ref) in zip(got, expected):
            assert lp == pytest.approx(lp_ref, rel=1e-5, abs=1e-4)
            assert greedy == greedy_ref


def test_greedy_flag_is_true_for_the_models_own_argmax(em_and_model):
    em, model = em_and_model
    context = list(b"Hello")
    with torch.no_grad():
        nxt = model(torch.tensor([context])).logits[0, -1].argmax().item()
    assert continuation_logprobs(em, [(context, [nxt])])[0][1] is True
    other = (nxt + 1) % 256
    assert continuation_logprobs(em, [(context, [other])])[0][1] is False


def test_long_context_keeps_the_last_max_length_tokens(em_and_model):
    em, model = em_and_model
    context = torch.randint(0, 256, (300,)).tolist()  # longer than max_seq_len 128
    continuation = [65, 66]
    got = continuation_logprobs(em, [(context, continuation)])[0][0]
    kept = (context + continuation)[-(128 + 1) :]
    ref = _direct_logprob(model, kept[: -len(continuation)], continuation)[0]
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize(
    ("n", "max_length", "stride"), [(10, 4, None), (10, 4, 2), (1, 4, None), (9, 3, 1), (128, 128, None)]
)
def test_rolling_windows_predict_every_token_once(n, max_length, stride):
    windows = rolling_windows(n, max_length, stride)
    targets = [t for _, a, b in windows for t in range(a, b)]
    assert targets == list(range(1, n + 1))
    for s, a, b in windows:
        assert 0 <= s < a and (b - 1) - s <= max_length


def test_perplexity_and_bits_per_byte_against_direct_formula(em_and_model):
    em, model = em_and_model
    text = TEXT[:100]  # fits one window: every byte conditioned on the full prefix
    ids = [em.prefix_token_id, *text.encode("utf-8")]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0].double(), -1)
    nll = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    result = text_perplexity(em, text)
    assert result["tokens"] == result["bytes"] == 100
    assert result["nll"] == pytest.approx(nll, rel=1e-6)
    assert result["bits_per_byte"] == pytest.approx(nll / (100 * math.log(2)), rel=1e-6)
    assert result["token_perplexity"] == pytest.approx(math.exp(nll / 100), rel=1e-6)


def test_strided_perplexity_uses_overlapping_context(em_and_model):
    em, model = em_and_model
    text = TEXT * 2  # longer than the 64-token window
    ids = [em.prefix_token_id, *text.encode("utf-8")]
    n = len(ids) - 1
    nll, cache = 0.0, {}
    for t in range(1, n + 1):  # target t is in chunk (t-1)//32, whose inputs are the 64 positions before its end
        end = min(1 + 32 * ((t - 1) // 32 + 1), n + 1)
        start = max(0, end - 1 - 64)
        if (start, end) not in cache:
            with torch.no_grad():
                cache[start, end] = torch.log_softmax(
                    model(torch.tensor([ids[start : end - 1]])).logits[0].double(), -1
                )
        nll -= cache[start, end][t - 1 - start, ids[t]].item()
    result = text_perplexity(em, text, max_length=64, stride=32)
    assert result["nll"] == pytest.approx(nll, rel=1e-6)
    assert result["nll"] != pytest.approx(text_perplexity(em, text, max_length=64)["nll"], rel=1e-6)
