"""Autoregressive sampling with a KV cache: one prefill pass over the prompt, then one token per step.

Next-token distribution: softmax(logits / temperature) restricted to the `top_k` most likely tokens;
temperature 0 means greedy (argmax). With the cache, each step feeds only the newest token and the
attention reads the stored keys/values, so the result equals recomputing the whole sequence every
step (``use_cache=False``), which the tests check for greedy decoding.
"""

from __future__ import annotations

import torch


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pick one token per row from logits (B, V) -> (B,) long."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = scaled.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError("input_ids must be a (B, T) tensor of token ids with T >= 1")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    vocab = model.config.vocab_size
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds the "
            f"model's max_seq_len {model.config.max_seq_len}; shorten the prompt or ask for fewer tokens"
        )


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    *,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend `input_ids` (B, T) by `max_new_tokens` sampled tokens -> (B, T + max_new_tokens) long.

    A row that produced `eos_id` is filled with `eos_id` from then on; generation stops early when
    every row has finished (the result keeps its full width). `generator` must live on the model's
    device. Raises ValueError when T + max_new_tokens exceeds max_seq_len.
    """
    _check_args(model, input_ids, max_new_tokens, temperature, top_k)
    was_training = model.training
    model.eval()
    try:
        ids = input_ids.to(device=model.embed.weight.device, dtype=torch.long)
        B, T = ids.shape
        out = torch.empty(B, T + max_new_tokens, dtype=torch.long, device=ids.device)
        out[:, :T] = ids
        if max_new_tokens == 0:
            return out
        cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
        logits = model(ids, cache=cache).logits[:, -1]
        finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            if eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos_id), nxt)
                finished |= nxt == eos_id
            out[:, T + step] = nxt
            if step == max_new_tokens - 1:
                break
            if eos_id is not None and bool(finished.all()):
                out[:, T + step + 1 :] = eos_id
                break
            if cache is not None:
                logits = model(nxt[:, None], cache=cache).logits[:, -1]
            else:
                logits = model(out[:, : T + step + 1]).logits[:, -1]
        return out
    finally:
        model.train(was_training)
