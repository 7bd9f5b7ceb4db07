"""Typed model configuration: `ModelConfig` (dense or MoE decoder) and `MoEConfig`.

Widths left as ``None`` follow the parameter-matching rules of the paper:

* dense MLP: ``polycom.matched_hidden_size(d_model, activation)`` (gated h = ceil(8d/3 / 64) * 64,
  plain h = 1.5 x gated; d = 2048 -> 5504 SwiGLU vs 8256 PolyNorm);
* MoE expert: gated h = ceil(d/2 / multiple_of) * multiple_of (OLMoE ``mlp_ratio`` 1), plain
  h = 1.5 x gated (d = 2048 -> 1024 SwiGLU vs 1536 PolyNorm, as the paper's MoE run).

An explicit width is used literally for whatever activation is chosen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from polycom.modules.activations import activation_spec, is_gated
from polycom.modules.mlp import matched_hidden_size, plain_hidden_size


def _round_up(value: float, multiple: int) -> int:
    return multiple * math.ceil(value / multiple)


@dataclass
class MoEConfig:
    """Mixture-of-experts MLP settings (OLMoE-style dropless top-k routing).

    num_experts: E experts per layer; top_k: experts per token (k <= E).
    expert_hidden_size: expert MLP width; None -> parameter-matched rule (module docstring).
    shared_coefficients: one PolyCom coefficient set per layer shared by all its experts (paper);
        False gives every expert its own coefficients.
    normalize_top_k: renormalise the k selected router probabilities to sum to 1. Default False,
        as OLMoE (``norm_topk_prob = false``): the combine weights are the raw softmax probabilities.
    lb_loss_coef: weight of the load-balancing loss E * sum_e f_e * P_e.
    z_loss_coef: weight of the router z-loss mean_t(logsumexp(logits_t)**2).
    grouped_mm: run the expert matmuls with one `torch.nn.functional.grouped_mm` call each (bf16
        operands, e.g. under bf16 autocast; CUDA SM80+ or CPU) instead of a loop over experts; falls
        back to the loop when the operands are not bf16. Same numbers up to bf16 rounding.
    expert_bias: the router holds a buffer ``expert_bias`` (E,) added to the probabilities for the top-k
        choice only (the combine weights stay the unbiased probabilities): the auxiliary-loss-free load
        balancing of torchtitan's MoE, whose checkpoints carry it. polycom's trainer does not update it.
    """

    num_experts: int = 8
    top_k: int = 2
    expert_hidden_size: int | None = None
    shared_coefficients: bool = True
    normalize_top_k: bool = False
    lb_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    grouped_mm: bool = False
    expert_bias: bool = False

    def validate(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"moe.num_experts must be >= 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"moe.top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.expert_hidden_size is not None and self.expert_hidden_size < 1:
            raise ValueError(f"moe.expert_hidden_size must be >= 1 or None, got {self.expert_hidden_size}")
        if self.lb_loss_coef < 0 or self.z_loss_coef < 0:
            raise ValueError(
                f"moe loss coefficients must be >= 0, got lb_loss_coef={self.lb_loss_coef}, "
                f"z_loss_coef={self.z_loss_coef}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MoEConfig:
        _check_keys(cls, d, "moe.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelConfig:
    """Decoder-only LM: Llama-style dense blocks, or OLMoE-style MoE blocks when `moe` is set.

    vocab_size, d_model, n_layers, n_heads: the usual sizes (head_dim = d_model / n_heads, even).
    n_kv_heads: key/value heads; None -> n_heads (MHA), fewer -> grouped-query attention.
    max_seq_len: longest sequence the model accepts (RoPE has no learned table, this is a guard).
    activation / activation_order: registry name; PolyCom order r (ignored by other activations).
    activation_options: further constructor options of the activation, e.g. ``{"eps": 1e-5}`` or, for the
        general ``polycom``, ``{"base": "silu", "composition": 2}``; unknown options raise ValueError.
    hidden_size: dense MLP width; None -> parameter-matched (module docstring).
    tie_embeddings: reuse `embed.weight` as the output projection (no `lm_head`).
    qk_norm: RMSNorm on the full q and k projections before RoPE (OLMoE); default off (Llama).
    qk_norm_per_head: with qk_norm, normalise each head's q and k over head_dim instead (Qwen3, torchtitan's
        QK-norm; one gain vector of head_dim shared by the heads of q, one by those of k).
    fused_mlp: run PolyNorm / PolyReLU / SwiGLU dense MLP blocks as one autograd node that does not keep
        the activation output (`polycom.MLP(fused=...)`); False runs the modules one by one.
    init_std: std of the normal init; o_proj and down_proj use init_std / sqrt(2 * n_layers).
    init_truncation: truncate the normal init at +-k std (OLMoE: 3); 0 -> plain normal.
    attention_dropout / hidden_dropout: dropout on the attention probabilities / on the attention and MLP
        outputs before each residual add, in training only (Megatron's defaults are 0.1 / 0.1); 0 -> none.
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    max_seq_len: int = 256
    activation: str = "swiglu"
    activation_order: int = 3
    activation_options: dict[str, Any] = field(default_factory=dict)
    hidden_size: int | None = None
    multiple_of: int = 64
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    init_truncation: float = 0.0
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    qk_norm: bool = False
    qk_norm_per_head: bool = False
    fused_mlp: bool = True
    moe: MoEConfig | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = MoEConfig.from_dict(self.moe)
        self.validate()

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = d_model / n_heads = {self.head_dim} must be even for RoPE")
        kv = self.kv_heads
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be >= 1 and divide n_heads ({self.n_heads})")
        activation_spec(self.activation)  # unknown name -> ValueError listing the registry
        if self.activation_order < 1:
            raise ValueError(f"activation_order must be >= 1, got {self.activation_order}")
        if not isinstance(self.activation_options, dict):
            raise ValueError(f"activation_options must be a table of options, got {self.activation_options!r}")
        if "order" in self.activation_options:
            raise ValueError("activation_options cannot hold 'order'; set activation_order")
        try:
            activation_spec(self.activation).check_options(self.activation_kwargs())
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if self.hidden_size is not None and self.hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1 or None, got {self.hidden_size}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("rope_theta, norm_eps and init_std must be > 0")
        if self.init_truncation < 0 or not 0 <= self.attention_dropout < 1 or not 0 <= self.hidden_dropout < 1:
            raise ValueError(
                "init_truncation must be >= 0 and attention_dropout / hidden_dropout in [0, 1), got "
                f"{self.init_truncation}, {self.attention_dropout}, {self.hidden_dropout}"
            )
        if self.qk_norm_per_head and not self.qk_norm:
            raise ValueError("qk_norm_per_head needs qk_norm = true (it says over what q and k are normalised)")
        if self.moe is not None:
            if not isinstance(self.moe, MoEConfig):
                raise TypeError(f"moe must be a MoEConfig, a dict or None, got {type(self.moe).__name__}")
            self.moe.validate()

    # ----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def activation_name(self) -> str:
        return self.activation.strip().lower()

    @property
    def gated(self) -> bool:
        return is_gated(self.activation)

    def activation_kwargs(self) -> dict[str, Any]:
        """Options for `polycom.get_activation`: ``{"order": r}`` for PolyCom activations, then `activation_options`."""
        order = {"order": self.activation_order} if activation_spec(self.activation).is_polycom else {}
        return order | dict(self.activation_options)

    def mlp_hidden_size(self) -> int:
        """Resolved dense MLP width."""
        if self.hidden_size is not None:
            return self.hidden_size
        return matched_hidden_size(self.d_model, self.activation, self.multiple_of)

    def expert_hidden_size(self) -> int:
        """Resolved MoE expert width (gated d/2 rounded up to multiple_of; plain 1.5 x that)."""
        if self.moe is None:
            raise ValueError("expert_hidden_size() needs a MoE config (moe is None)")
        if self.moe.expert_hidden_size is not None:
            return self.moe.expert_hidden_size
        gated = _round_up(self.d_model / 2, self.multiple_of)
        return gated if self.gated else plain_hidden_size(gated)

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["moe"] = None if self.moe is None else self.moe.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict (e.g. JSON); an unknown key raises ValueError listing the valid keys."""
        if not isinstance(d, dict):
            raise TypeError(f"model config must be a dict, got {type(d).__name__}")
        _check_keys(cls, d, "")
        d = dict(d)
        moe = d.get("moe")
        if isinstance(moe, dict):
            d["moe"] = MoEConfig.from_dict(moe)
        return cls(**d)


def _check_keys(cls, d: dict, prefix: str) -> None:
    valid = [f.name for f in fields(cls)]
    unknown = sorted(k for k in d if k not in valid)
    if unknown:
        raise ValueError(
            f"unknown model config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys: {', '.join(prefix + k for k in valid)}"
        )
