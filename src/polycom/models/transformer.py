"""The decoder-only language model `PolyComLM` (dense Llama-style or OLMoE-style MoE blocks).

    h_0 = embed(ids)
    a   = h + attn(attn_norm(h))              (pre-RMSNorm, RoPE, causal SDPA)
    h'  = a + mlp(mlp_norm(a))                (polycom.MLP, or MoEMLP when config.moe is set)
    logits = lm_head(norm(h_L))               (lm_head = embed.weight when tied)

Init (`init_weights`): every matrix ~ N(0, init_std**2); o_proj and down_proj (dense and experts)
~ N(0, (init_std / sqrt(2 n_layers))**2); norm gains 1; PolyCom coefficients their own init
(weight 1/r, bias 0). The dense MLP's construction and init leave the random generator where the
parameter-matched SwiGLU MLP's would, so the shared parts (embeddings, attention, norms, output layer) start
bitwise identical for every activation, order or MLP width with the same seed.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polycom.models.attention import Attention, KVCache
from polycom.models.config import ModelConfig
from polycom.models.generation import generate as _generate
from polycom.models.layers import RMSNorm, rope_tables
from polycom.models.moe import MoEMLP, RouterStats
from polycom.modules.mlp import MLP, gated_hidden_size
from polycom.modules.polycom import is_polycom_module


@dataclass
class LMOutput:
    """Result of `PolyComLM.forward`.

    logits (B, T, V); loss = ce_loss + aux_loss (None without targets); ce_loss mean token cross-entropy
    in nats over positions whose target != -100; aux_loss = lb_coef * lb_loss + z_coef * z_loss
    (0 for dense); lb_loss / z_loss unweighted, averaged over MoE layers (None for dense);
    tokens_per_expert: per MoE layer a (E,) tensor of (token, expert) assignments (None for dense).
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    lb_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    tokens_per_expert: list[torch.Tensor] | None = None


class Block(nn.Module):
    """One pre-norm transformer block. forward(x (B,T,d), cos, sin, cache) -> (x, RouterStats | None)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.hidden_dropout = cfg.hidden_dropout
        if cfg.is_moe:
            self.mlp = MoEMLP(cfg)
        else:
            device = torch.empty(0).device  # where nn.Linear draws its construction-time init
            with _rng_as_after(device, lambda: _replay_reference_construction(cfg, device)):
                self.mlp = MLP(
                    cfg.d_model,
                    cfg.activation,
                    cfg.mlp_hidden_size(),
                    multiple_of=cfg.multiple_of,
                    activation_kwargs=cfg.activation_kwargs() or None,
                    fused=cfg.fused_mlp,
                )

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, RouterStats | None]:
        x = x + self._dropout(self.attn(self.attn_norm(x), cos, sin, cache))
        out = self.mlp(self.mlp_norm(x))
        stats = None
        if isinstance(out, tuple):
            out, stats = out
        return x + self._dropout(out), stats

    def _dropout(self, y: torch.Tensor) -> torch.Tensor:
        # Megatron's hidden dropout; skipped entirely at p = 0 (no random draws, bit-identical runs).
        return F.dropout(y, self.hidden_dropout, training=True) if self.hidden_dropout and self.training else y


class PolyComLM(nn.Module):
    """Decoder-only LM. forward(input_ids (B, T), targets (B, T) | None) -> LMOutput."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.init_weights()

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter (see module docstring). Safe on the meta device."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        trunc = self.config.init_truncation
        _init_normal(self.embed.weight, std, trunc)
        if self.lm_head is not None:
            _init_normal(self.lm_head.weight, std, trunc)
        for module in self.modules():
            if isinstance(module, RMSNorm) or is_polycom_module(module):  # PolyCom keeps its init (1/r, 0)
                module.reset_parameters()
        for block in self.layers:
            attn = block.attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                _init_normal(proj.weight, std, trunc)
            _init_normal(attn.o_proj.weight, out_std, trunc)
            mlp = block.mlp
            if isinstance(mlp, MoEMLP):
                _init_normal(mlp.router.weight, std, trunc)
                experts = mlp.experts
                for w in (experts.gate_proj, experts.up_proj):
                    if w is not None:
                        _init_normal(w, std, trunc)
                _init_normal(experts.down_proj, out_std, trunc)
            else:
                device = mlp.down_proj.weight.device
                with _rng_as_after(device, lambda device=device: _replay_reference_init(self.config, device)):
                    for proj in (mlp.gate_proj, mlp.up_proj):
                        if proj is not None:
                            _init_normal(proj.weight, std, trunc)
                    _init_normal(mlp.down_proj.weight, out_std, trunc)

    # ----------------------------------------------------------------------------------------------
    @property
    def output_weight(self) -> torch.Tensor:
        """The (V, d) output projection: lm_head.weight, or embed.weight when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self, input_ids: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None
    ) -> LMOutput:
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"input_ids must be a (B, T) integer tensor, got {tuple(input_ids.shape)} {input_ids.dtype}"
            )
        B, T = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + T > self.config.max_seq_len:
            raise ValueError(f"sequence length {past + T} exceeds the model's max_seq_len {self.config.max_seq_len}")
        positions = torch.arange(past, past + T, device=input_ids.device)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)

        x = self.embed(input_ids)
        router_stats: list[RouterStats] = []
        for block in self.layers:
            x, stats = block(x, cos, sin, cache)
            if stats is not None:
                router_stats.append(stats)
        if cache is not None:
            cache.length += T
        x = self.norm(x)
        logits = F.linear(x, self.output_weight)

        out = LMOutput(logits=logits)
        if router_stats:
            out.lb_loss = torch.stack([s.lb_loss for s in router_stats]).mean()
            out.z_loss = torch.stack([s.z_loss for s in router_stats]).mean()
            moe = self.config.moe
            out.aux_loss = moe.lb_loss_coef * out.lb_loss + moe.z_loss_coef * out.z_loss
            out.tokens_per_expert = [s.tokens_per_expert for s in router_stats]
        else:
            out.aux_loss = torch.zeros((), device=logits.device)
        if targets is not None:
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {tuple(input_ids.shape)}")
            out.ce_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
            out.loss = out.ce_loss + out.aux_loss
        return out

    # ----------------------------------------------------------------------------------------------
    def num_parameters(self, non_embedding: bool = False) -> int:
        """All parameters (a tied matrix once); `non_embedding` leaves out embed and lm_head."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embed.weight.numel()
            if self.lm_head is not None:
                total -= self.lm_head.weight.numel()
        return total

    def num_active_parameters(self, non_embedding: bool = False) -> int:
        """Parameters used per token: for MoE only top_k of the E experts' weights count."""
        total = self.num_parameters(non_embedding)
        moe = self.config.moe
        if moe is not None:
            for block in self.layers:
                expert_params = sum(p.numel() for p in block.mlp.experts.parameters())
                total -= expert_params * (moe.num_experts - moe.top_k) // moe.num_experts
        return total

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 * N_active (without the input embedding) + 12 * L * d * T.

        The first term counts the matmuls of forward + backward (lm_head included, the embedding
        lookup is not a matmul); the second the attention scores and weighted sum (PaLM convention,
        without halving for the causal mask). T defaults to max_seq_len.
        """
        T = self.config.max_seq_len if seq_len is None else seq_len
        n = self.num_active_parameters(non_embedding=True) + self.output_weight.numel()
        return 6.0 * n + 12.0 * self.config.n_layers * self.config.d_model * T

    # ----------------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `max_len` (default max_seq_len) tokens."""
        cfg = self.config
        p = self.embed.weight
        # the heads this process computes: under tensor parallelism each rank holds kv_heads / tp of them
        kv_heads = self.layers[0].attn.n_kv_heads if len(self.layers) else cfg.kv_heads
        return KVCache(
            cfg.n_layers,
            batch_size,
            kv_heads,
            max_len or cfg.max_seq_len,
            cfg.head_dim,
            device=p.device,
            dtype=dtype,
        )

    # sampling lives in polycom.models.generation; as a method, `model.generate(input_ids, max_new_tokens, ...)`
    generate = _generate


def _init_normal(weight: torch.Tensor, std: float, truncation: float) -> None:
    """N(0, std**2) in place; with truncation k > 0 truncated to [-k std, k std] (OLMoE's init)."""
    if truncation > 0:
        nn.init.trunc_normal_(weight, 0.0, std, -truncation * std, truncation * std)
    else:
        nn.init.normal_(weight, 0.0, std)


@contextmanager
def _rng_as_after(device: torch.device, replay):
    """Run the body, then rewind the random generator of `device` and run `replay` instead.

    Used around the dense MLP's construction and init with `replay` = the same step for the parameter-matched
    SwiGLU MLP (gate and up (h, d), down (d, h), h = `gated_hidden_size`): the MLP's own weights come from
    the current state whatever its width or activation, but every later draw (the next block's attention,
    the output layer, ...) is the same for every arm of a comparison (other activation, order, options or
    explicit width), so the shared parts start bitwise identical. For the parameter-matched widths this
    changes nothing (the same number of draws).
    """
    if device.type not in ("cpu", "cuda"):  # meta: nothing is drawn
        yield
        return
    cuda = device.type == "cuda"
    state = torch.cuda.get_rng_state(device) if cuda else torch.get_rng_state()
    yield
    if cuda:
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
    replay()


def _reference_shapes(cfg: ModelConfig) -> tuple[tuple[int, int], ...]:
    h, d = gated_hidden_size(cfg.d_model, cfg.multiple_of), cfg.d_model
    return ((h, d), (h, d), (d, h))


def _replay_reference_construction(cfg: ModelConfig, device: torch.device) -> None:
    for out_features, in_features in _reference_shapes(cfg):
        nn.Linear(in_features, out_features, bias=False, device=device)


def _replay_reference_init(cfg: ModelConfig, device: torch.device) -> None:
    for shape in _reference_shapes(cfg):
        _init_normal(torch.empty(shape, device=device), 1.0, cfg.init_truncation)


def build_model(cfg: ModelConfig, device: torch.device | str | None = None) -> PolyComLM:
    """Build and initialise a `PolyComLM` for `cfg` (on `device`; "meta" for shape-only counting)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(cfg).__name__}")
    if device is None:
        return PolyComLM(cfg)
    with torch.device(device):
        return PolyComLM(cfg)
