"""Harness model / run folder -> Hugging Face folder (`PolyComForCausalLM` + tokenizer), and back.

Weights map one to one (``X`` -> ``model.X``, ``lm_head.weight`` unchanged; see `polycom.hf.modeling`).
The folder holds ``config.json`` (``model_type: polycom``), ``model.safetensors``,
``generation_config.json`` and the tokenizer files (``tokenizer.json`` + ``tokenizer_config.json``),
so after ``import polycom.hf`` it loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

`export_model` writes into a temporary folder next to the target, reloads it through the Auto API,
checks that its logits equal the harness model's on a probe batch, and only then renames it into
place (atomic: a failed export leaves no half-written folder under the target name). transformers'
progress bars and messages below errors are off while it saves and reloads (`polycom.hf.quiet`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polycom.errors import UserError
from polycom.hf.quiet import quiet_transformers
from polycom.utils.atomic import replace_folder, temp_folder_beside
from polycom.utils.owned_outputs import check_overwritable, mark_output
from polycom.utils.paths import existing_folder

HF_PREFIX = "model."


def harness_state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Harness state-dict names -> `PolyComForCausalLM` names (prefix ``model.`` except ``lm_head``)."""
    return {(k if k.startswith("lm_head.") else HF_PREFIX + k): v for k, v in state.items()}


def hf_state_to_harness(state: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """`PolyComForCausalLM` names -> harness names (``lm_head.weight`` dropped when tied)."""
    out = {}
    for k, v in state.items():
        if k.startswith("lm_head."):
            if not tied:
                out[k] = v
        elif k.startswith(HF_PREFIX):
            out[k[len(HF_PREFIX) :]] = v
        else:
            raise ValueError(f"unexpected parameter name {k!r} in a PolyComForCausalLM state dict")
    return out


def harness_to_hf(model: nn.Module, **config_kwargs: Any):
    """A `PolyComForCausalLM` holding a copy of the weights of a harness `PolyComLM` (same device/dtype)."""
    from polycom.hf.configuration import PolyComConfig
    from polycom.hf.modeling import PolyComForCausalLM
    from polycom.models import PolyComLM

    if not isinstance(model, PolyComLM):
        raise TypeError(f"expected a polycom.models.PolyComLM, got {type(model).__name__}")
    config = PolyComConfig.from_model_config(model.config, **config_kwargs)
    ref = model.embed.weight
    with torch.device("meta"):
        hf = PolyComForCausalLM(config)
    hf = hf.to_empty(device=ref.device)
    state = harness_state_to_hf(model.state_dict())
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        hf.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"harness -> HF weight mapping failed: missing {missing}, unexpected {unexpected}")
    return hf.to(ref.dtype).eval()


def hf_to_harness(hf_model) -> nn.Module:
    """A harness `PolyComLM` with the weights of a `PolyComForCausalLM`."""
    from polycom.models import build_model

    mc = hf_model.config.to_model_config()
    model = build_model(mc, device="meta").to_empty(device=hf_model.device)
    model.load_state_dict(hf_state_to_harness(hf_model.state_dict(), mc.tie_embeddings))
    return model.to(hf_model.dtype).eval()


def _probe_ids(vocab_size: int, length: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (2, length), generator=g)


@torch.no_grad()
def verify_export(folder: str | Path, model: nn.Module, atol: float = 1e-4) -> float:
    """Reload `folder` with AutoModelForCausalLM and compare logits with the harness `model`; returns max |diff|."""
    from transformers import AutoModelForCausalLM

    import polycom.hf  # noqa: F401  (Auto registration)

    reloaded = AutoModelForCausalLM.from_pretrained(str(folder), dtype=model.embed.weight.dtype).eval()
    ids = _probe_ids(model.config.vocab_size, min(16, model.config.max_seq_len))
    was_training = model.training
    model.eval()
    try:
        expected = model(ids.to(model.embed.weight.device)).logits.float().cpu()
    finally:
        model.train(was_training)
    got = reloaded(ids).logits.float()
    diff = (got - expected).abs().max().item()
    if not diff <= atol:
        raise UserError(f"exported model in {folder} does not reproduce the harness logits (max |diff| = {diff:.3g})")
    return diff


def export_model(
    model: nn.Module,
    tokenizer,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    verify: bool = True,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write harness `model` + harness `tokenizer` as a Hugging Face folder at `out_dir` (see module docstring)."""
    from polycom.hf.tokenizer import to_hf_tokenizer

    out = Path(out_dir).expanduser()
    check_overwritable(out, overwrite=overwrite)  # an existing folder only when an earlier export wrote it
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(
            f"tokenizer vocabulary ({tokenizer.vocab_size}) is larger than the model's vocab_size "
            f"({model.config.vocab_size}): this tokenizer does not belong to this model"
        )
    hf_tok = to_hf_tokenizer(tokenizer) if tokenizer is not None else None
    extra: dict[str, Any] = {}
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        extra.update(eos_token_id=eos, pad_token_id=eos)
    if source:
        extra["polycom_source"] = source
    hf = harness_to_hf(model, **extra)

    tmp = temp_folder_beside(out)
    try:
        # transformers quiet at ERROR: its messages here concern polycom's own folder, which verify_export checks
        with quiet_transformers(logging.ERROR):
            hf.save_pretrained(str(tmp), safe_serialization=True)
            if hf_tok is not None:
                hf_tok.save_pretrained(str(tmp))
            (tmp / "README.md").write_text(model_card(hf.config, source), encoding="utf-8")
            mark_output(tmp, "polycom export")
            if verify:
                verify_export(tmp, model)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(config, source: dict[str, Any] | None) -> str:
    """A short README.md for the exported folder: what the model is and how to load it."""
    kind = f"MoE, {config.num_experts} experts, top-{config.num_experts_per_tok}" if config.is_moe else "dense"
    params = (
        f"d_model {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads "
        f"({config.num_key_value_heads} KV), MLP width {config.moe_intermediate_size if config.is_moe else config.intermediate_size}, "
        f"vocab {config.vocab_size}, context {config.max_position_embeddings}"
    )
    origin = f"Exported by `polycom export` from `{source['run']}` ({source['checkpoint']}).\n\n" if source else ""
    return (
        "---\nlibrary_name: transformers\ntags:\n- polycom\n- " + config.activation + "\n---\n\n"
        f"# PolyCom decoder ({config.activation}, {kind})\n\n{origin}{params}.\n\n"
        "PolyCom activations: Zhuo et al., Polynomial Composition Activations, ICLR 2025 (arXiv 2411.03884).\n\n"
        "Loading needs the `polycom` package (`pip install polycom`) and `import polycom.hf` before the Auto "
        "classes: that import registers `model_type: polycom` with them (no `trust_remote_code`). Without it "
        "transformers reports that it does not recognize the model type `polycom` and suggests upgrading "
        "transformers; upgrading does not help, the import does.\n\n"
        "```python\nimport polycom.hf  # registers model_type 'polycom' with the Auto classes\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n```\n"
    )


def export_run(
    run_dir: str | Path, out_dir: str | Path, *, step: int | None = None, overwrite: bool = False, verify: bool = True
) -> Path:
    """Export the latest (or `step`) checkpoint of a harness run folder with its tokenizer."""
    from polycom.train.checkpoint import load_run

    run = existing_folder(run_dir, "run folder")
    loaded = load_run(run, device="cpu", step=step)
    # The run's folder name only: an absolute path would publish the exporting user's file system.
    source = {"run": run.resolve().name, "checkpoint": loaded.checkpoint.name}
    return export_model(loaded.model, loaded.tokenizer, out_dir, overwrite=overwrite, verify=verify, source=source)
