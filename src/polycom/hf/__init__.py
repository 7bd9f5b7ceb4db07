"""Hugging Face transformers integration. Importing it registers PolyCom with transformers:

* ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` know ``model_type = "polycom"``
  (`PolyComConfig`, `PolyComModel`, `PolyComForCausalLM`: the harness decoder, dense or MoE);
* the activation names ``polynorm`` / ``polyrelu`` are in transformers' ``ACT2FN`` registry, so a
  Llama-family config with ``hidden_act="polynorm"`` builds per-layer PolyNorm MLPs.

Tools: `convert` / `load_converted` (PolyCom into existing transformers models), `export_run` /
`export_model` (harness run or model -> HF folder with tokenizer), `to_hf_tokenizer`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from polycom.hf.activations import register_transformers_activations
from polycom.hf.configuration import PolyComConfig
from polycom.hf.convert import ConversionReport, MLPChange, convert, find_mlps
from polycom.hf.modeling import PolyComForCausalLM, PolyComModel, PolyComPreTrainedModel
from polycom.hf.persistence import load_converted

register_transformers_activations()
AutoConfig.register(PolyComConfig.model_type, PolyComConfig, exist_ok=True)
AutoModel.register(PolyComConfig, PolyComModel, exist_ok=True)
AutoModelForCausalLM.register(PolyComConfig, PolyComForCausalLM, exist_ok=True)

__all__ = [
    "ConversionReport",
    "MLPChange",
    "PolyComConfig",
    "PolyComForCausalLM",
    "PolyComModel",
    "PolyComPreTrainedModel",
    "convert",
    "find_mlps",
    "load_converted",
    "register_transformers_activations",
]
