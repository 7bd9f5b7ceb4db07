"""A torchtitan checkpoint of a registry model -> a polycom Hugging Face folder (`polycom eval`, `generate`, `analyze`).

    python -m polycom.integrations.torchtitan.export CHECKPOINT OUT --config polycom_paper_1b \\
        [--tokenizer DIR_WITH_tokenizer.json] [--model.activation_order=2 ...] [--overwrite]

CHECKPOINT is one ``step-N`` folder of torchtitan's DCP checkpoints (model-only or full; only the model
entries are read). ``--config`` names the registry config that trained it
(`polycom.integrations.torchtitan.config_registry`; `recipes.train_config` gives its polycom run config); ``--model.key=value`` states any change made to the
model on the training command line, in polycom's config grammar. The steps:

1. build that torchtitan model on the CPU and load the checkpoint into it (DCP, one process); a missing
   or mis-shaped entry is an error naming it;
2. map every tensor onto polycom's harness model (`polycom.models.PolyComLM`) of the same `ModelConfig`
   (`state_dict_to_polycom`: names only, the layouts are the same: separate q / k / v projections,
   rotate-half RoPE, ``w1`` = up (ungated) or gate, ``w3`` = up, ``w2`` = down);
3. check that both models give the same logits on a probe batch (fp32, max |diff| <= `ATOL`);
4. write the folder with `polycom.hf.export.export_model` (atomic; reloads it and checks the logits
   again), with the tokenizer of ``--tokenizer`` (torchtitan's ``hf_assets_path``) when given.

The polycom model is `polycom.integrations.torchtitan.models.polycom_twin` of the config: with torchtitan's
per-head QK-norm (``qk_norm_per_head``) and, for MoE, the router's load-balancing expert bias
(``moe.expert_bias``), which the checkpoint carries.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from polycom.errors import UserError, did_you_mean
from polycom.integrations.torchtitan import recipes
from polycom.integrations.torchtitan.models import polycom_twin
from polycom.models import ModelConfig, PolyComLM, build_model
from polycom.train.config import apply_override
from polycom.utils.paths import existing_folder

ATOL = 1e-4

__all__ = ["ATOL", "build_torchtitan_model", "export_checkpoint", "load_checkpoint", "state_dict_to_polycom"]


def build_torchtitan_model(name: str, mc: ModelConfig) -> torch.nn.Module:
    """The torchtitan model of registry config `name` with polycom model config `mc`, on the CPU, initialised."""
    from torchtitan.config.override import apply_overrides

    from polycom.integrations.torchtitan.models import activation_overrides, decoder_config

    trainer = _registry_config(name)
    trainer.model_spec.model = decoder_config(mc)
    trainer.override.imports = activation_overrides(mc)
    trainer.model_spec.model.update_from_config(config=trainer)
    apply_overrides(trainer.override, trainer)
    with torch.device("meta"):
        model = trainer.model_spec.model.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model.eval()


def load_checkpoint(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load the model entries of the torchtitan DCP checkpoint folder `checkpoint` into `model` (in place)."""
    import torch.distributed.checkpoint as dcp

    folder = existing_folder(checkpoint, "torchtitan checkpoint folder")
    if not (folder / ".metadata").is_file():
        raise UserError(f"{folder} is not a torchtitan (DCP) checkpoint: no .metadata file (pick a step-N folder)")
    metadata = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    state = model.state_dict()
    missing = sorted(k for k in state if k not in metadata)
    if missing:
        raise UserError(
            f"checkpoint {folder} does not hold {len(missing)} entries of this model, e.g. {missing[:3]}: "
            "was it trained with another --config or model change?"
        )
    for key, tensor in state.items():
        shape = tuple(getattr(metadata[key], "size", ()))
        if shape != tuple(tensor.shape):
            raise UserError(f"checkpoint entry {key} has shape {shape}, this model's is {tuple(tensor.shape)}")
    dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state)


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_DIRECT = {
    "tok_embeddings.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_IN_LAYER = {
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "mlp_norm.weight",
    "attention.qkv_linear.wq.weight": "attn.q_proj.weight",
    "attention.qkv_linear.wk.weight": "attn.k_proj.weight",
    "attention.qkv_linear.wv.weight": "attn.v_proj.weight",
    "attention.wo.weight": "attn.o_proj.weight",
    "moe.router.gate.weight": "mlp.router.weight",
    "moe.routed_experts.inner_experts.w2_EDF": "mlp.experts.down_proj",
    "moe.expert_bias_E": "mlp.expert_bias",
    "attention.q_norm.weight": "attn.q_norm.weight",
    "attention.k_norm.weight": "attn.k_norm.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}


def state_dict_to_polycom(state: dict[str, torch.Tensor], mc: ModelConfig) -> dict[str, torch.Tensor]:
    """torchtitan decoder state (registry models) -> polycom `PolyComLM` state of `mc` (the `polycom_twin`), by name."""
    gated = mc.gated
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _DIRECT:
            if not (key == "lm_head.weight" and mc.tie_embeddings):
                out[_DIRECT[key]] = value
            continue
        match = _LAYER.match(key)
        if match is None:
            raise UserError(f"unexpected entry {key!r} in a torchtitan decoder checkpoint")
        i, rest = match.groups()
        if rest.startswith("attention.rope.") or rest == "moe.tokens_per_expert_E":
            continue  # RoPE tables and routing counters are recomputed, not weights
        out[f"layers.{i}.{_polycom_layer_name(rest, gated, mc)}"] = value
    return out


def _polycom_layer_name(rest: str, gated: bool, mc: ModelConfig) -> str:
    if rest in _IN_LAYER:
        return _IN_LAYER[rest]
    if rest == "feed_forward.w1.weight":
        return "mlp.gate_proj.weight" if gated else "mlp.up_proj.weight"
    if rest == "feed_forward.w3.weight":
        return "mlp.up_proj.weight"
    if rest == "moe.routed_experts.inner_experts.w1_EFD":
        return "mlp.experts.gate_proj" if gated else "mlp.experts.up_proj"
    if rest == "moe.routed_experts.inner_experts.w3_EFD":
        return "mlp.experts.up_proj"
    for owner, target in (("feed_forward.act.", "mlp.act."), ("moe.routed_experts.inner_experts.act.", None)):
        if rest.startswith(owner):
            name = rest[len(owner) :]
            if target is not None:
                return target + name
            return f"mlp.act.{name}" if mc.moe.shared_coefficients else f"mlp.expert_acts.{{e}}.{name}"
    raise UserError(f"no polycom counterpart for the torchtitan entry layers.N.{rest}")


def _per_expert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split stacked per-expert coefficients (E, ...) into polycom's ``mlp.expert_acts.<e>.<name>``."""
    out = {}
    for key, value in state.items():
        if "{e}" in key:
            for e in range(value.shape[0]):
                out[key.replace("{e}", str(e))] = value[e]
        else:
            out[key] = value
    return out


def to_polycom_model(model: torch.nn.Module, mc: ModelConfig) -> PolyComLM:
    """A polycom harness model of config `mc` (a `polycom_twin`) holding the weights of torchtitan `model` (fp32, CPU)."""
    harness = build_model(mc, device="meta").to_empty(device="cpu")
    state = _per_expert(state_dict_to_polycom({k: v.float() for k, v in model.state_dict().items()}, mc))
    missing, unexpected = harness.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"torchtitan -> polycom mapping incomplete: missing {missing}, unexpected {unexpected}")
    return harness.eval()


@torch.no_grad()
def compare_logits(model: torch.nn.Module, harness: PolyComLM, length: int = 16) -> float:
    """Max |logits difference| of the torchtitan `model` and polycom `harness` on a fixed probe batch."""
    length = min(length, harness.config.max_seq_len)
    ids = torch.randint(0, harness.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(length).repeat(2, 1)
    expected = model(ids, positions, model.get_attention_masks(positions)).float()
    return (harness(ids).logits.float() - expected).abs().max().item()


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    config: str,
    model_overrides: list[str] | None = None,
    tokenizer: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Export the torchtitan checkpoint `checkpoint` of registry config `config` (module docstring)."""
    from polycom.data.tokenizers import HFTokenizer
    from polycom.hf.export import export_model

    _check_config_name(config)
    tc = recipes.train_config(config)
    for item in model_overrides or []:
        apply_override(tc, item if item.lstrip("-").startswith("model.") else f"model.{item.lstrip('-')}")
    tc.validate()
    tok = None
    if tokenizer is not None:
        path = Path(tokenizer).expanduser()
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"tokenizer file {path} not found (give torchtitan's hf_assets_path or its tokenizer.json)")
        tok = HFTokenizer.from_file(path)
    model = build_torchtitan_model(config, tc.model)
    load_checkpoint(model, checkpoint)
    harness = to_polycom_model(model.float(), polycom_twin(tc.model))
    diff = compare_logits(model, harness)
    if not diff <= ATOL:
        raise UserError(f"the polycom model does not reproduce the torchtitan logits (max |diff| = {diff:.3g})")
    source = {"run": Path(checkpoint).resolve().parent.parent.name, "checkpoint": Path(checkpoint).name}
    return export_model(harness, tok, out_dir, overwrite=overwrite, source=source)


def _check_config_name(name: str) -> None:
    names = recipes.config_names()
    if name not in names:
        raise UserError(f"unknown torchtitan config {name!r}{did_you_mean(name, names)}; available: {', '.join(names)}")


def _registry_config(name: str):
    _check_config_name(name)
    return recipes.registry_trainer_config(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m polycom.integrations.torchtitan.export",
        description="Export a torchtitan checkpoint of a polycom registry model to a polycom Hugging Face folder.",
    )
    parser.add_argument("checkpoint", help="a step-N folder of torchtitan's checkpoints")
    parser.add_argument("out", help="the Hugging Face folder to write")
    parser.add_argument(
        "--config", required=True, help="the registry config it was trained with, e.g. polycom_paper_1b"
    )
    parser.add_argument("--tokenizer", help="torchtitan's hf_assets_path (a folder with tokenizer.json) or the file")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier export wrote it")
    args, rest = parser.parse_known_args(argv)
    bad = [r for r in rest if not r.startswith("--model.")]
    if bad:
        parser.error(f"unrecognised arguments: {' '.join(bad)} (model changes look like --model.key=value)")
    try:
        out = export_checkpoint(
            args.checkpoint, args.out, config=args.config, model_overrides=rest, tokenizer=args.tokenizer,
            overwrite=args.overwrite,
        )  # fmt: skip
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
