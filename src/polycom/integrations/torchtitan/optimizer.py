"""AdamW parameter groups with polycom's weight-decay rule, for torchtitan's `OptimizersContainer`.

polycom never decays the PolyCom coefficients (they are the activation's shape, not a weight to shrink;
the official code excludes them too) and by default decays matrices only (norm gains and biases not);
``decay_vectors=True`` decays the 1-D parameters as well, as OLMoE does, still never the coefficients.
torchtitan assigns each parameter to the first parameter group whose regex matches its FQN, so the
no-decay groups come first:

* `COEFFICIENT_PATTERN`: the parameters of a `PolyComActivation` (``...act.weight``, ``...act.bias``,
  ``...act.prelu_weight``), wherever FSDP / compile / checkpoint wrappers put it;
* `VECTOR_PATTERN`: norm gains and biases (``decay_vectors=False`` only).

`polycom_optimizer` is the override for a config of your own (``--override.imports
polycom.integrations.torchtitan.optimizer.polycom_optimizer``): it puts the coefficient group in front of
the groups already there, with the same optimizer and settings but ``weight_decay`` 0.
"""

from __future__ import annotations

from dataclasses import replace

from torchtitan.components.optimizer import OptimizersContainer
from torchtitan.components.optimizer.optimizer import ParamGroupConfig
from torchtitan.config import override

from polycom.train.config import OptimConfig

COEFFICIENT_PATTERN = r"(^|\.)act\.(weight|bias|prelu_weight)$"
VECTOR_PATTERN = r"(norm\.weight|\.bias)$"

__all__ = ["COEFFICIENT_PATTERN", "VECTOR_PATTERN", "adamw_config", "polycom_optimizer"]


def adamw_config(optim: OptimConfig, *, has_coefficients: bool) -> OptimizersContainer.Config:
    """AdamW with `optim`'s settings and polycom's decay rule (module docstring).

    has_coefficients: the model has PolyCom activations (a group that matches nothing is an error in
    torchtitan, so the SwiGLU baseline has no coefficient group)."""
    kwargs = {"lr": optim.lr, "betas": (optim.beta1, optim.beta2), "eps": optim.eps, "weight_decay": optim.weight_decay}
    no_decay = kwargs | {"weight_decay": 0.0}
    groups = []
    if has_coefficients:
        groups.append(ParamGroupConfig(pattern=COEFFICIENT_PATTERN, optimizer_name="AdamW", optimizer_kwargs=no_decay))
    if not optim.decay_vectors:
        groups.append(ParamGroupConfig(pattern=VECTOR_PATTERN, optimizer_name="AdamW", optimizer_kwargs=no_decay))
    groups.append(ParamGroupConfig(pattern=r".*", optimizer_name="AdamW", optimizer_kwargs=kwargs))
    return OptimizersContainer.Config(param_groups=groups)


@override(target=OptimizersContainer.Config, description="polycom: no weight decay on the PolyCom coefficients")
def polycom_optimizer(cfg: OptimizersContainer.Config) -> OptimizersContainer.Config:
    """Override factory: a no-decay group for the PolyCom coefficients in front of `cfg`'s groups."""
    if not cfg.param_groups:
        raise ValueError("the optimizer config has no parameter groups to copy the optimizer settings from")
    if cfg.param_groups[0].pattern == COEFFICIENT_PATTERN:
        return cfg
    template = cfg.param_groups[-1]
    kwargs = dict(template.optimizer_kwargs) | {"weight_decay": 0.0}
    first = ParamGroupConfig(
        pattern=COEFFICIENT_PATTERN, optimizer_name=template.optimizer_name, optimizer_kwargs=kwargs
    )
    return replace(cfg, param_groups=[first, *cfg.param_groups])
