"""polycom: Polynomial Composition Activations (PolyReLU, PolyNorm) for PyTorch.

Zhuo et al., "Polynomial Composition Activations: Unleashing the Dynamics of Large Language
Models", ICLR 2025 (arXiv 2411.03884).

Layers: `polycom.ops` (functional ops + backend dispatch) -> `polycom.modules` (nn.Modules,
activation registry, MLP) -> `polycom.models` -> `polycom.train` / `polycom.eval` -> `polycom.cli`.
"""

from polycom.modules import (
    MLP,
    GeGLU,
    PolyNorm,
    PolyNormGated,
    PolyReLU,
    PolyReLUGated,
    ReLU2,
    SwiGLU,
    activation_names,
    gated_hidden_size,
    get_activation,
    is_gated,
    matched_hidden_size,
    mlp_param_count,
    mlp_param_table,
    register_activation,
)
from polycom.ops import poly_norm, poly_norm_gated, poly_relu, poly_relu_gated
from polycom.ops.backend import use_backend

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "GeGLU",
    "PolyNorm",
    "PolyNormGated",
    "PolyReLU",
    "PolyReLUGated",
    "ReLU2",
    "SwiGLU",
    "__version__",
    "activation_names",
    "gated_hidden_size",
    "get_activation",
    "is_gated",
    "matched_hidden_size",
    "mlp_param_count",
    "mlp_param_table",
    "poly_norm",
    "poly_norm_gated",
    "poly_relu",
    "poly_relu_gated",
    "register_activation",
    "use_backend",
]
