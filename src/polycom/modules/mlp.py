"""The transformer feed-forward block with any registered activation, parameter-matched.

Gated (``*glu``):  y = down_proj(act(gate_proj(x), up_proj(x)))   three (d x h) matrices
Plain:             y = down_proj(act(up_proj(x)))                  two (d x h) matrices

Default widths follow the paper: gated h = 8/3 d rounded up to a multiple of `multiple_of`
(64), plain h = 1.5 x the gated width, so both hold 3 d h_gated = 2 d h_plain weights
(d = 2048: 5504 gated vs 8256 plain).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from polycom.modules.activations import activation_names, get_activation, is_gated


def gated_hidden_size(d_model: int, multiple_of: int = 64) -> int:
    """8/3 * d_model rounded up to a multiple of `multiple_of` (Llama rule; 2048 -> 5504)."""
    if d_model < 1 or multiple_of < 1:
        raise ValueError(f"d_model and multiple_of must be >= 1, got {d_model} and {multiple_of}")
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


def matched_hidden_size(d_model: int, activation: str | nn.Module, multiple_of: int = 64) -> int:
    """The parameter-matched hidden width for `activation` at `d_model` (gated rule x 1.5 if plain)."""
    gated = gated_hidden_size(d_model, multiple_of)
    return gated if is_gated(activation) else (3 * gated) // 2


class MLP(nn.Module):
    """Feed-forward block (see module docstring). Input (..., d_model) -> (..., d_model).

    `activation` is a registry name or an activation module (pass one module to several MLPs to
    share its PolyCom coefficients, as the paper's MoE experts do). No linear biases by default.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))
        return self.down_proj(self.act(self.up_proj(x)))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, hidden_size={self.hidden_size}, gated={self.gated}"


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
