"""Tokens/s and peak memory of torchtitan training runs, SwiGLU vs PolyCom side by side (a GPU benchmark).

    python -m polycom.integrations.torchtitan.bench --out benchmarks/results/torchtitan_steps.jsonl \\
        [--configs polycom_debug_swiglu polycom_debug_polynorm] [--steps 20] [--rounds 1] [--commit SHA]

Each run is torchtitan's own trainer (``torchrun --nproc_per_node 1 -m torchtitan.train --module
polycom.integrations.torchtitan --config NAME``) with bf16 parameters and ``--compile.enable``, in a
scratch folder that holds the assets the debug configs read from a torchtitan checkout
(``tests/assets/c4_test``: polycom's embedded Shakespeare as JSON lines; ``tests/assets/tokenizer``: a
2048-token byte-level BPE trained on it), so it needs neither network nor a torchtitan checkout. The
configs alternate within each round. From torchtitan's per-step log lines it keeps the median tokens/s
per device and the peak reserved memory, after `WARMUP_STEPS` steps (compilation), and appends one row
per config and round with the card, versions, commit and date (`polycom.bench.rows`), and whether torchtitan
captured the step in a CUDA graph (its default; the registry's MoE configs turn it off). A config that fails
under capture is measured again without it, its error kept in the row and its log beside the rows, and the
round's captured configs are measured without capture too, so every pair compares like with like
(`plan_round`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP_STEPS = 5
STEP_LINE = re.compile(r"step:\s*(\d+).*?memory:\s*([\d.]+)GiB.*?tps:\s*([\d,]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CSV_FIELDS = (
    "date", "card", "git_commit", "config", "round", "steps", "cuda_graphs", "tokens_per_s", "peak_reserved_gib",
    "capture_error", "torch",
)  # fmt: skip


def write_debug_assets(root: Path, vocab_size: int = 2048, documents: int = 2000) -> None:
    """``root/tests/assets/c4_test/data.json`` and ``root/tests/assets/tokenizer/tokenizer.json`` (+ config)."""
    from polycom.data.sources import embedded_corpus_text
    from polycom.data.tokenizers import train_bpe

    paragraphs = [p.strip() for p in embedded_corpus_text().split("\n\n") if p.strip()][:documents]
    data = root / "tests" / "assets" / "c4_test"
    data.mkdir(parents=True, exist_ok=True)
    with (data / "data.json").open("w", encoding="utf-8") as f:
        for p in paragraphs:
            f.write(json.dumps({"text": p}) + "\n")
    tok_dir = root / "tests" / "assets" / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(paragraphs, vocab_size=vocab_size)
    tok._tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def parse_steps(log: str) -> list[tuple[int, float, float]]:
    """(step, peak reserved GiB, tokens/s) of each torchtitan step line in `log`."""
    rows = []
    for line in ANSI.sub("", log).splitlines():
        match = STEP_LINE.search(line)
        if match:
            rows.append((int(match[1]), float(match[2]), float(match[3].replace(",", ""))))
    return rows


def summarise(steps: list[tuple[int, float, float]]) -> dict[str, float]:
    """Median tokens/s after the warm-up steps and the largest peak reserved memory."""
    timed = [s for s in steps if s[0] > WARMUP_STEPS]
    if not timed:
        raise RuntimeError(f"no step after the {WARMUP_STEPS} warm-up steps in the log")
    return {"tokens_per_s": statistics.median(s[2] for s in timed), "peak_reserved_gib": max(s[1] for s in steps)}


def cuda_graphs_on(name: str) -> bool:
    """Whether torchtitan captures registry config `name`'s training step in a CUDA graph (dense: yes, its
    default; MoE: no, `recipes.trainer_config`)."""
    from polycom.integrations.torchtitan.recipes import registry_trainer_config

    return not registry_trainer_config(name).training.disable_cuda_graphs


def run_config(name: str, workdir: Path, steps: int, timeout_s: float, *, cuda_graphs: bool = True) -> str:
    """One torchtitan training run of registry config `name` in `workdir`; its log (stdout + stderr).
    cuda_graphs=False adds ``--training.disable_cuda_graphs`` (otherwise the config's own setting holds)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "torchtitan.train", "--module", "polycom.integrations.torchtitan", "--config", name,
        "--training.steps", str(steps), "--training.mixed_precision_param", "bfloat16",
        "--compile.enable", "--metrics.log_freq", "1", "--checkpoint.interval", str(10 * steps),
        *(() if cuda_graphs else ("--training.disable_cuda_graphs",)),
    ]  # fmt: skip
    # The run's working folder is `workdir`: relative PYTHONPATH entries (gpu_session.sh's src/) must stay valid.
    paths = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout_s)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: torchtitan exited {proc.returncode}:\n{log[-4000:]}")
    return log


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polycom.integrations.torchtitan.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", nargs="+", default=["polycom_debug_swiglu", "polycom_debug_polynorm"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per run")
    parser.add_argument("--out", required=True, help="rows file (.jsonl; a .csv is written beside it)")
    parser.add_argument("--commit", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")

    import torch

    from polycom.bench.rows import append_rows, provenance_fields

    if not torch.cuda.is_available():
        print("error: this benchmark trains with torchtitan, whose attention has no CPU backward: it needs a GPU")
        return 2
    logs = Path(args.out).parent
    with tempfile.TemporaryDirectory(prefix="polycom-titan-") as tmp:
        workdir = Path(tmp)
        write_debug_assets(workdir)

        def one_run(name: str, graphs: bool) -> str:
            return run_config(name, workdir, args.steps, args.timeout, cuda_graphs=graphs)

        for round_ in range(args.rounds):
            rows = []
            for run in plan_round(args.configs, one_run):
                tag = "" if run["cuda_graphs"] or not cuda_graphs_on(run["config"]) else "-no-graphs"
                (logs / f"torchtitan-{run['config']}-r{round_}{tag}.log").write_text(run.pop("log"))
                if "failed_log" in run:
                    (logs / f"torchtitan-{run['config']}-r{round_}-capture-failed.log").write_text(
                        run.pop("failed_log")
                    )
                rows.append(provenance_fields("cuda", args.commit, "torchtitan") | {
                    "bench": "torchtitan-steps", "round": round_, "steps": args.steps, "warmup_steps": WARMUP_STEPS,
                    "compile": True, "param_dtype": "bfloat16", **run,
                })  # fmt: skip
                graphs = "graphs" if run["cuda_graphs"] else "no graphs"
                print(f"{run['config']:32s} {graphs:9s} {run['tokens_per_s']:12,.0f} tokens/s  "
                      f"{run['peak_reserved_gib']:6.2f} GiB")  # fmt: skip
            append_rows(args.out, rows, CSV_FIELDS)
    return 0


def plan_round(configs: list[str], run) -> list[dict]:
    """Each config once with its own CUDA graph setting (`run(name, cuda_graphs) -> log`). A config that fails
    under capture runs again with capture off (its failure kept as ``capture_error`` / ``failed_log``), and
    then every other captured config of the round also runs with capture off, so each PolyCom row has a SwiGLU
    row with the same setting. Returns one dict per run: config, cuda_graphs, log, the `summarise` fields."""
    results, failed = [], False
    for name in configs:
        graphs = cuda_graphs_on(name)
        try:
            results.append({"config": name, "cuda_graphs": graphs, "log": run(name, graphs)})
        except RuntimeError as err:
            if not graphs:
                raise
            failed = True
            line = next((ln for ln in reversed(str(err).splitlines()) if "Error" in ln), str(err).splitlines()[0])
            print(f"warning: {name} failed under CUDA graph capture ({line.strip()}); running it without")
            results.append({"config": name, "cuda_graphs": False, "log": run(name, False),
                            "capture_error": line.strip(), "failed_log": str(err)})  # fmt: skip
    if failed:
        captured = [r["config"] for r in results if r["cuda_graphs"]]
        results += [{"config": name, "cuda_graphs": False, "log": run(name, False)} for name in captured]
    for result in results:
        result |= summarise(parse_steps(result["log"]))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
