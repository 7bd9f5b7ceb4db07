"""One parameter-matched MLP block, forward + backward: the block part of `polycom bench model`.

The block is ``polycom.MLP(d_model, activation, fused=...)`` (gated h = 8/3 d rounded to 64, plain
h = 1.5x that) on an input of (tokens, d_model) that requires grad, as inside the LM; one step is
forward and ``y.backward(dy)`` with a fixed dy, parameter gradients cleared between steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from polycom.bench.saved import SavedTensors, count_saved
from polycom.modules.mlp import MLP


@dataclass
class MLPBlockCase:
    step: Callable[[], None]
    saved: SavedTensors
    hidden_size: int


def mlp_block_case(
    d_model: int, tokens: int, activation: str, fused: bool, device: torch.device, bf16: bool, seed: int = 0
) -> MLPBlockCase:
    """Build the block and its step; count the bytes its forward saves (under bf16 autocast when `bf16`)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    block = MLP(d_model, activation, fused=fused, device=device)
    x = torch.randn(tokens, d_model, generator=gen).to(device).requires_grad_(True)
    dy = torch.randn(tokens, d_model, generator=gen).to(device)

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return block(x)

    def step() -> None:
        block.zero_grad(set_to_none=True)
        x.grad = None
        forward().backward(dy.to(torch.bfloat16) if bf16 else dy)

    _, saved = count_saved(forward, exclude=block.parameters())
    return MLPBlockCase(step, saved, block.hidden_size)
