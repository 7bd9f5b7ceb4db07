"""Run lm-evaluation-harness tasks on an `EvalModel`; task lookup with suggestions; the paper task group.

Task names are lm-eval's (``arc_easy``, ``hellaswag``, ...) plus the ones under
``polycom/eval/tasks`` (the group ``polycom-paper`` and the local ``polycom_tiny_mc``) and any
``include_path`` folders of YAML tasks. A name lm-eval does not know is refused before anything
runs, with the closest known names as suggestions.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from polycom.errors import UserError
from polycom.eval.loading import EvalModel
from polycom.utils.provenance import git_commit

LOCAL_TASKS_DIR = Path(__file__).with_name("tasks")
PAPER_GROUP = "polycom-paper"
PAPER_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "sciq", "winogrande")
LOCAL_DEMO_TASK = "polycom_tiny_mc"


def task_manager(include_paths: tuple[str, ...] | list[str] = (), *, with_defaults: bool = True):
    """lm-eval TaskManager knowing polycom's tasks, `include_paths` and (with_defaults) lm-eval's built-in tasks.

    Cached per arguments: indexing the ~15k built-in tasks takes 6-20 s on a small CPU.
    """
    for p in include_paths:
        if not Path(p).is_dir():
            raise UserError(f"task include path {p} is not a folder")
    return _task_manager(tuple(str(p) for p in include_paths), with_defaults)


@lru_cache(maxsize=8)
def _task_manager(include_paths: tuple[str, ...], with_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(LOCAL_TASKS_DIR), *include_paths], include_defaults=with_defaults)


def resolve_tasks(names: list[str], include_paths: tuple[str, ...] = ()):
    """(names, TaskManager) for `names`; unknown -> UserError with difflib suggestions.

    Local tasks (polycom's and `include_paths`) resolve without indexing lm-eval's built-in tasks;
    anything else, and the polycom-paper group (whose members are built-in tasks), uses the full index.
    """
    cleaned = [n.strip() for n in names if n and n.strip()]
    if not cleaned:
        raise UserError("no task given; e.g. --tasks polycom_tiny_mc or --tasks polycom-paper")
    local = task_manager(include_paths, with_defaults=False)
    if PAPER_GROUP not in cleaned and all(n in set(local.all_tasks) for n in cleaned):
        return cleaned, local
    full = task_manager(include_paths)
    known = full.all_tasks
    known_set = set(known)
    for name in cleaned:
        if name not in known_set:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise UserError(f"unknown task {name!r} (lm-eval does not know it){hint}")
    return cleaned, full


class _DropCommandLineHints(logging.Filter):
    """Drops lm-eval's advice about its own command-line flags (``--metadata``), which `polycom eval` has not."""

    HINTS = ("Custom kwargs can be passed to `--metadata`",)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(hint in record.getMessage() for hint in self.HINTS)


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval without its noise, for one block: every other warning and error still shows.

    * the ``--metadata`` hint lm-eval logs for tasks with a custom dataset (polycom's local tasks) is dropped;
    * lm-eval records the git commit of the working directory with a bare ``git describe``, whose
      "fatal: not a git repository" lands on the terminal outside a checkout: here it asks quietly instead
      (polycom records its own commit in the report's environment anyway).
    """
    import lm_eval.evaluator as evaluator

    task_logger = logging.getLogger("lm_eval.api.task")
    hints = _DropCommandLineHints()
    task_logger.addFilter(hints)
    lm_eval_git_hash = evaluator.get_git_commit_hash
    evaluator.get_git_commit_hash = lambda: git_commit(os.getcwd())
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = lm_eval_git_hash
        task_logger.removeFilter(hints)


def _offline_message(exc: Exception) -> str | None:
    text = f"{type(exc).__name__}: {exc}"
    markers = (
        "offline",
        "Couldn't reach",
        "ConnectionError",
        "ConnectError",
        "LocalEntryNotFound",
        "hf.co",
        "huggingface.co",
    )
    return text if any(m in text for m in markers) else None


def run_tasks(
    em: EvalModel,
    tasks: list[str],
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    include_paths: tuple[str, ...] = (),
    seed: int = 1234,
) -> dict:
    """Evaluate `em` on `tasks` with lm-eval; returns lm-eval's results dict (``results``, ``groups``, ``n-samples``...)."""
    from lm_eval import simple_evaluate

    from polycom.eval.lm_eval_adapter import PolyComEvalLM

    names, manager = resolve_tasks(tasks, include_paths)
    lm = PolyComEvalLM(em, batch_size=batch_size)
    try:
        with quiet_lm_eval():
            results = simple_evaluate(
                model=lm,
                tasks=names,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=1000,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    except Exception as exc:
        message = _offline_message(exc)
        if message is None:
            raise
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        raise UserError(
            f"a task's dataset could not be loaded ({message[:300]}); the hub tasks ({', '.join(PAPER_TASKS)}) need "
            "their datasets from the Hugging Face hub or its local cache"
            + (" and this run is offline" if offline else "")
            + f"; offline, use local YAML tasks (e.g. {LOCAL_DEMO_TASK}, or --include-path DIR)"
        ) from None
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results


def summarize_lm_eval(results: dict) -> dict:
    """{task: {metric: value, metric_stderr: value, samples: n}} from lm-eval's nested results (groups included)."""
    summary: dict[str, dict] = {}
    n_samples = results.get("n-samples", {})
    for section in ("results", "groups"):
        for task, metrics in (results.get(section) or {}).items():
            row = summary.setdefault(task, {})
            for key, value in metrics.items():
                if key == "alias" or not isinstance(value, (int, float)):
                    continue
                metric, _, filt = key.partition(",")
                row[metric if filt in ("none", "") else f"{metric}[{filt}]"] = float(value)
            if task in n_samples:
                row["samples"] = int(n_samples[task].get("effective", n_samples[task].get("original", 0)))
            if section == "groups":
                row["group"] = True
    return summary
