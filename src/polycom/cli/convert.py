"""`polycom convert`: put PolyCom activations into a local Hugging Face model folder.

    polycom convert --model path/to/llama --out path/to/llama-polynorm --activation polynorm --mode replace

``--mode replace`` swaps the activation of every MLP, keeping the weights; ``--mode ungated``
rewrites gated MLPs into plain PolyCom MLPs at the parameter-matched width (fresh weights, for
pretraining from scratch). Stacked MoE experts get one coefficient set per expert block, shared by
its experts (the paper's design), or one per expert with ``--per-expert``. Prints the report (modules
changed, parameter counts): the full Markdown table on a terminal wide enough for it, else (a narrow
terminal, a pipe) a compact form of at most 80 columns; ``--report FILE.md`` writes the full table,
``--report FILE.json`` the JSON. Saves the converted model (safetensors) and the tokenizer files, if any,
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polycom.utils.atomic import write_text
from polycom.utils.hf_folders import TRUST_REMOTE_CODE_HELP
from polycom.utils.terminal import compact_width, fits_terminal


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="Swap a model's MLP activation for PolyCom",
        description="Convert the MLPs of a local Hugging Face causal LM folder to PolyCom activations.",
    )
    parser.add_argument("--model", required=True, help="local Hugging Face model folder (config.json + weights)")
    parser.add_argument("--out", required=True, help="output folder for the converted model")
    parser.add_argument("--activation", default="polynorm", help="polynorm or polyrelu (default polynorm)")
    parser.add_argument("--mode", default="replace", choices=["replace", "ungated"], help="conversion mode")
    parser.add_argument("--order", type=int, default=3, help="PolyCom order r (default 3)")
    parser.add_argument(
        "--per-expert",
        action="store_true",
        help="MoE experts: one PolyCom coefficient set per expert (default: one per layer, shared by its experts)",
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="also write the report to FILE: the full Markdown table when FILE ends in .md, else JSON",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output folder an earlier polycom convert/export wrote"
    )
    parser.add_argument("--trust-remote-code", action="store_true", help=TRUST_REMOTE_CODE_HELP)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.errors import UserError
    from polycom.hf.convert import convert
    from polycom.hf.persistence import load_model_folder, save_converted
    from polycom.hf.quiet import quiet_transformers
    from polycom.utils.owned_outputs import check_overwritable

    out = Path(args.out).expanduser()
    check_overwritable(out, overwrite=args.overwrite)  # before the (slow) load
    report_path = Path(args.report).expanduser() if args.report else None
    if report_path is not None and report_path.is_dir():
        raise UserError(f"--report {report_path} is a folder; give a file name")
    # no progress bars; the log level stays: transformers' warnings about the user's model are theirs to see
    with quiet_transformers():
        model, tokenizer = load_model_folder(args.model, trust_remote_code=args.trust_remote_code)
        report = convert(model, args.activation, args.mode, order=args.order, per_expert=args.per_expert)
        save_converted(model, tokenizer, out, overwrite=args.overwrite)
    markdown_file = report_path is not None and report_path.suffix == ".md"
    print(_console_report(report, markdown_file))
    if report_path is not None:
        text = report.to_markdown() if markdown_file else json.dumps(report.to_dict(), indent=2)
        write_text(report_path, text + "\n")
        print(f"report: {report_path}")
    print(f"saved to {out}")
    return 0


def _console_report(report, markdown_file: bool) -> str:
    """The full Markdown table where it fits the terminal; else (narrow terminal, pipe) the compact form."""
    full = report.to_markdown()
    if fits_terminal(full.splitlines()):
        return full
    where = "the --report file has" if markdown_file else "--report FILE.md writes"
    return report.to_compact(compact_width()) + f"\n(compact view; {where} the full table)"
