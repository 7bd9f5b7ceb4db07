"""`polycom analyze`: theory checks and analyses of trained models (docs/analysis.md).

polycom analyze approx                          # empirical approximation rates, CPU, a few minutes
polycom analyze approx --targets all --widths 2 4 8 16 32 64 128 --seeds 3 --jobs 2
polycom analyze represent                       # ReLU/ReLU^2 nets as PolyReLU nets; ReLU size for x^2, x^3
polycom analyze model --run runs/swiglu --run runs/polynorm --out reports/model
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from polycom.errors import UserError
from polycom.train.threads import THREADS_HELP
from polycom.utils.hf_folders import TRUST_REMOTE_CODE_HELP


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _names(values: list[str] | None) -> list[str] | None:
    """Accept both `--x a b` and `--x a,b`."""
    if values is None:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="Theory checks (approximation rates, exact representation) and trained-model analyses",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    parser.set_defaults(handler=lambda args: _no_analysis(parser))

    from polycom.analysis.theory.approx import ApproxConfig
    from polycom.analysis.theory.targets import target_names

    d = ApproxConfig()
    ap = sub.add_parser(
        "approx",
        help="error vs parameter count of fully connected nets per activation (log-log slopes with CIs)",
        description="Fit fully connected nets with each activation to target functions of known smoothness "
        "(Adam then L-BFGS, several seeds) and fit the log-log slope of test L2 / sup error vs parameter count.",
    )
    ap.add_argument(
        "--targets",
        nargs="+",
        default=None,
        help=f"target functions, or 'all' (default: {' '.join(d.targets)}; known: {', '.join(target_names())})",
    )
    ap.add_argument("--activations", nargs="+", default=None, help=f"default: {' '.join(d.activations)}")
    ap.add_argument("--widths", nargs="+", type=int, default=None, help=f"hidden widths (default: {d.widths})")
    ap.add_argument("--depths", nargs="+", type=int, default=None, help=f"hidden layers (default: {d.depths})")
    ap.add_argument("--seeds", type=int, default=d.seeds, help="seeds per size (default: %(default)s)")
    ap.add_argument("--adam-steps", type=int, default=d.adam_steps, help="default: %(default)s")
    ap.add_argument("--adam-lr", type=float, default=d.adam_lr, help="default: %(default)s")
    ap.add_argument("--lbfgs-steps", type=int, default=d.lbfgs_steps, help="default: %(default)s")
    ap.add_argument("--n-train", type=int, default=d.n_train, help="training points (default: %(default)s)")
    ap.add_argument("--n-test", type=int, default=d.n_test, help="test points (default: %(default)s)")
    ap.add_argument("--order", type=int, default=d.order, help="PolyCom order r (default: %(default)s)")
    ap.add_argument("--dtype", choices=("float64", "float32"), default=d.dtype)
    ap.add_argument(
        "--jobs",
        type=_positive_int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: %(default)s)",
    )
    ap.add_argument("--out", default="reports/approx", help="output folder (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true")
    ap.set_defaults(handler=_approx)

    rp = sub.add_parser(
        "represent",
        help="ReLU / ReLU^2 nets as PolyReLU nets (exact), and the ReLU size needed for x^2, x^3 vs eps",
    )
    rp.add_argument("--max-level", type=int, default=14, help="deepest sawtooth level m (default: %(default)s)")
    rp.add_argument("--inputs", type=_positive_int, default=4096, help="random inputs per check (default: %(default)s)")
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--out", default="reports/represent", help="output folder (default: %(default)s)")
    rp.set_defaults(handler=_represent)

    mp = sub.add_parser(
        "model",
        help="effective rank, layer similarity, PolyCom coefficients, activation distributions of trained models",
        epilog=THREADS_HELP,
    )
    mp.add_argument("--run", action="append", required=True, metavar="DIR", help="run folder or HF folder (repeatable)")
    mp.add_argument("--label", action="append", default=None, help="label per --run, in order (default: folder name)")
    mp.add_argument("--data", default=None, help="prepared data folder whose val split is the validation text")
    mp.add_argument(
        "--text", default=None, help="text file used as validation text (encoded with each model's tokenizer)"
    )
    mp.add_argument("--tokens", type=_positive_int, default=8192, help="validation tokens (default: %(default)s)")
    mp.add_argument("--seq-len", type=_positive_int, default=256, help="tokens per sequence (default: %(default)s)")
    mp.add_argument("--device", default="cpu")
    mp.add_argument("--out", default="reports/model", help="output folder (default: %(default)s)")
    mp.add_argument(
        "--safe",
        action="store_true",
        help="load run folders only from files that cannot run code (no sharded checkpoints)",
    )
    mp.add_argument("--trust-remote-code", action="store_true", help=TRUST_REMOTE_CODE_HELP)
    mp.set_defaults(handler=_model)


def _no_analysis(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _print_outputs(paths: dict, seconds: float) -> None:
    print(f"done in {seconds:.1f} s")
    for kind, path in paths.items():
        print(f"  {kind:16s} {path}")


def _approx(args: argparse.Namespace) -> int:
    from polycom.analysis.theory.approx import ApproxConfig, run_approx, write_approx_outputs
    from polycom.analysis.theory.targets import target_names

    d = ApproxConfig()
    targets = _names(args.targets) or d.targets
    if targets == ["all"]:
        targets = target_names()
    cfg = ApproxConfig(
        targets=targets,
        activations=_names(args.activations) or d.activations,
        widths=d.widths if args.widths is None else args.widths,
        depths=d.depths if args.depths is None else args.depths,
        seeds=args.seeds,
        order=args.order,
        adam_steps=args.adam_steps,
        adam_lr=args.adam_lr,
        lbfgs_steps=args.lbfgs_steps,
        n_train=args.n_train,
        n_test=args.n_test,
        dtype=args.dtype,
    )
    start = time.perf_counter()
    print(f"polycom analyze approx: {cfg.num_fits()} fits in {args.jobs} process(es)")
    result = run_approx(cfg, progress=not args.no_progress, jobs=args.jobs)
    paths = write_approx_outputs(result, args.out)
    from polycom.analysis.theory.approx import approx_markdown

    print(approx_markdown(result))
    _print_outputs(paths, time.perf_counter() - start)
    return 0


def _represent(args: argparse.Namespace) -> int:
    from polycom.analysis.theory.represent import represent_markdown, run_represent, write_represent_outputs

    if args.max_level < 2:
        raise UserError(f"--max-level must be >= 2, got {args.max_level}")
    start = time.perf_counter()
    result = run_represent(max_level=args.max_level, n_inputs=args.inputs, seed=args.seed)
    paths = write_represent_outputs(result, args.out)
    print(represent_markdown(result))
    failed = [c for c in result["representation_checks"] if c["max_abs_diff"] > 1e-5 * max(1.0, c["max_abs_output"])]
    _print_outputs(paths, time.perf_counter() - start)
    if failed:
        print(f"polycom analyze represent: {len(failed)} representation check(s) differ beyond float rounding")
        return 1
    return 0


def _model(args: argparse.Namespace) -> int:
    import torch

    from polycom.analysis.trained.model_analysis import ModelAnalysisConfig
    from polycom.analysis.trained.model_report import analyze_runs, model_markdown, write_model_outputs
    from polycom.train.threads import cpu_threads

    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise UserError(f"--device {args.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} asked for, but no CUDA device is available (use --device cpu)")
    for run in args.run:
        if not Path(run).expanduser().exists():
            raise FileNotFoundError(f"--run folder {run} does not exist")
    start = time.perf_counter()
    cfg = ModelAnalysisConfig(tokens=args.tokens, seq_len=args.seq_len)
    with cpu_threads(device=device):
        report = analyze_runs(
            args.run,
            args.label,
            cfg,
            data=args.data,
            text=args.text,
            device=args.device,
            safe=args.safe,
            trust_remote_code=args.trust_remote_code,
        )
    paths = write_model_outputs(report, args.out)
    print(model_markdown(report))
    _print_outputs(paths, time.perf_counter() - start)
    return 0
