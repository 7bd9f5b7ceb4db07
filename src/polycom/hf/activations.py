"""PolyCom names in transformers' activation registry.

transformers builds MLP activations with ``ACT2FN[config.hidden_act]`` (GPT-2:
``ACT2FN[config.activation_function]``). ``ACT2FN`` is a ``ClassInstantier``: every lookup
constructs a *new* module, so each MLP of a model gets its own PolyNorm / PolyReLU with its own
``weight`` (r,) and ``bias`` (1,), saved as ``...mlp.act_fn.weight`` / ``...mlp.act_fn.bias``.

In a Llama-family MLP the activation is applied to the gate branch only,
``down(act(gate(x)) * up(x))``, so ``hidden_act="polynorm"`` gives the gated form
PolyNorm(gate) * up; in a GPT-family MLP (``fc2(act(fc1(x)))``) it gives the plain form.

Registered names (order r = 3, eps = 1e-6, the paper's defaults):
``polynorm``, ``polyrelu``. ``polycom_converted`` is a guard name written into configs of models
whose conversion cannot be expressed by the activation name alone (see `polycom.hf.convert`):
building such a model with the plain Auto API raises an error telling the user how to load it.
"""

from __future__ import annotations

from torch import nn

from polycom.modules.polycom import PolyNorm, PolyReLU

GUARD_ACTIVATION = "polycom_converted"

# registered name -> polycom module class (built with its default order 3)
POLYCOM_HF_ACTIVATIONS: dict[str, type[nn.Module]] = {"polynorm": PolyNorm, "polyrelu": PolyReLU}


class ConvertedModelGuard(nn.Module):
    """Placeholder activation that refuses to be built: the config belongs to a converted model."""

    def __init__(self) -> None:
        raise ValueError(
            f"this config has hidden activation {GUARD_ACTIVATION!r}: it belongs to a model rewritten by "
            "polycom.hf.convert (recorded under config.polycom_conversion) whose layout transformers cannot "
            "rebuild from the activation name alone; load it with polycom.hf.load_converted(path)"
        )


def register_transformers_activations() -> list[str]:
    """Add the PolyCom names to ``transformers.activations.ACT2CLS`` and ``ACT2FN`` (idempotent).

    Both mappings are updated: ``ACT2FN`` is a separate instantiating copy of ``ACT2CLS`` that the
    modeling files import by reference. Returns the registered names.
    """
    from transformers import activations

    entries: dict[str, type[nn.Module]] = {**POLYCOM_HF_ACTIVATIONS, GUARD_ACTIVATION: ConvertedModelGuard}
    for name, cls in entries.items():
        for table in (activations.ACT2CLS, activations.ACT2FN):
            existing = dict.get(table, name)
            if existing is not None and existing is not cls:
                raise RuntimeError(f"transformers already defines an activation called {name!r}: {existing!r}")
            table[name] = cls
    return list(entries)
