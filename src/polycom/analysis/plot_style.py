"""Shared look of the analysis figures: the Agg backend, and one colour and marker per activation.

Import `plt` from here (not `matplotlib.pyplot` directly) so the Agg backend is chosen before pyplot loads.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["activation_style", "plt"]

# One fixed colour per activation so every figure reads the same way.
_ACT_COLORS = {
    "relu": "#1f77b4",
    "relu2": "#17becf",
    "gelu": "#2ca02c",
    "silu": "#bcbd22",
    "polyrelu": "#ff7f0e",
    "polynorm": "#d62728",
    "swiglu": "#9467bd",
    "geglu": "#8c564b",
    "polyrelu_glu": "#e377c2",
    "polynorm_glu": "#7f7f7f",
}
_MARKERS = "osD^v<>pPX*h"


def activation_style(name: str, index: int) -> dict:
    """Colour and marker for a series: fixed per known activation, cycled otherwise."""
    color = _ACT_COLORS.get(name, f"C{index % 10}")
    return {"color": color, "marker": _MARKERS[index % len(_MARKERS)]}
