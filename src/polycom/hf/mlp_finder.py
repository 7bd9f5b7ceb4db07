"""Find the MLP blocks of any PyTorch / transformers model by their structure, not by model name.

A module is an MLP when its direct children are

* gated (Llama family): three linear layers, two ``d -> h`` (gate, up) and one ``h -> d`` (down),
  plus one activation module: ``down(act(gate(x)) * up(x))``;
* plain (GPT family): two linear layers ``d -> h`` and ``h -> d`` around one activation module,
  whatever their names (``fc1/fc2``, ``c_fc/c_proj``, ``dense_h_to_4h/dense_4h_to_h``, ...); the
  input projection is the one registered first.

"Linear layers" are ``nn.Linear`` and transformers' GPT-2 ``Conv1D`` (weight stored (in, out)).
An activation is an instance of a class in transformers' ``ACT2CLS``, of ``torch.nn``'s activations
or of polycom's, or a parameter-free leaf whose attribute name contains "act". Other children may
only be dropouts or identities (a norm or an attention inside means: not a bare MLP). Fused layouts
(one ``gate_up_proj``) and stacked MoE expert tensors are not recognised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polycom.modules.polycom import PolyNorm, PolyNormGated, PolyReLU, PolyReLUGated


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

    classes: set[type] = {PolyNorm, PolyReLU, PolyNormGated, PolyReLUGated}
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
    kind: str  # "gated" | "plain"
    act_attr: str
    d_model: int
    hidden: int
    linears: dict[str, tuple[int, int]]


def _match_mlp(name: str, module: nn.Module, act_classes: tuple[type, ...]) -> FoundMLP | None:
    linears: dict[str, tuple[int, int]] = {}
    acts: list[str] = []
    for child_name, child in module.named_children():
        shape = _linear_shape(child)
        if shape is not None:
            linears[child_name] = shape
        elif isinstance(child, act_classes) or (
            "act" in child_name.lower() and not any(True for _ in child.children()) and not isinstance(child, _PASSIVE)
        ):
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
