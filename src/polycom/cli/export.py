"""`polycom export`: a harness run folder -> a Hugging Face folder, or a DCP checkpoint -> one safetensors file.

    polycom export --run runs/tiny-polynorm --out hf/tiny-polynorm [--step 200] [--overwrite]
    polycom export --checkpoint runs/a/checkpoints/step_00001000 --out model.safetensors

With ``--run`` the folder loads with ``AutoModelForCausalLM.from_pretrained`` /
``AutoTokenizer.from_pretrained`` after ``import polycom.hf``; the export is checked to reproduce the
harness logits before it is moved into place (``--no-verify`` skips that check). With ``--checkpoint``
(the sharded checkpoint folder of a multi-process run, any world size) the model weights are written as
one safetensors file with the plain state-dict names and the model config in its metadata
(``polycom_config``).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Export a run to a Hugging Face folder",
        description="Export a harness run folder (checkpoint + tokenizer) to a Hugging Face model folder, "
        "or a sharded (DCP) checkpoint folder to one safetensors file.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `polycom train` (-> a Hugging Face folder)")
    source.add_argument("--checkpoint", help="DCP checkpoint folder of a multi-process run (-> one .safetensors)")
    parser.add_argument("--out", required=True, help="output folder (--run) or .safetensors file (--checkpoint)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output folder or file an earlier polycom export wrote"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare-logits check")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        return _export_checkpoint(args)
    from polycom.hf.export import export_run

    out = export_run(args.run, args.out, step=args.step, overwrite=args.overwrite, verify=not args.no_verify)
    print(f"exported {args.run} -> {out}")
    print(f"load with: import polycom.hf; AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _export_checkpoint(args: argparse.Namespace) -> int:
    from polycom.errors import UserError
    from polycom.train.checkpoint import export_safetensors
    from polycom.utils.owned_outputs import check_overwritable

    if args.step is not None or args.no_verify:
        raise UserError("--step and --no-verify apply to --run; --checkpoint names one checkpoint folder")
    check_overwritable(args.out, overwrite=args.overwrite)
    print(f"wrote {export_safetensors(args.checkpoint, args.out)}")
    return 0
