"""Find the MLP blocks of any PyTorch / transformers model by their structure, not by model name.

A module is an MLP when its direct children are

* gated (Llama family): three linear layers, two ``d -> h`` (gate, up) and one ``h -> d`` (down),
  plus one activation module: ``down(act(gate(x)) * up(x))``;
* plain (GPT family): two linear layers ``d -> h`` and ``h -> d`` around one activation module,
  whatever their names (``fc1/fc2``, ``c_fc/c_proj``, ``dense_h_to_4h/dense_4h_to_h``, ...); the
  input projection is the one registered first;
* fused (Phi-3): two linear layers ``d -> 2h`` (gate and up fused, e.g. ``gate_up_proj``) and
  ``h -> d`` plus one activation module: ``down(act(gate) * up)`` with ``gate, up = chunk(fused(x), 2)``;
* experts (stacked MoE experts, transformers 5: OLMoE, Mixtral, Qwen2-MoE, Qwen3-MoE, ...): a module
  whose own parameters are exactly two 3-D tensors, an input projection (E, 2h, d) (gated: gate and
  up stacked, ``gate_up_proj``) or (E, h, d) (plain) and an output projection (E, d, h), registered in
  that order, plus one activation child applied inside the expert loop. A module flag
  ``is_transposed = True`` (transformers' experts interface) means (E, d, 2h) / (E, h, d) instead.
  The router and shared experts are siblings of this module and are not part of the match.

"Linear layers" are ``nn.Linear`` and transformers' GPT-2 ``Conv1D`` (weight stored (in, out)).
An activation is an instance of a class in transformers' ``ACT2CLS``, of ``torch.nn``'s activations
or of polycom's, or a parameter-free leaf whose attribute name contains "act". Other children may
only be dropouts or identities (a norm or an attention inside means: not a bare MLP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polycom.modules.polycom import PolyCoefficients


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of an nn.Linear or a GPT-2 style Conv1D (weight (in, out)); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and isinstance(weight, torch.Tensor):
        return int(weight.shape[0]), int(module.nf)
    return None


def _activation_classes() -> tuple[type, ...]:
    from transformers import activations

    classes: set[type] = {PolyCoefficients}  # every PolyCom activation, plain or gated
    for entry in dict.values(activations.ACT2CLS):
        cls = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            classes.add(cls)
    for name in nn.modules.activation.__all__:
        cls = getattr(nn.modules.activation, name)
        if name not in ("MultiheadAttention", "Softmax", "Softmin", "LogSoftmax", "Softmax2d"):
            classes.add(cls)
    return tuple(classes)


_PASSIVE = (nn.Dropout, nn.Identity)


@dataclass
class FoundMLP:
    """One MLP found by `find_mlps`: its path, structure, activation attribute and widths d -> h -> d."""

    name: str
    module: nn.Module
    kind: str  # "gated" | "plain" | "fused" | "experts" (stacked gated experts) | "experts-plain"
    act_attr: str
    d_model: int
    hidden: int  # MLP width h (per expert for stacked experts)
    linears: dict[str, tuple[int, int]]  # child or parameter name -> (in, out) of that projection
    num_experts: int = 0  # E for stacked experts, 0 for a dense MLP

    @property
    def is_experts(self) -> bool:
        return self.num_experts > 0

    @property
    def is_gated(self) -> bool:
        """The activation multiplies a separate up branch (gated, fused, stacked gated experts)."""
        return self.kind in ("gated", "fused", "experts")


def _is_activation(child_name: str, child: nn.Module, act_classes: tuple[type, ...]) -> bool:
    return isinstance(child, act_classes) or (
        "act" in child_name.lower() and not any(True for _ in child.children()) and not isinstance(child, _PASSIVE)
    )


def _match_experts(name: str, module: nn.Module, act_classes: tuple[type, ...]) -> FoundMLP | None:
    """Stacked experts: own parameters (E, 2h | h, d) then (E, d, h), one activation child, nothing else."""
    params = list(module.named_parameters(recurse=False))
    if len(params) != 2 or any(p.dim() != 3 for _, p in params):
        return None
    children = list(module.named_children())
    if len(children) != 1 or not _is_activation(children[0][0], children[0][1], act_classes):
        return None
    (in_name, w_in), (out_name, w_out) = params
    transposed = bool(getattr(module, "is_transposed", False))
    (e1, a, b), (e2, c, f) = w_in.shape, w_out.shape
    # not transposed: in (E, out=2h|h, in=d), out (E, d, h); transposed: in (E, d, 2h|h), out (E, h, d)
    d, h_in, h, d_out = (a, b, c, f) if transposed else (b, a, f, c)
    if e1 != e2 or d != d_out or d == h:
        return None
    if h_in == 2 * h:
        kind = "experts"
    elif h_in == h:
        kind = "experts-plain"
    else:
        return None
    linears = {in_name: (d, h_in), out_name: (h, d)}
    return FoundMLP(name, module, kind, children[0][0], d, h, linears, num_experts=e1)


def _match_mlp(name: str, module: nn.Module, act_classes: tuple[type, ...]) -> FoundMLP | None:
    experts = _match_experts(name, module, act_classes)
    if experts is not None:
        return experts
    linears: dict[str, tuple[int, int]] = {}
    acts: list[str] = []
    for child_name, child in module.named_children():
        shape = _linear_shape(child)
        if shape is not None:
            linears[child_name] = shape
        elif _is_activation(child_name, child, act_classes):
            acts.append(child_name)
        elif not isinstance(child, _PASSIVE):
            return None  # something else inside (a norm, attention, a sub-block): not a bare MLP
    if len(acts) != 1:
        return None
    shapes = list(linears.values())
    if len(shapes) == 2:
        (a_in, a_out), (b_in, b_out) = shapes
        if a_in == b_out and a_out == b_in and a_in != a_out:
            # the input projection is the one registered first (fc1 before fc2, c_fc before c_proj)
            return FoundMLP(name, module, "plain", acts[0], a_in, a_out, linears)
        if a_in == b_out and a_out == 2 * b_in and a_in != b_in:
            # gate and up fused into the first projection (Phi-3 gate_up_proj): d -> 2h, then h -> d
            return FoundMLP(name, module, "fused", acts[0], a_in, b_in, linears)
        return None
    if len(shapes) == 3:
        ups = [s for s in shapes if shapes.count(s) == 2]
        downs = [s for s in shapes if shapes.count(s) == 1]
        if len(ups) == 2 and len(downs) == 1:
            d, h = ups[0]
            if downs[0] == (h, d) and d != h:
                return FoundMLP(name, module, "gated", acts[0], d, h, linears)
    return None


def find_mlps(model: nn.Module) -> list[FoundMLP]:
    """All MLP blocks of `model` recognised by structure (see module docstring), outermost first."""
    act_classes = _activation_classes()
    found: list[FoundMLP] = []
    claimed: list[str] = []
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in claimed):
            continue
        match = _match_mlp(name, module, act_classes)
        if match is not None:
            found.append(match)
            claimed.append(name)
    return found
