"""The dense PolyCom FFN for torchtitan and the override that puts it in place of the SwiGLU `FeedForward`.

    ungated:  y = w2(act(w1 x))            w1 (h, d), w2 (d, h), h = 1.5 x the SwiGLU width (same parameters)
    replace:  y = w2(act(w1 x, w3 x))      the SwiGLU layout, act = PolyCom(gate) * up

x (..., d) -> (..., d). ``act`` is a `PolyComActivation` (its coefficients: ``act.weight`` (r,),
``act.bias`` (1,)). The projections keep torchtitan's names, configs, initialisers and sharding, so its
tensor-parallel plan (``w1``/``w3`` column-wise, ``w2`` row-wise), FSDP, float8 converters and activation
checkpointing apply unchanged; PolyNorm stays exact with the hidden dimension sharded (see
`polycom.integrations.torchtitan.activation`).

Activate on every FeedForward of a model::

    --override.imports polycom.integrations.torchtitan.feed_forward.polycom_feed_forward
    --override.imports 'polycom.integrations.torchtitan.feed_forward.polycom_feed_forward={"activation": "polynorm:order=2", "mode": "replace"}'

or on some layers only with `feed_forward_override` (FQN globs) in a module of your own.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import torch
from torchtitan.config import derive, override
from torchtitan.models.common.feed_forward import FeedForward

from polycom.integrations.torchtitan.activation import PolyComActivation
from polycom.integrations.torchtitan.widths import resolve_ffn

__all__ = ["PolyComFeedForward", "feed_forward_override", "polycom_feed_forward", "polycom_feed_forward_config"]


class PolyComFeedForward(FeedForward):
    """The PolyCom FFN (module docstring). A `FeedForward`, so torchtitan's isinstance checks still hold."""

    @dataclass(kw_only=True, slots=True)
    class Config(FeedForward.Config):
        activation: str = "polynorm"
        """A polycom activation with options (``polynorm``, ``polynorm:order=2``, ``polycom:base=silu``, ...)."""
        mode: str = "ungated"
        """``ungated`` (w1, w2) or ``replace`` (w1, w2, w3); the widths are already in w1/w2/w3."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.mode = config.mode
        if config.mode == "ungated":
            del self.w3  # the config keeps a w3 entry only so torchtitan's FFN sharding helper can fill it
        self.act = PolyComActivation.Config(activation=config.activation, width=config.w1.out_features).build()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "ungated":
            return self.w2(self.act(self.w1(x)))
        gate, up = self.w1(x), self.w3(x)
        if self.act.gated:
            return self.w2(self.act(gate, up))
        return self.w2(self.act(gate) * up)

    def parallelize(self, parallel_dims) -> None:
        # The coefficients' placement is decided here, where the mesh is known, so a config built by any
        # route (override, registry, hand-written) gets it.
        self.act._sharding_config = self.act.parallel_layout(expert_parallel=False, per_expert=False)
        super().parallelize(parallel_dims)
        tp_mesh = parallel_dims.get_optional_mesh("tp")
        self.act.set_groups(shard_group=tp_mesh.get_group() if tp_mesh is not None else None, grad_sum_group=None)


def polycom_feed_forward_config(
    cfg: FeedForward.Config, *, activation: str = "polynorm", mode: str | None = None
) -> PolyComFeedForward.Config:
    """The `PolyComFeedForward.Config` that replaces the stock SwiGLU `cfg` (widths: `resolve_ffn`)."""
    if type(cfg) is not FeedForward.Config:
        raise ValueError(
            f"polycom replaces torchtitan's stock FeedForward; {type(cfg).__qualname__} has its own forward "
            "(remove the other override or narrow the fqns)"
        )
    choice = resolve_ffn(activation, mode, cfg.w1.out_features)
    h = choice.width
    return derive(
        cfg,
        PolyComFeedForward.Config,
        w1=replace(cfg.w1, out_features=h),
        w2=replace(cfg.w2, in_features=h),
        w3=replace(cfg.w3, out_features=h),
        activation=choice.activation,
        mode=choice.mode,
    )


@override(target=FeedForward.Config, description="polycom: PolyCom FFN in place of SwiGLU (PolyNorm exact under TP)")
def polycom_feed_forward(
    cfg: FeedForward.Config, activation: str = "polynorm", mode: str | None = None
) -> PolyComFeedForward.Config:
    """Override factory: every stock `FeedForward` becomes a `PolyComFeedForward` (kwargs: activation, mode)."""
    return polycom_feed_forward_config(cfg, activation=activation, mode=mode)


def feed_forward_override(name: str, *, fqns: list[str], activation: str = "polynorm", mode: str | None = None):
    """Register a PolyCom FFN override limited to the FeedForwards whose FQN matches a glob in `fqns`.

    Call it at the top level of a module of yours; the override is then ``<your module>.<name>``::

        # my_overrides.py
        from polycom.integrations.torchtitan import feed_forward_override
        late_polynorm = feed_forward_override("late_polynorm", fqns=["*layers.1[2-5].feed_forward"])

        --override.imports my_overrides.late_polynorm
    """
    caller = sys._getframe(1).f_globals.get("__name__", "__main__")

    def factory(cfg: FeedForward.Config, **kwargs) -> PolyComFeedForward.Config:
        return polycom_feed_forward_config(
            cfg, activation=kwargs.pop("activation", activation), mode=kwargs.pop("mode", mode), **kwargs
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = caller
    return override(target=FeedForward.Config, fqns=list(fqns), description=f"polycom: PolyCom FFN on {fqns}")(factory)
