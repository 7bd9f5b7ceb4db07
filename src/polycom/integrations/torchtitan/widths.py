"""What an override asks for, checked once: the activation, the MLP form and its width.

``mode``:

* ``ungated``: the paper's plain MLP ``w2(act(w1 x))``, two matrices at 1.5x the SwiGLU width it replaces
  (`polycom.modules.mlp.plain_hidden_size`: 3 d h_swiglu = 2 d h_plain, the same parameter count);
* ``replace``: the SwiGLU layout with PolyCom in place of SiLU, ``w2(act(w1 x) * w3 x)``, at the same
  width. A plain PolyNorm / PolyReLU becomes its gated form (``polynorm_glu``, ``polyrelu_glu``: the product
  is taken in fp32 with one rounding); other plain activations are multiplied by ``w3 x`` afterwards.

``mode=None`` picks ``ungated`` for a plain activation and ``replace`` for a gated one (``*_glu``).
"""

from __future__ import annotations

from dataclasses import dataclass

from polycom.compare.arms import parse_arm
from polycom.modules import activation_names, is_gated, plain_hidden_size

MODES = ("ungated", "replace")


@dataclass(frozen=True)
class FFNChoice:
    """The resolved request: `activation` (a polycom arm string), `mode` and the hidden `width`."""

    activation: str
    mode: str
    width: int


def resolve_ffn(activation: str, mode: str | None, swiglu_width: int) -> FFNChoice:
    """Check the override's kwargs against polycom's registry; ValueError / UserError naming the problem.

    swiglu_width: the hidden width of the SwiGLU block being replaced (torchtitan's ``hidden_dim``).
    """
    if not isinstance(activation, str) or not activation.strip():
        raise ValueError(f"activation must be a polycom activation name such as 'polynorm', got {activation!r}")
    arm = parse_arm(activation)
    gated = is_gated(arm.activation)
    if mode is None:
        mode = "replace" if gated else "ungated"
    if mode not in MODES:
        raise ValueError(
            f"mode must be one of {', '.join(MODES)} (or None for the activation's own form), got {mode!r}"
        )
    if mode == "ungated" and gated:
        raise ValueError(
            f"activation {arm.label!r} is gated (act(gate, up)); use mode='replace', or its plain form in mode='ungated'"
        )
    label = arm.label
    if mode == "replace" and not gated and f"{arm.activation}_glu" in activation_names():
        label = label.replace(arm.activation, f"{arm.activation}_glu", 1)
    width = plain_hidden_size(swiglu_width) if mode == "ungated" else swiglu_width
    return FFNChoice(activation=label, mode=mode, width=width)
