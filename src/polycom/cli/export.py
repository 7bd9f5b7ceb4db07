"""`polycom export`: a harness run folder -> a Hugging Face folder (PolyComForCausalLM + tokenizer).

    polycom export --run runs/tiny-polynorm --out hf/tiny-polynorm [--step 200] [--overwrite]

The folder loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``
after ``import polycom.hf``; the export is checked to reproduce the harness logits before it is
moved into place (``--no-verify`` skips that check).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Export a run to a Hugging Face folder",
        description="Export a harness run folder (checkpoint + tokenizer) to a Hugging Face model folder.",
    )
    parser.add_argument("--run", required=True, help="run folder written by `polycom train`")
    parser.add_argument("--out", required=True, help="output folder (Hugging Face layout, safetensors)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare-logits check")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from polycom.hf.export import export_run

    out = export_run(args.run, args.out, step=args.step, overwrite=args.overwrite, verify=not args.no_verify)
    print(f"exported {args.run} -> {out}")
    print(f"load with: import polycom.hf; AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0
