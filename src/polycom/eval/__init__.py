"""Evaluation: lm-evaluation-harness tasks (model ``polycom``), perplexity and bits per byte, reports.

    from polycom.eval import evaluate
    report = evaluate("runs/tiny", tasks=["polycom_tiny_mc"], text_files=["data/val.txt"])

lm-eval is imported only when tasks are run (it takes seconds to import and to index its tasks).
"""

from polycom.eval.evaluate import evaluate
from polycom.eval.loading import EvalModel, load_eval_model
from polycom.eval.report import to_markdown, write_report
from polycom.eval.runner import LOCAL_DEMO_TASK, LOCAL_TASKS_DIR, PAPER_GROUP, PAPER_TASKS
from polycom.eval.scoring import continuation_logprobs, file_perplexity, text_perplexity

__all__ = [
    "LOCAL_DEMO_TASK",
    "LOCAL_TASKS_DIR",
    "PAPER_GROUP",
    "PAPER_TASKS",
    "EvalModel",
    "continuation_logprobs",
    "evaluate",
    "file_perplexity",
    "load_eval_model",
    "text_perplexity",
    "to_markdown",
    "write_report",
]
