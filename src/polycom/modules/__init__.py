"""nn.Module tier: PolyCom activations, the activation registry and the MLP block."""

from polycom.modules.activations import (
    ActivationSpec,
    GeGLU,
    ReLU2,
    SwiGLU,
    activation_names,
    activation_spec,
    get_activation,
    is_gated,
    register_activation,
)
from polycom.modules.general_polycom import PolyCom, PolyPReLU, PolyReLUNorm
from polycom.modules.mlp import (
    MLP,
    gated_hidden_size,
    matched_hidden_size,
    mlp_param_count,
    mlp_param_table,
    plain_hidden_size,
)
from polycom.modules.polycom import (
    PolyCoefficients,
    PolyNorm,
    PolyNormGated,
    PolyReLU,
    PolyReLUGated,
    is_polycom_module,
    is_polycom_parameter,
)

__all__ = [
    "MLP",
    "ActivationSpec",
    "GeGLU",
    "PolyCoefficients",
    "PolyCom",
    "PolyPReLU",
    "PolyReLUNorm",
    "PolyNorm",
    "PolyNormGated",
    "PolyReLU",
    "PolyReLUGated",
    "ReLU2",
    "SwiGLU",
    "activation_names",
    "activation_spec",
    "gated_hidden_size",
    "get_activation",
    "is_gated",
    "is_polycom_module",
    "is_polycom_parameter",
    "matched_hidden_size",
    "plain_hidden_size",
    "mlp_param_count",
    "mlp_param_table",
    "register_activation",
]
