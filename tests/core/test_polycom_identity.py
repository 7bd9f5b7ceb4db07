"""One answer to "is this a PolyCom activation?": the module is a `PolyCoefficients`.

The registry spec, the module check, the parameter check and the model config all ask that question.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import polycom
from polycom.models import ModelConfig, build_model
from polycom.modules import (
    PolyCoefficients,
    activation_spec,
    activations,
    is_polycom_module,
    is_polycom_parameter,
)

# Written out here, independently of the code: the paper's four PolyCom activations.
POLYCOM_NAMES = {"polyrelu", "polynorm", "polyrelu_glu", "polynorm_glu", "polycom", "polyprelu", "polyrelunorm"}


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so test registrations do not leak into other tests."""
    monkeypatch.setattr(activations, "_REGISTRY", dict(activations._REGISTRY))


@pytest.mark.parametrize("name", polycom.activation_names())
def test_spec_is_polycom_exactly_for_the_polycom_activations(name):
    assert activation_spec(name).is_polycom == (name in POLYCOM_NAMES)


@pytest.mark.parametrize("name", polycom.activation_names())
def test_built_module_agrees_with_its_spec(name):
    assert is_polycom_module(polycom.get_activation(name)) == (name in POLYCOM_NAMES)


@pytest.mark.parametrize("name", polycom.activation_names())
def test_model_config_passes_order_only_to_polycom_activations(name):
    kwargs = ModelConfig(activation=name, activation_order=4).activation_kwargs()
    assert kwargs == ({"order": 4} if name in POLYCOM_NAMES else {})


def test_a_registered_polycom_subclass_is_polycom_everywhere(scratch_registry):
    class PolyTanh(PolyCoefficients):
        def forward(self, x):
            r = self.order
            return sum(self.weight[r - i] * torch.tanh(x) ** i for i in range(1, r + 1)) + self.bias

    # Names chosen against the grain: the rule must follow the class, not the name.
    polycom.register_activation("tanh_series", PolyTanh, gated=False, description="sum_i w[r-i] tanh(x)**i + b")
    polycom.register_activation("polytanh_plain", nn.Tanh, gated=False, description="tanh(x)")
    assert activation_spec("tanh_series").is_polycom and not activation_spec("polytanh_plain").is_polycom
    assert is_polycom_module(polycom.get_activation("tanh_series", order=2))
    assert ModelConfig(activation="tanh_series", activation_order=2).activation_kwargs() == {"order": 2}
    assert ModelConfig(activation="polytanh_plain").activation_kwargs() == {}


def test_lookalike_modules_are_not_polycom():
    """The rule is the class, not the name or the parameter shapes."""

    class PolyLookalike(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(3))
            self.bias = nn.Parameter(torch.zeros(1))

    assert not is_polycom_module(PolyLookalike())
    assert not is_polycom_module(nn.LayerNorm(3))


@pytest.mark.parametrize("activation", ["polynorm", "polyrelu_glu", "swiglu", "relu2"])
def test_is_polycom_parameter_names_exactly_the_activation_coefficients(activation):
    model = build_model(ModelConfig(activation=activation, n_layers=2))
    found = {name for name, _ in model.named_parameters() if is_polycom_parameter(model, name)}
    expected = set()
    if activation in POLYCOM_NAMES:
        expected = {f"layers.{i}.mlp.act.{p}" for i in range(2) for p in ("weight", "bias")}
    assert found == expected
