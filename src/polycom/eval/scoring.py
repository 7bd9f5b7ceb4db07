"""Log-likelihood scoring with an `EvalModel`: continuations, perplexity and bits per byte.

Continuation score of (context c, continuation x_1..x_m):
    log p(x | c) = sum_j log softmax(logits(c, x_<j))[x_j]     (fp32 logits, summed in fp64)
    greedy       = every x_j is the argmax of its distribution
A sequence longer than the model's context keeps its last max_length + 1 tokens.

Perplexity of a text with n tokens and B UTF-8 bytes (every token predicted once; the first one
from the model's prefix token; windows of at most `max_length` inputs, each scoring its last
`stride` targets so later windows keep max_length - stride tokens of context):
    nll = -sum_t log p(x_t | x_<t)      token perplexity = exp(nll / n)
    bits per byte = nll / (B ln 2)       byte perplexity = 2 ** bits_per_byte
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from polycom.errors import UserError
from polycom.eval.loading import EvalModel


def _score_batch(em: EvalModel, rows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """rows: (inputs, targets of the last len(targets) inputs). Right padding is harmless: attention is causal."""
    width = max(len(inp) for inp, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (inp, _) in enumerate(rows):
        ids[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
    logprobs = torch.log_softmax(em.logits(ids).float(), dim=-1).cpu()
    out = []
    for i, (inp, tgt) in enumerate(rows):
        m = len(tgt)
        lp = logprobs[i, len(inp) - m : len(inp)]
        target = torch.tensor(tgt, dtype=torch.long)
        total = float(lp.gather(-1, target[:, None]).double().sum())
        greedy = bool((lp.argmax(-1) == target).all())
        out.append((total, greedy))
    return out


def continuation_logprobs(
    em: EvalModel, requests: list[tuple[list[int], list[int]]], batch_size: int = 8
) -> list[tuple[float, bool]]:
    """(log p(continuation | context), greedy) for each (context ids, continuation ids), in input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = []
    for context, continuation in requests:
        if not continuation:
            raise ValueError("a continuation must hold at least one token")
        if len(continuation) > em.max_length:
            raise UserError(f"a continuation of {len(continuation)} tokens exceeds the model's context {em.max_length}")
        full = (list(context) + list(continuation))[-(em.max_length + 1) :]
        rows.append((full[:-1], list(continuation)))
    # longest first, so each batch pads little; results are put back in request order
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, res in zip(chunk, _score_batch(em, [rows[i] for i in chunk])):
            results[i] = res
    return results  # type: ignore[return-value]


def rolling_windows(n_tokens: int, max_length: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows over full = [prefix] + tokens: (input start s, first target a, end b), targets full[a:b].

    Inputs are full[s : b - 1] (at most max_length), scoring targets a..b-1 (at most `stride`).
    """
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    windows = []
    a = 1
    while a <= n_tokens:
        b = min(a + stride, n_tokens + 1)
        s = max(0, b - 1 - max_length)
        windows.append((s, a, b))
        a = b
    return windows


def text_perplexity(
    em: EvalModel,
    text: str,
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Token perplexity, bits per byte and byte perplexity of `text` (see module docstring)."""
    if not text:
        raise UserError("the text to score is empty")
    tokens = em.encode(text)
    max_length = min(max_length or em.max_length, em.max_length)
    full = [em.prefix_token_id, *tokens]
    requests = [(full[s:a], full[a:b]) for s, a, b in rolling_windows(len(tokens), max_length, stride)]
    scores = continuation_logprobs(em, requests, batch_size=batch_size)
    nll = -sum(lp for lp, _ in scores)
    n_bytes = len(text.encode("utf-8"))
    n_words = max(1, len(text.split()))
    bpb = nll / (n_bytes * math.log(2))
    return {
        "tokens": len(tokens),
        "bytes": n_bytes,
        "words": n_words,
        "nll": nll,
        "token_perplexity": math.exp(nll / len(tokens)),
        "word_perplexity": math.exp(nll / n_words),
        "bits_per_byte": bpb,
        "byte_perplexity": 2.0**bpb,
        "max_length": max_length,
        "stride": stride or max_length,
    }


def file_perplexity(em: EvalModel, path: str | Path, **kwargs) -> dict:
    """`text_perplexity` of a UTF-8 text file, plus its path."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"text file {file} not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    return {"file": str(file), **text_perplexity(em, text, **kwargs)}
