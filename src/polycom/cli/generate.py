"""`polycom generate`: sample text from a trained model (KV-cached decoding).

polycom generate --run runs/a --prompt "ROMEO." --max-new-tokens 200 --temperature 0.8 --top-k 40
polycom generate --run hf/a --prompt "ROMEO." --temperature 0

--run is a run folder (`polycom train` / `compare`; --step picks a checkpoint) or a Hugging Face
folder holding a polycom model (model_type "polycom", as `polycom export` writes it) with its
tokenizer files. Both sample with the same harness model and KV cache, so the same weights give the
same text; a Hugging Face folder's tokenizer encodes without special tokens.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from polycom.train.threads import THREADS_HELP


class _Loaded(NamedTuple):
    model: object  # harness PolyComLM, eval mode, on the device
    encode: object  # str -> list[int], no special tokens added
    decode: object  # list[int] -> str
    eos_id: int | None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="Sample text from a trained run or a polycom Hugging Face folder",
        description=__doc__,
        epilog=THREADS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--run",
        required=True,
        help="run folder (polycom train / compare) or Hugging Face folder (polycom export) of a polycom model",
    )
    parser.add_argument("--prompt", default="", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=40, help="0 = no top-k filter")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run folder (default: latest)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--safe",
        action="store_true",
        help="load run folders only from files that cannot run code (no sharded checkpoints); "
        "Hugging Face folders are always read that way",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.errors import UserError
    from polycom.train.threads import cpu_threads
    from polycom.utils.hardware import pick_device

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 <= args.temperature < float("inf"):  # also refuses nan (every comparison with nan is False)
        raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = no top-k filter), got {args.top_k}")
    device = pick_device(args.device, option="--device")
    with cpu_threads(device=device):
        text = _generate(args, device)
    print(text if args.prompt else text.lstrip("\n"))
    return 0


def _generate(args: argparse.Namespace, device) -> str:
    import torch

    from polycom.errors import UserError

    loaded = _load(args, device)
    max_seq_len = loaded.model.config.max_seq_len
    ids = loaded.encode(args.prompt)
    if not ids:
        ids = [loaded.eos_id if loaded.eos_id is not None else int(loaded.encode("\n")[0])]
    if len(ids) >= max_seq_len:
        raise UserError(f"the prompt is {len(ids)} tokens; the model takes at most {max_seq_len - 1}")
    new = min(args.max_new_tokens, max_seq_len - len(ids))
    prompt = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    with torch.no_grad():
        out = loaded.model.generate(
            prompt, new, temperature=args.temperature, top_k=args.top_k or None, generator=gen, eos_id=loaded.eos_id
        )
    return loaded.decode(out[0].tolist())


def _load(args: argparse.Namespace, device) -> _Loaded:
    """The harness model and tokenizer functions of a run folder or a polycom Hugging Face folder."""
    from polycom.errors import UserError
    from polycom.train.checkpoint import is_run_folder, load_run
    from polycom.utils.paths import existing_folder

    folder = existing_folder(args.run, "run folder or Hugging Face folder")
    if is_run_folder(folder):
        model, _, tok, _, _ = load_run(folder, device=device, step=args.step, safe=args.safe)
        return _Loaded(model, tok.encode, tok.decode, tok.eos_id)
    if (folder / "config.json").is_file():
        return _load_hf_folder(folder, args, device)
    raise UserError(
        f"{folder} is neither a polycom run folder (config.json with a 'model' section + checkpoints/) nor a "
        "Hugging Face folder (config.json + model.safetensors + tokenizer files)"
    )


def _load_hf_folder(folder, args: argparse.Namespace, device) -> _Loaded:
    """A Hugging Face folder of a `PolyComForCausalLM` -> the harness model (same weights) + its HF tokenizer.

    Loaded by `polycom.eval.loading.load_eval_model` (no remote code, no pickle beyond tensors; checks
    weights, tokenizer files and vocabulary); its tokenizer encodes without special tokens and decodes
    with them, like `polycom eval`.
    """
    from polycom.errors import UserError
    from polycom.eval.loading import load_eval_model
    from polycom.hf.export import hf_to_harness

    if args.step is not None:
        raise UserError(
            f"--step picks a checkpoint of a run folder; {folder} is a Hugging Face folder (one model, no checkpoints)"
        )
    model_type, architectures = _hf_model_type(folder)
    if model_type != "polycom":
        what = f"a {model_type} model" if model_type else "no model_type"
        if architectures:
            what += f" ({', '.join(map(str, architectures))})"
        raise UserError(
            f"{folder} holds {what}, not a polycom model (model_type 'polycom', PolyComForCausalLM, as `polycom "
            "export` writes it); polycom generate samples only polycom models (`polycom convert` keeps the "
            "model's own architecture, so its output is not one either)"
        )
    loaded = load_eval_model(folder, device=device)
    model = hf_to_harness(loaded.module)
    return _Loaded(model, loaded.encode, loaded.decode, loaded.eos_token_id)


def _hf_model_type(folder) -> tuple[str | None, list]:
    """model_type and architectures of config.json, read as JSON (before transformers runs anything)."""
    import json

    from polycom.errors import UserError

    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder}/config.json is not a readable JSON config: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{folder}/config.json is not a JSON object")
    architectures = data.get("architectures")
    return data.get("model_type"), architectures if isinstance(architectures, list) else []
