"""`evaluate`: one call for tasks + perplexity on one model, returning the report dict."""

from __future__ import annotations

from pathlib import Path

from polycom.errors import UserError
from polycom.eval.loading import EvalModel, load_eval_model
from polycom.eval.report import environment
from polycom.eval.scoring import file_perplexity


def evaluate(
    model: str | Path | EvalModel,
    *,
    tasks: list[str] | None = None,
    text_files: list[str | Path] | None = None,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    include_paths: tuple[str, ...] = (),
    max_length: int | None = None,
    stride: int | None = None,
    step: int | None = None,
    trust_remote_code: bool = False,
    safe: bool = False,
) -> dict:
    """Report dict: model, kind, tasks ({task: metrics}), perplexity (list per file), settings, environment."""
    if not tasks and not text_files:
        raise UserError("nothing to evaluate: give tasks and/or text files")
    if isinstance(model, EvalModel):
        em = model
    else:
        em = load_eval_model(model, device=device, step=step, trust_remote_code=trust_remote_code, safe=safe)
    if tasks:  # resolve names before any long work, so a typo fails fast
        from polycom.eval.runner import resolve_tasks

        resolve_tasks(tasks, include_paths)
    report: dict = {
        "model": em.name,
        "kind": em.kind,
        "vocab_size": em.vocab_size,
        "settings": {
            "tasks": list(tasks or []),
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "max_length": max_length or em.max_length,
            "stride": stride,
        },
        "tasks": {},
        "perplexity": [],
    }
    for path in text_files or []:
        report["perplexity"].append(
            file_perplexity(em, path, max_length=max_length, stride=stride, batch_size=batch_size)
        )
    if tasks:
        from polycom.eval.runner import run_tasks, summarize_lm_eval

        results = run_tasks(
            em, tasks, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, include_paths=include_paths
        )
        report["tasks"] = summarize_lm_eval(results)
        report["lm_eval_versions"] = results.get("versions", {})
    report["environment"] = environment()
    return report
