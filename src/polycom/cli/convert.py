"""`polycom convert`: put PolyCom activations into a local Hugging Face model folder.

    polycom convert --model path/to/llama --out path/to/llama-polynorm --activation polynorm --mode replace

``--mode replace`` swaps the activation of every MLP, keeping the weights; ``--mode ungated``
rewrites gated MLPs into plain PolyCom MLPs at the parameter-matched width (fresh weights, for
pretraining from scratch). Stacked MoE experts get one coefficient set per expert block, shared by
its experts (the paper's design), or one per expert with ``--per-expert``. Prints the report (modules changed, parameter counts) as a table and
saves the converted model (safetensors) and the tokenizer files, if any, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polycom.utils.hf_folders import TRUST_REMOTE_CODE_HELP


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
    parser.add_argument("--report", default=None, help="also write the report as JSON to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder an earlier polycom convert/export wrote")
    parser.add_argument("--trust-remote-code", action="store_true", help=TRUST_REMOTE_CODE_HELP)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from polycom.errors import UserError
    from polycom.hf.convert import convert
    from polycom.hf.persistence import load_model_folder, save_converted
    from polycom.utils.owned_outputs import check_overwritable

    out = Path(args.out).expanduser()
    check_overwritable(out, overwrite=args.overwrite)  # before the (slow) load
    model, tokenizer = load_model_folder(args.model, trust_remote_code=args.trust_remote_code)
    report = convert(model, args.activation, args.mode, order=args.order, per_expert=args.per_expert)
    save_converted(model, tokenizer, out, overwrite=args.overwrite)
    Console().print(report.to_markdown())
    if args.report:
        path = Path(args.report)
        if path.is_dir():
            raise UserError(f"--report {path} is a folder; give a file name")
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"saved to {out}")
    return 0
