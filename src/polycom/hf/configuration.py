"""`PolyComConfig`: the transformers config of `PolyComForCausalLM` (``model_type = "polycom"``).

Field names follow the transformers conventions (``hidden_size`` = model width d,
``intermediate_size`` = MLP width h, ...) so generic tools (generation, caches, lm-eval) find what
they look for. Every width is stored resolved (no parameter-matching rule is re-applied on load), and
`to_model_config` / `from_model_config` convert one to one to the harness `polycom.models.ModelConfig`.

| PolyComConfig | ModelConfig |
|---|---|
| vocab_size, hidden_size, num_hidden_layers | vocab_size, d_model, n_layers |
| num_attention_heads, num_key_value_heads | n_heads, n_kv_heads (resolved) |
| max_position_embeddings | max_seq_len |
| activation, activation_order, intermediate_size | activation, activation_order, hidden_size (resolved) |
| activation_options | activation_options |
| rms_norm_eps, rope_theta, initializer_range | norm_eps, rope_theta, init_std |
| initializer_truncation | init_truncation |
| attention_dropout, hidden_dropout | attention_dropout, hidden_dropout |
| tie_word_embeddings, qk_norm, qk_norm_per_head | tie_embeddings, qk_norm, qk_norm_per_head |
| fused_mlp | fused_mlp |
| num_experts (0 = dense), num_experts_per_tok, moe_intermediate_size | moe.num_experts, moe.top_k, expert width |
| moe_shared_coefficients, moe_normalize_top_k | moe.shared_coefficients, moe.normalize_top_k |
| router_aux_loss_coef, router_z_loss_coef | moe.lb_loss_coef, moe.z_loss_coef |
| moe_grouped_mm, moe_expert_bias | moe.grouped_mm, moe.expert_bias |

Not stored: ``multiple_of``, which only rounds the parameter-matched widths; the widths are stored
resolved, so ``to_model_config`` gives the default ``multiple_of`` and the same model.

``activation_options`` are the activation's constructor options besides the order (PolyNorm's
``{"eps": 1e-5}``, the general ``polycom``'s ``{"base": "silu", "composition": 2, "normalize": true}``),
passed to every dense MLP and MoE activation; they must be JSON values (str, int, float, bool) since
they are saved in config.json. ``initializer_truncation`` k > 0 draws the normal init truncated to
[-k std, k std] (OLMoE: 3). ``attention_dropout`` / ``hidden_dropout`` act in training only (on the
attention probabilities / on the attention and MLP outputs before each residual add).

``fused_mlp`` (default True) runs each dense PolyNorm / PolyReLU (plain or gated) / SwiGLU MLP block
as one autograd node that recomputes the activation output in backward instead of keeping it
(`polycom.MLP(fused=...)`); False runs the modules one by one. Same outputs up to fp32 rounding; MoE
experts always run unfused. Saved in config.json like every field but not part of the weights:
``from_pretrained(folder, fused_mlp=False)`` overrides the saved value.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from polycom.modules.activations import activation_spec


class PolyComConfig(PretrainedConfig):
    """Configuration of a PolyCom decoder (dense Llama-style or OLMoE-style MoE); see module docstring."""

    model_type = "polycom"
    keys_to_ignore_at_inference = ["cache"]

    def __init__(
        self,
        vocab_size: int = 256,
        hidden_size: int = 128,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 256,
        activation: str = "swiglu",
        activation_order: int = 3,
        activation_options: dict[str, Any] | None = None,
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        initializer_range: float = 0.02,
        initializer_truncation: float = 0.0,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        qk_norm: bool = False,
        qk_norm_per_head: bool = False,
        num_experts: int = 0,
        num_experts_per_tok: int = 2,
        moe_intermediate_size: int | None = None,
        moe_shared_coefficients: bool = True,
        moe_normalize_top_k: bool = False,
        router_aux_loss_coef: float = 0.01,
        router_z_loss_coef: float = 0.001,
        moe_grouped_mm: bool = False,
        moe_expert_bias: bool = False,
        tie_word_embeddings: bool = False,
        fused_mlp: bool = True,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        activation_spec(activation)  # unknown name -> ValueError listing the registry
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.max_position_embeddings = max_position_embeddings
        self.activation = activation.strip().lower()
        self.activation_order = activation_order
        self.activation_options = _json_options(activation_options)
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.initializer_truncation = initializer_truncation
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.qk_norm = qk_norm
        self.qk_norm_per_head = bool(qk_norm_per_head)
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_shared_coefficients = moe_shared_coefficients
        self.moe_normalize_top_k = moe_normalize_top_k
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_z_loss_coef = router_z_loss_coef
        self.moe_grouped_mm = bool(moe_grouped_mm)
        self.moe_expert_bias = bool(moe_expert_bias)
        self.fused_mlp = bool(fused_mlp)
        self.use_cache = use_cache
        self.head_dim = hidden_size // num_attention_heads
        # Resolve the widths once through the harness rules, then store them literally.
        resolved = self.to_model_config(
            intermediate_size=intermediate_size, moe_intermediate_size=moe_intermediate_size
        )
        self.intermediate_size = resolved.mlp_hidden_size()
        self.moe_intermediate_size = resolved.expert_hidden_size() if resolved.is_moe else moe_intermediate_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def to_model_config(self, **overrides: Any):
        """The equivalent harness `polycom.models.ModelConfig` (validated)."""
        from polycom.models import ModelConfig, MoEConfig

        intermediate = overrides.get("intermediate_size", getattr(self, "intermediate_size", None))
        expert_width = overrides.get("moe_intermediate_size", getattr(self, "moe_intermediate_size", None))
        moe = None
        if self.num_experts > 0:
            moe = MoEConfig(
                num_experts=self.num_experts,
                top_k=self.num_experts_per_tok,
                expert_hidden_size=expert_width,
                shared_coefficients=self.moe_shared_coefficients,
                normalize_top_k=self.moe_normalize_top_k,
                lb_loss_coef=self.router_aux_loss_coef,
                z_loss_coef=self.router_z_loss_coef,
                grouped_mm=self.moe_grouped_mm,
                expert_bias=bool(getattr(self, "moe_expert_bias", False)),
            )
        return ModelConfig(
            vocab_size=self.vocab_size,
            d_model=self.hidden_size,
            n_layers=self.num_hidden_layers,
            n_heads=self.num_attention_heads,
            n_kv_heads=self.num_key_value_heads,
            max_seq_len=self.max_position_embeddings,
            activation=self.activation,
            activation_order=self.activation_order,
            activation_options=dict(self.activation_options),
            hidden_size=intermediate,
            tie_embeddings=bool(getattr(self, "tie_word_embeddings", False)),
            rope_theta=self.rope_theta,
            norm_eps=self.rms_norm_eps,
            init_std=self.initializer_range,
            init_truncation=self.initializer_truncation,
            attention_dropout=self.attention_dropout,
            hidden_dropout=self.hidden_dropout,
            qk_norm=self.qk_norm,
            qk_norm_per_head=bool(getattr(self, "qk_norm_per_head", False)),
            fused_mlp=self.fused_mlp,
            moe=moe,
        )

    @classmethod
    def from_model_config(cls, cfg, **kwargs: Any) -> PolyComConfig:
        """Build from a harness `ModelConfig` (all widths resolved); extra kwargs (e.g. eos_token_id) pass through."""
        moe = cfg.moe
        return cls(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.mlp_hidden_size(),
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.kv_heads,
            max_position_embeddings=cfg.max_seq_len,
            activation=cfg.activation,
            activation_order=cfg.activation_order,
            activation_options=cfg.activation_options,
            rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta,
            initializer_range=cfg.init_std,
            initializer_truncation=cfg.init_truncation,
            attention_dropout=cfg.attention_dropout,
            hidden_dropout=cfg.hidden_dropout,
            qk_norm=cfg.qk_norm,
            qk_norm_per_head=cfg.qk_norm_per_head,
            num_experts=0 if moe is None else moe.num_experts,
            num_experts_per_tok=2 if moe is None else moe.top_k,
            moe_intermediate_size=None if moe is None else cfg.expert_hidden_size(),
            moe_shared_coefficients=True if moe is None else moe.shared_coefficients,
            moe_normalize_top_k=False if moe is None else moe.normalize_top_k,
            router_aux_loss_coef=0.01 if moe is None else moe.lb_loss_coef,
            router_z_loss_coef=0.001 if moe is None else moe.z_loss_coef,
            moe_grouped_mm=False if moe is None else moe.grouped_mm,
            moe_expert_bias=False if moe is None else moe.expert_bias,
            tie_word_embeddings=cfg.tie_embeddings,
            fused_mlp=cfg.fused_mlp,
            **kwargs,
        )


_JSON_SCALARS = (str, int, float, bool)


def _json_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `options` (None -> {}); ValueError unless it maps names to str / int / float / bool.

    Checked here because config.json has to hold them: anything else would fail only at
    save_pretrained, or come back as a different type from_pretrained.
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"activation_options must be a dict of options, got {options!r}")
    bad = {k: v for k, v in options.items() if not isinstance(k, str) or not isinstance(v, _JSON_SCALARS)}
    if bad:
        raise ValueError(f"activation_options must map option names to str, int, float or bool values, got {bad!r}")
    return dict(options)
