"""Optimizer of a run: AdamW with decay on matrices only, and global-norm gradient clipping."""

from __future__ import annotations

from typing import Any

import torch

from polycom.modules import is_polycom_parameter
from polycom.train.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on >= 2-D weights (and on 1-D ones with ``optim.decay_vectors``), never on PolyCom
    coefficients."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_polycom = is_polycom_parameter(model, name)
        vector_exempt = p.ndim < 2 and not cfg.optim.decay_vectors
        (no_decay if vector_exempt or is_polycom else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": cfg.optim.lr, "betas": (cfg.optim.beta1, cfg.optim.beta2), "eps": cfg.optim.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)


def clip_grad_norm(parameters, max_norm: float, world_size: int) -> torch.Tensor:
    """Clip the global gradient norm (max_norm <= 0: no clipping, norm still returned).

    DTensor-aware (FSDP2 / tensor parallel) when running on several processes.
    """
    max_norm = max_norm if max_norm > 0 else float("inf")
    if world_size > 1:
        from polycom.distributed.grad_utils import clip_grad_norm_

        return clip_grad_norm_(parameters, max_norm)
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
