"""The lm-evaluation-harness model ``polycom``: harness run folders and Hugging Face folders.

    lm_eval.simple_evaluate(model="polycom", model_args="pretrained=runs/tiny,batch_size=8", tasks=[...])

(after ``import polycom.eval.lm_eval_adapter``, which registers the name). ``pretrained`` is a run
folder written by ``polycom train`` or a Hugging Face folder (``polycom export`` output, a converted
model, any local causal LM); see `polycom.eval.loading` for the checks. Scoring is
`polycom.eval.scoring.continuation_logprobs`; generation is greedy, token by token, up to
``max_gen_toks`` or the first stop string.

This module imports lm-eval (slow, ~1.5 s); import it only when evaluating.
"""

from __future__ import annotations

import warnings

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from polycom.eval.loading import EvalModel, load_eval_model
from polycom.eval.scoring import continuation_logprobs

DEFAULT_BATCH_SIZE = 8


def _batch_size(value) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {value}")
    return size


def _usable_device(device: str | None) -> str:
    # lm-eval's CLI asks for "cuda" by default; on a machine without CUDA use the CPU (as HFLM does)
    if not device:
        return "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {device!r} requested but CUDA is not available; evaluating on the CPU", stacklevel=3)
        return "cpu"
    return str(device)


@register_model("polycom")
class PolyComEvalLM(TemplateLM):
    """lm-eval `TemplateLM` over an `EvalModel` (see module docstring)."""

    def __init__(
        self,
        pretrained: str | EvalModel,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        device: str | None = "cpu",
        dtype: str | None = None,
        step: int | None = None,
        max_length: int | None = None,
        trust_remote_code: bool | str = False,  # lm-eval's --trust_remote_code; a string from model_args
        max_batch_size: int | None = None,  # accepted for lm-eval's CLI, unused (no auto batch sizing)
        **unused,
    ) -> None:
        super().__init__()
        if isinstance(pretrained, EvalModel):
            self.em = pretrained
        else:
            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else None
            self.em = load_eval_model(
                pretrained,
                device=_usable_device(device),
                dtype=torch_dtype,
                step=None if step is None else int(step),
                trust_remote_code=str(trust_remote_code).lower() == "true",
            )
        if max_length is not None:
            self.em.max_length = min(int(max_length), self.em.max_length)
        self.batch_size = _batch_size(batch_size)

    # -- tokens --------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.em.eos_token_id if self.em.eos_token_id is not None else self.em.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        return self.em.prefix_token_id

    @property
    def max_length(self) -> int:
        return self.em.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.em.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.em.decode(tokens)

    # -- scoring -------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = continuation_logprobs(self.em, pairs, batch_size=self.batch_size)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            scores = continuation_logprobs(self.em, windows, batch_size=self.batch_size)
            total = sum(lp for lp, _ in scores)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            out.append(total)
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", 64))
            ids = self.tok_encode(context)[-(self.max_length - 1) :] or [self.prefix_token_id]
            generated: list[int] = []
            text = ""
            for _ in range(max_new):
                window = (ids + generated)[-self.max_length :]
                logits = self.em.logits(torch.tensor([window], dtype=torch.long))[0, -1]
                nxt = int(logits.argmax())
                if self.em.eos_token_id is not None and nxt == self.em.eos_token_id:
                    break
                generated.append(nxt)
                text = self.tok_decode(generated)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
            out.append(text)
        return out


if __name__ == "__main__":
    # lm-eval's own CLI with the "polycom" model registered, e.g.
    #   python -m polycom.eval.lm_eval_adapter run --model polycom --model_args pretrained=runs/tiny \
    #       --tasks polycom_tiny_mc --include_path src/polycom/eval/tasks
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
