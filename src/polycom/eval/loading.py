"""Load what `polycom eval` evaluates: a harness run folder or a Hugging Face model folder.

Both become an `EvalModel`: a ``logits(ids (B, T)) -> (B, T, V) fp32`` function plus a tokenizer
with ``encode(text) -> list[int]`` / ``decode(ids) -> str`` (no special tokens added), the vocab size,
the context length and the token used as the "previous token" of an empty context.

Checks (each a `UserError` naming the folder and the problem): the path exists; it is a run folder
(`polycom.train.checkpoint.is_run_folder`: ``config.json`` with a ``model`` section, ``checkpoints/``;
loaded with `polycom.train.checkpoint.load_run`) or a Hugging Face folder (``config.json`` + weights); a Hugging Face folder has tokenizer files; the tokenizer's vocabulary fits the model's
embedding (a larger tokenizer means model and tokenizer do not belong together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from polycom.errors import UserError
from polycom.utils.paths import existing_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class EvalModel:
    """A model ready for scoring: see module docstring."""

    name: str
    kind: str  # "run" or "hf"
    logits: Callable[[torch.Tensor], torch.Tensor]
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    vocab_size: int
    tokenizer_size: int
    max_length: int
    prefix_token_id: int
    eos_token_id: int | None
    device: torch.device
    module: torch.nn.Module


def _prefix_token(eos: int | None, encode: Callable[[str], list[int]]) -> int:
    # lm-eval conditions an empty context on this token; without an EOS (byte tokenizer) use a newline.
    if eos is not None:
        return int(eos)
    newline = encode("\n")
    return int(newline[0]) if newline else 0


def _check_vocab(folder: Path, tokenizer_size: int, vocab_size: int) -> None:
    if tokenizer_size > vocab_size:
        raise UserError(
            f"vocabulary mismatch in {folder}: the tokenizer has {tokenizer_size} tokens but the model's embedding "
            f"has {vocab_size} rows; this tokenizer does not belong to this model"
        )


def load_eval_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    step: int | None = None,
    trust_remote_code: bool = False,
    safe: bool = False,
) -> EvalModel:
    """Load a run folder or an HF folder for evaluation (see module docstring).

    An HF folder's own code runs only with `trust_remote_code` (`polycom.utils.hf_folders`); `safe`
    loads a run folder only from files that cannot run code (`polycom.train.checkpoint.load_run`).
    """
    folder = existing_folder(path, "model folder")
    from polycom.train.checkpoint import is_run_folder

    device = torch.device(device)
    if is_run_folder(folder):
        return _load_run(folder, device, dtype, step, safe)
    if (folder / "config.json").is_file():
        return _load_hf(folder, device, dtype, trust_remote_code)
    raise UserError(
        f"{folder} is not a model: expected a polycom run folder (config.json + checkpoints/) "
        "or a Hugging Face model folder (config.json + weights + tokenizer)"
    )


def _load_run(folder: Path, device: torch.device, dtype: torch.dtype | None, step: int | None, safe: bool) -> EvalModel:
    from polycom.train.checkpoint import load_run

    model, model_config, tok, _, _ = load_run(folder, device=device, step=step, safe=safe)
    if dtype is not None:
        model = model.to(dtype)
    _check_vocab(folder, tok.vocab_size, model_config.vocab_size)

    @torch.no_grad()
    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(ids.to(device)).logits.float()

    return EvalModel(
        name=str(folder),
        kind="run",
        logits=logits,
        encode=tok.encode,
        decode=tok.decode,
        vocab_size=model_config.vocab_size,
        tokenizer_size=tok.vocab_size,
        max_length=model_config.max_seq_len,
        prefix_token_id=_prefix_token(tok.eos_id, tok.encode),
        eos_token_id=tok.eos_id,
        device=device,
        module=model,
    )


def _load_hf(folder: Path, device: torch.device, dtype: torch.dtype | None, trust_remote_code: bool) -> EvalModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import polycom.hf  # noqa: F401  (Auto registration of model_type "polycom" and the activation names)
    from polycom.hf.persistence import CONVERSION_KEY, load_converted, read_folder_config
    from polycom.hf.quiet import quiet_transformers
    from polycom.utils.hf_folders import hf_load_kwargs, refusing_unsafe_content

    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{folder} is not a model: config.json but no weights ({' / '.join(WEIGHT_FILES[:1])})")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"tokenizer missing from {folder}: expected tokenizer.json / tokenizer_config.json next to the model "
            "(`polycom export` writes them; for another model copy its tokenizer files into the folder)"
        )
    load_kwargs = hf_load_kwargs(trust_remote_code)
    config = read_folder_config(folder, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    with refusing_unsafe_content(folder), quiet_transformers():  # no bars for a local folder; warnings stay
        if getattr(config, CONVERSION_KEY, None):
            model = load_converted(folder, trust_remote_code=trust_remote_code, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(folder), **load_kwargs, **kwargs)
        tok = AutoTokenizer.from_pretrained(str(folder), **load_kwargs)
    model = model.to(device).eval()
    vocab_size = model.get_input_embeddings().weight.shape[0]
    _check_vocab(folder, len(tok), vocab_size)
    max_length = int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048)

    @torch.no_grad()
    def logits(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(device), use_cache=False).logits.float()

    def encode(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    def decode(ids: list[int]) -> str:
        return tok.decode(ids)

    return EvalModel(
        name=str(folder),
        kind="hf",
        logits=logits,
        encode=encode,
        decode=decode,
        vocab_size=vocab_size,
        tokenizer_size=len(tok),
        max_length=max_length,
        prefix_token_id=_prefix_token(tok.eos_token_id, encode),
        eos_token_id=tok.eos_token_id,
        device=device,
        module=model,
    )
