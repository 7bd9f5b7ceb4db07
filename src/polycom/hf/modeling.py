"""`PolyComForCausalLM`: the harness decoder (`polycom.models.PolyComLM`) as a transformers model.

Same architecture and parameters, computed by the same building blocks (`polycom.MLP`, the harness
`MoEMLP`, `RMSNorm`, `rope_tables` / `apply_rope`), so a harness checkpoint loads one to one:

    harness key  X           ->  HF key  model.X        (embed, layers.{i}.*, norm)
    harness key  lm_head.weight  ->  HF key  lm_head.weight (tied to model.embed.weight when tie_word_embeddings)

What transformers adds: a `Cache` (``DynamicCache``) for ``generate()``, 2-D padding masks
(``attention_mask``), position ids derived from the mask for left-padded batches, the HF loss
convention (``labels`` = ``input_ids``, shifted inside; loss = mean token cross-entropy + MoE
auxiliary loss, as the harness), safetensors ``save_pretrained`` / ``from_pretrained``.

Per block:  a = h + drop(o_proj(attn(RoPE(q), RoPE(k), v)))    on attn_norm(h)
            h' = a + drop(mlp(mlp_norm(a)))                    (dense MLP or MoE)

drop = dropout with p = hidden_dropout in training only (identity at p = 0 or in eval), as the
harness `Block`; every option of the block (activation options, dropouts, fused MLP, grouped_mm)
comes from the one converted `config.to_model_config()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, MoeCausalLMOutputWithPast

from polycom.hf.configuration import PolyComConfig
from polycom.models.attention import Attention
from polycom.models.layers import RMSNorm, rope_tables
from polycom.models.moe import Experts, MoEMLP
from polycom.modules.general_polycom import PRELU_SLOPE_INIT
from polycom.modules.mlp import MLP
from polycom.modules.polycom import PolyCoefficients


@dataclass
class PolyComModelOutput(BaseModelOutputWithPast):
    """`BaseModelOutputWithPast` plus the MoE layers' `RouterStats` (empty list for dense models)."""

    router_stats: list | None = None


def rope_for_positions(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, 1, T, head_dim) for position ids (B, T), from the harness `rope_tables` (same values)."""
    B, T = position_ids.shape
    cos, sin = rope_tables(position_ids.reshape(-1), head_dim, theta)
    return cos.view(B, 1, T, head_dim), sin.view(B, 1, T, head_dim)


class PolyComAttention(Attention):
    """The harness attention (`polycom.models.Attention`: same parameters, projections, RoPE and SDPA)
    with a transformers `Cache` and the 4-D padding/causal mask built by `PolyComModel`.
    x (B, T, d) -> (B, T, d).
    """

    def __init__(self, config: PolyComConfig, layer_idx: int) -> None:
        super().__init__(config.to_model_config(), layer_idx)
        self.o_proj._polycom_output_proj = True  # scaled init (see PolyComPreTrainedModel._init_weights)

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        q, k, v = self.project_qkv(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        # no padding mask and no past: the plain causal path, as the harness model
        return self.attend(q, k, v, mask, causal=mask is None)


class PolyComDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block; names as the harness `Block` (attn_norm, attn, mlp_norm, mlp).

    A `GradientCheckpointingLayer`: ``model.gradient_checkpointing_enable()`` recomputes each block
    in the backward pass (the KV cache is dropped while training with checkpointing).
    """

    def __init__(self, config: PolyComConfig, layer_idx: int) -> None:
        super().__init__()
        mc = config.to_model_config()  # activation options, dropout, fused_mlp, grouped_mm as the harness reads them
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = PolyComAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hidden_dropout = mc.hidden_dropout
        if config.is_moe:
            self.mlp = MoEMLP(mc)
        else:
            self.mlp = MLP(
                config.hidden_size,
                config.activation,
                config.intermediate_size,
                activation_kwargs=mc.activation_kwargs() or None,
                fused=mc.fused_mlp,  # PolyComConfig(fused_mlp=False) runs the modules one by one
            )
            self.mlp.down_proj._polycom_output_proj = True

    def forward(self, x, cos, sin, mask=None, cache=None):
        x = x + self._dropout(self.attn(self.attn_norm(x), cos, sin, mask, cache))
        out = self.mlp(self.mlp_norm(x))
        stats = None
        if isinstance(out, tuple):
            out, stats = out
        return x + self._dropout(out), stats

    def _dropout(self, y: torch.Tensor) -> torch.Tensor:
        # the harness Block's hidden dropout, in the same order (same random draws under one seed);
        # skipped at p = 0 so runs without it draw nothing
        return F.dropout(y, self.hidden_dropout, training=True) if self.hidden_dropout and self.training else y


class PolyComPreTrainedModel(PreTrainedModel):
    config_class = PolyComConfig
    config: PolyComConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PolyComDecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Harness init: N(0, std^2); o_proj/down_proj N(0, (std / sqrt(2 L))^2); norms 1; PolyCom 1/r, 0 (and
        a general PolyCom's PReLU slope 0.25).

        With initializer_truncation k > 0 every normal draw is truncated to [-k s, k s] for its std s.
        """
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        if isinstance(module, nn.Linear):
            self._normal(module.weight, out_std if getattr(module, "_polycom_output_proj", False) else std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            self._normal(module.weight, std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, PolyCoefficients):
            init.constant_(module.weight, 1.0 / module.order)
            init.zeros_(module.bias)
            if getattr(module, "prelu_weight", None) is not None:  # general PolyCom with base prelu: its slope
                init.constant_(module.prelu_weight, PRELU_SLOPE_INIT)
        elif isinstance(module, Experts):
            for w in (module.gate_proj, module.up_proj):
                if w is not None:
                    self._normal(w, std)
            self._normal(module.down_proj, out_std)

    def _normal(self, weight: torch.Tensor, std: float) -> None:
        """N(0, std^2) in place, truncated at +-k std for k = initializer_truncation > 0 (the harness rule)."""
        k = self.config.initializer_truncation
        if k > 0:
            init.trunc_normal_(weight, 0.0, std, -k * std, k * std)
        else:
            init.normal_(weight, 0.0, std)


class PolyComModel(PolyComPreTrainedModel):
    """The decoder without the output head: embed -> blocks -> final norm. Names as the harness model."""

    def __init__(self, config: PolyComConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PolyComDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> PolyComModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        cache = cache if cache is not None else past_key_values
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = self._positions(position_ids, attention_mask, B, T, past, x.device)
        cos, sin = rope_for_positions(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = self._attention_mask(attention_mask, B, T, past, x.device)

        aux_stats = []
        for layer in self.layers:
            x, stats = layer(x, cos, sin, mask=mask, cache=cache)
            if stats is not None:
                aux_stats.append(stats)
        x = self.norm(x)
        return PolyComModelOutput(last_hidden_state=x, cache=cache if use_cache else None, router_stats=aux_stats)

    @staticmethod
    def _positions(position_ids, attention_mask, B, T, past, device) -> torch.Tensor:
        if position_ids is not None:
            return position_ids.to(device).expand(B, T)
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            # left padding: a token's position counts only the real tokens before it
            pos = attention_mask.long().cumsum(-1) - 1
            return pos.clamp(min=0)[:, -T:].to(device)
        return torch.arange(past, past + T, device=device).expand(B, T)

    @staticmethod
    def _attention_mask(attention_mask, B, T, past, device) -> torch.Tensor | None:
        """None for the plain causal case; else a bool (B, 1, T, past + T) mask (True = attend)."""
        has_padding = attention_mask is not None and not bool(attention_mask.all())
        if past == 0 and not has_padding:
            return None
        qpos = torch.arange(past, past + T, device=device)[:, None]
        kpos = torch.arange(past + T, device=device)[None, :]
        mask = (kpos <= qpos)[None, None]  # (1, 1, T, S)
        if has_padding:
            keep = attention_mask.to(device=device, dtype=torch.bool)[:, -(past + T) :]
            mask = mask & keep[:, None, None, :]
            mask = mask | (kpos == qpos)[None, None]  # a padded query attends to itself: no all-masked row (NaN)
        return mask.expand(B, 1, T, past + T)


class PolyComForCausalLM(PolyComPreTrainedModel, GenerationMixin):
    """PolyCom decoder with the LM head. forward(input_ids, labels=...) -> MoeCausalLMOutputWithPast."""

    _tied_weights_keys = {"lm_head.weight": "model.embed.weight"}

    def __init__(self, config: PolyComConfig) -> None:
        super().__init__(config)
        self.model = PolyComModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> MoeCausalLMOutputWithPast:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)

        aux_loss = None
        stats = out.router_stats
        if stats:
            lb = torch.stack([s.lb_loss for s in stats]).mean()
            z = torch.stack([s.z_loss for s in stats]).mean()
            aux_loss = self.config.router_aux_loss_coef * lb + self.config.router_z_loss_coef * z
        loss = None
        if labels is not None:
            # HF convention: labels align with input_ids; predict token t+1 from position t. Loss in fp32.
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            loss = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
            if aux_loss is not None:
                loss = loss + aux_loss
        return MoeCausalLMOutputWithPast(loss=loss, aux_loss=aux_loss, logits=logits, cache=out.cache)
