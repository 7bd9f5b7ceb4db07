"""The transformer feed-forward block with any registered activation, parameter-matched.

Gated (``*glu``):  y = down_proj(act(gate_proj(x), up_proj(x)))   three (d x h) matrices
Plain:             y = down_proj(act(up_proj(x)))                  two (d x h) matrices

Default widths follow the paper: gated h = 8/3 d rounded up to a multiple of `multiple_of`
(64), plain h = 1.5 x the gated width, so both hold 3 d h_gated = 2 d h_plain weights
(d = 2048: 5504 gated vs 8256 plain).

With ``fused=True`` (default) a PolyNorm, PolyReLU (plain or gated) or SwiGLU block runs as one autograd
node (`polycom.ops.fused_mlp`) that keeps x and the hidden pre-activations for backward but not the
activation output; ``fused=False`` runs the three modules one after the other. Blocks whose
projections carry hooks or are not plain ``nn.Linear`` (e.g. adapters), DTensor (tensor-parallel)
weights or inputs, and other activations always take the unfused path, so wrappers keep working.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polycom.modules.activations import SwiGLU, activation_names, get_activation, is_gated
from polycom.modules.polycom import PolyNorm, PolyNormGated, PolyReLU, PolyReLUGated
from polycom.ops.fused_mlp import fused_mlp

# Activation modules (exact types) that have a fused MLP path, and its name for `fused_mlp`.
_FUSED_KINDS = {PolyNorm: "polynorm", PolyNormGated: "polynorm", PolyReLU: "polyrelu", PolyReLUGated: "polyrelu",
                SwiGLU: "swiglu"}  # fmt: skip


def gated_hidden_size(d_model: int, multiple_of: int = 64) -> int:
    """8/3 * d_model rounded up to a multiple of `multiple_of` (Llama rule; 2048 -> 5504)."""
    if d_model < 1 or multiple_of < 1:
        raise ValueError(f"d_model and multiple_of must be >= 1, got {d_model} and {multiple_of}")
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


def plain_hidden_size(gated_width: int) -> int:
    """The plain (two-matrix) MLP width with the parameters of a gated (three-matrix) MLP of `gated_width`:
    3 d h_gated = 2 d h_plain, so h_plain = 1.5 h_gated (rounded down for an odd width)."""
    if gated_width < 1:
        raise ValueError(f"gated_width must be >= 1, got {gated_width}")
    return (3 * gated_width) // 2


def matched_hidden_size(d_model: int, activation: str | nn.Module, multiple_of: int = 64) -> int:
    """The parameter-matched hidden width for `activation` at `d_model` (gated rule x 1.5 if plain)."""
    gated = gated_hidden_size(d_model, multiple_of)
    return gated if is_gated(activation) else plain_hidden_size(gated)


class MLP(nn.Module):
    """Feed-forward block (see module docstring). Input (..., d_model) -> (..., d_model).

    `activation` is a registry name or an activation module (pass one module to several MLPs to
    share its PolyCom coefficients, as the paper's MoE experts do). No linear biases by default.
    `fused`: use the fused autograd path where it applies (module docstring); same outputs up to the
    activation's fp32 rounding, less memory kept for backward.
    """

    def __init__(
        self,
        d_model: int,
        activation: str | nn.Module = "swiglu",
        hidden_size: int | None = None,
        *,
        multiple_of: int = 64,
        bias: bool = False,
        activation_kwargs: dict | None = None,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(activation, nn.Module):
            if activation_kwargs:
                raise ValueError("activation_kwargs only apply when activation is given by name")
            self.act = activation
            self.activation_name = type(activation).__name__.lower()
        else:
            self.act = get_activation(activation, **(activation_kwargs or {}))
            self.activation_name = activation.strip().lower()
        self.gated = is_gated(self.act)
        if hidden_size is None:
            hidden_size = matched_hidden_size(d_model, self.act, multiple_of)
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.d_model = d_model
        self.hidden_size = hidden_size
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.gate_proj = nn.Linear(d_model, hidden_size, **kw) if self.gated else None
        self.up_proj = nn.Linear(d_model, hidden_size, **kw)
        self.down_proj = nn.Linear(hidden_size, d_model, **kw)
        self.fused = bool(fused)

    def _fused_kind(self, x: torch.Tensor) -> str | None:
        """The `fused_mlp` activation name when the fused path applies to this call, else None."""
        kind = _FUSED_KINDS.get(type(self.act))
        if not self.fused or kind is None:
            return None
        parts = [self.act, self.up_proj, self.down_proj] + ([self.gate_proj] if self.gate_proj is not None else [])
        for m in parts:
            if m is not self.act and type(m) is not nn.Linear:
                return None
            if m._forward_hooks or m._forward_pre_hooks:
                return None
        if _is_dtensor(x) or any(_is_dtensor(p) for p in self.parameters()):
            return None  # tensor parallel: the projections' DTensor layouts and PolyNorm's all-reduce
        return kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kind = self._fused_kind(x)
        if kind is not None:
            coefficients = (self.act.weight, self.act.bias) if kind != "swiglu" else (None, None)
            gate = self.gate_proj
            return fused_mlp(
                x, self.up_proj.weight, self.down_proj.weight, kind,
                gate_w=gate.weight if gate is not None else None,
                biases=(gate.bias if gate is not None else None, self.up_proj.bias, self.down_proj.bias),
                act_w=coefficients[0], act_b=coefficients[1], eps=getattr(self.act, "eps", 1e-6),
            )  # fmt: skip
        if self.gate_proj is not None:
            return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(self.act(self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden_size={self.hidden_size}, gated={self.gated}, fused={self.fused}"


try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # torch built without distributed support
    _DTensor = None


def _is_dtensor(t: object) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def mlp_param_count(d_model: int, activation: str, hidden_size: int | None = None, multiple_of: int = 64) -> int:
    """Parameters of one `MLP(d_model, activation)` (linear weights + activation coefficients)."""
    with torch.device("meta"):
        mlp = MLP(d_model, activation, hidden_size, multiple_of=multiple_of)
    return sum(p.numel() for p in mlp.parameters())


def mlp_param_table(d_model: int, activations: list[str] | None = None, multiple_of: int = 64) -> dict[str, dict]:
    """Per activation: hidden width, parameter count and ratio to SwiGLU at `d_model`."""
    names = activations or activation_names()
    base = mlp_param_count(d_model, "swiglu", multiple_of=multiple_of)
    table = {}
    for name in names:
        params = mlp_param_count(d_model, name, multiple_of=multiple_of)
        table[name] = {
            "hidden_size": matched_hidden_size(d_model, name, multiple_of),
            "params": params,
            "ratio_to_swiglu": params / base,
        }
    return table
