"""`polycom eval`: lm-evaluation-harness tasks and perplexity / bits per byte for a run or HF folder.

    polycom eval --model runs/tiny --tasks polycom_tiny_mc --text data/val.txt --out eval/tiny
    polycom eval --model hf/tiny --tasks polycom-paper          # the paper's six tasks (hub datasets)

Writes results.json and results.md into --out (when given) and prints the markdown table.
"""

from __future__ import annotations

import argparse

from polycom.train.threads import THREADS_HELP
from polycom.utils.hf_folders import TRUST_REMOTE_CODE_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="Evaluate a model with lm-evaluation-harness",
        description="Evaluate a polycom run folder or a Hugging Face folder: lm-eval tasks and text perplexity.",
        epilog=THREADS_HELP,
    )
    parser.add_argument("--model", required=True, help="run folder (polycom train) or Hugging Face model folder")
    parser.add_argument(
        "--tasks",
        default=None,
        help="comma-separated lm-eval task names; 'polycom-paper' = arc_easy, arc_challenge, hellaswag, piqa, "
        "sciq, winogrande; 'polycom_tiny_mc' = the shipped offline demo task",
    )
    parser.add_argument("--text", action="append", default=[], help="UTF-8 text file for perplexity (repeatable)")
    parser.add_argument("--out", default=None, help="folder for results.json and results.md")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (default: task default)")
    parser.add_argument("--limit", type=float, default=None, help="at most this many documents per task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run folder (default latest)")
    parser.add_argument("--max-length", type=int, default=None, help="context window for perplexity")
    parser.add_argument("--stride", type=int, default=None, help="tokens scored per perplexity window")
    parser.add_argument(
        "--include-path", action="append", default=[], help="extra folder of lm-eval YAML tasks (repeatable)"
    )
    parser.add_argument(
        "--safe",
        action="store_true",
        help="load run folders only from files that cannot run code (no sharded checkpoints)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help=TRUST_REMOTE_CODE_HELP)
    parser.add_argument(
        "--offline", action="store_true", help="never touch the network (sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from polycom.errors import UserError

    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    tasks = [t for t in (args.tasks or "").split(",") if t.strip()]
    if not tasks and not args.text:
        raise UserError("nothing to evaluate: give --tasks and/or --text")
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)

    from polycom.eval import evaluate, to_markdown, write_report
    from polycom.train.threads import cpu_threads

    with cpu_threads(device=args.device):
        report = _evaluate(args, evaluate, tasks, limit)
    print(to_markdown(report), end="")
    if args.out:
        json_path, md_path = write_report(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 0


def _evaluate(args: argparse.Namespace, evaluate, tasks: list[str], limit):
    return evaluate(
        args.model,
        tasks=tasks,
        text_files=args.text,
        num_fewshot=args.num_fewshot,
        limit=limit,
        batch_size=args.batch_size,
        device=args.device,
        include_paths=tuple(args.include_path),
        max_length=args.max_length,
        stride=args.stride,
        step=args.step,
        trust_remote_code=args.trust_remote_code,
        safe=args.safe,
    )
