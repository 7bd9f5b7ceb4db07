"""Causal self-attention with RoPE, optional grouped-query heads, optional QK-norm and a KV cache.

Shapes: x (B, T, d) -> q (B, H, T, hd), k/v (B, H_kv, T, hd); each group of H / H_kv query heads
shares one key/value head. The scores go through `F.scaled_dot_product_attention` (flash /
memory-efficient kernels on GPU), scale 1/sqrt(hd).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from polycom.models.config import ModelConfig
from polycom.models.layers import RMSNorm, apply_rope


class KVCache:
    """Pre-allocated keys and values for every layer: (n_layers, B, H_kv, max_len, hd) each.

    `length` is the number of positions already written; `Attention.forward` writes the new keys
    and values at [length, length + T) and `PolyComLM.forward` advances `length` after the last layer.
    With `dtype=None` the storage is allocated at the first write in the dtype of the keys (bf16
    under bf16 autocast), so attention never mixes dtypes.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.shape = (n_layers, batch_size, n_kv_heads, max_len, head_dim)
        self.device = device
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        if dtype is not None:
            self._allocate(dtype)
        self.max_len = max_len
        self.length = 0

    def _allocate(self, dtype: torch.dtype) -> None:
        self.k = torch.zeros(self.shape, device=self.device, dtype=dtype)
        self.v = torch.zeros(self.shape, device=self.device, dtype=dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H_kv, T, hd) at the current position; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot write up to position {end}")
        if self.k is None:
            self._allocate(k.dtype)
        self.k[layer, :, :, start:end] = k.to(self.k.dtype)
        self.v[layer, :, :, start:end] = v.to(self.v.dtype)
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention. (B, T, d) -> (B, T, d)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_dropout = cfg.attention_dropout
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.kv_heads
        self.head_dim = cfg.head_dim
        d, hd = cfg.d_model, cfg.head_dim
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        self.qk_norm_per_head = cfg.qk_norm_per_head
        if cfg.qk_norm:  # over the whole projection (OLMoE) or over each head (qk_norm_per_head)
            self.q_norm = RMSNorm(hd if cfg.qk_norm_per_head else self.n_heads * hd, cfg.norm_eps)
            self.k_norm = RMSNorm(hd if cfg.qk_norm_per_head else self.n_kv_heads * hd, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project_qkv(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, d) -> q (B, H, T, hd), k and v (B, H_kv, T, hd); RoPE applied to q and k."""
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool
    ) -> torch.Tensor:
        """SDPA of q (B, H, T, hd) over k, v (B, H_kv, S, hd), then o_proj -> (B, T, d).

        causal: plain causal mask (no past, no padding); else `mask` (bool, True = attend) or None
        (every query sees every key, e.g. one new token over a cache).
        """
        if self.n_kv_heads != self.n_heads:
            # Repeat each key/value head for its group of query heads (portable on every SDPA backend).
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        # Megatron's attention dropout (training only; p = 0 keeps the SDPA call as without it)
        p = self.attention_dropout if self.training else 0.0
        if causal:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        B, _, T, _ = q.shape
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(out)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        q, k, v = self.project_qkv(x, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer_idx, k, v)
        T = q.shape[2]
        mask = None
        if past > 0 and T > 1:
            # New queries at positions past..past+T-1 see keys up to and including their own position.
            qpos = torch.arange(past, past + T, device=x.device)[:, None]
            kpos = torch.arange(past + T, device=x.device)[None, :]
            mask = kpos <= qpos
        return self.attend(q, k, v, mask, causal=past == 0)
