"""The torchtitan GPU benchmark's CPU-checkable parts: its assets load with torchtitan's own loaders, its log
parser reads torchtitan's step lines, the session script's command parses, and without a GPU it says so."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from polycom.integrations.torchtitan import bench
from polycom.integrations.torchtitan.recipes import config_names

REPO = Path(__file__).resolve().parents[2]


def test_debug_assets_load_with_torchtitans_tokenizer_and_dataset(tmp_path, monkeypatch):
    from datasets import load_dataset
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    bench.write_debug_assets(tmp_path, documents=200)
    monkeypatch.chdir(tmp_path)  # the debug configs name these folders relative to the working folder
    tok = HuggingFaceTokenizer(tokenizer_path="tests/assets/tokenizer")
    assert tok.get_vocab_size() <= 2048  # fits the debug configs' vocab_size (2048 with all documents)
    ids = tok.encode("To be, or not to be")
    assert ids and max(ids) < 2048 and tok.decode(ids).strip().endswith("not to be")
    data = load_dataset("tests/assets/c4_test", split="train")
    assert len(data) == 200 and all(row["text"] for row in data)


def test_step_lines_are_parsed_and_summarised_after_warmup():
    red, green, reset = "\x1b[31m", "\x1b[32m", "\x1b[39m"
    lines = [
        f"[rank0]: {red}step:  {s}  {green}loss:  7.1  grad_norm:  1.0  memory: {m:5.2f}GiB(1.0%)  tps: {t:,}  "
        f"tflops: 1.0  mfu: 1%{reset}"
        for s, m, t in [(1, 9.5, 100), (5, 2.0, 1_000), (6, 2.5, 10_000), (7, 2.25, 30_000), (8, 2.0, 20_000)]
    ]
    steps = bench.parse_steps("\n".join(["INFO other line", *lines]))
    assert [s[0] for s in steps] == [1, 5, 6, 7, 8]
    summary = bench.summarise(steps)
    assert summary == {"tokens_per_s": 20_000, "peak_reserved_gib": 9.5}  # median of steps 6-8; max memory
    with pytest.raises(RuntimeError, match="no step after"):
        bench.summarise(steps[:2])


@pytest.mark.parametrize(
    "step, configs",
    [
        ("torchtitan", ["polycom_debug_swiglu", "polycom_debug_polynorm"]),
        ("torchtitan-moe", ["polycom_debug_moe_swiglu", "polycom_debug_moe_polynorm"]),
    ],
)
def test_gpu_session_runs_the_torchtitan_steps_with_valid_commands(tmp_path, step, configs):
    env = dict(os.environ, DRY_RUN="1", ONLY=step, OUT=str(tmp_path), COMMIT="abc1234", PYTHON="python3")
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_session.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (command,) = [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]
    assert command[1:3] == ["-m", "polycom.integrations.torchtitan.bench"]
    args = bench.build_parser().parse_args(command[3:])
    assert args.configs == configs and args.steps == 20
    assert set(configs) <= set(config_names())  # each is a registry config torchtitan can find
    assert args.commit == "abc1234" and args.out.startswith(str(tmp_path))


def test_without_a_gpu_the_benchmark_says_what_it_needs(tmp_path, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")  # the GPU session runs it for real
    assert bench.main(["--out", str(tmp_path / "rows.jsonl")]) == 2
    assert "needs a GPU" in capsys.readouterr().out
    assert not (tmp_path / "rows.jsonl").exists()


def test_rows_say_whether_the_step_was_captured_in_a_cuda_graph():
    assert bench.cuda_graphs_on("polycom_debug_polynorm") and bench.cuda_graphs_on("polycom_debug_swiglu")
    assert not bench.cuda_graphs_on("polycom_debug_moe_polynorm")
    assert "cuda_graphs" in bench.CSV_FIELDS


def _fake_log(tps: int) -> str:
    return "\n".join(f"step: {s}  loss: 7.0  memory: 2.00GiB(1%)  tps: {tps:,}" for s in range(1, 9))


def test_a_config_that_fails_under_capture_is_measured_without_and_its_twin_too():
    """A session still measures everything: the failed config runs again without CUDA graphs, keeping the error,
    and the config that was captured runs without too, so the pair compares like with like."""
    calls = []

    def run(name, graphs):
        calls.append((name, graphs))
        if name == "polycom_debug_polynorm" and graphs:
            raise RuntimeError(
                "torchtitan exited 1:\n...\nRuntimeError: operation not permitted when stream is capturing"
            )
        return _fake_log(1000 if graphs else 800)

    runs = bench.plan_round(["polycom_debug_swiglu", "polycom_debug_polynorm"], run)
    assert calls == [
        ("polycom_debug_swiglu", True),
        ("polycom_debug_polynorm", True),
        ("polycom_debug_polynorm", False),
        ("polycom_debug_swiglu", False),
    ]
    assert [(r["config"], r["cuda_graphs"], r["tokens_per_s"]) for r in runs] == [
        ("polycom_debug_swiglu", True, 1000),
        ("polycom_debug_polynorm", False, 800),
        ("polycom_debug_swiglu", False, 800),
    ]
    assert runs[1]["capture_error"] == "RuntimeError: operation not permitted when stream is capturing"
    assert "torchtitan exited 1" in runs[1]["failed_log"]


def test_without_failures_each_config_runs_once_with_its_own_setting():
    calls = []
    runs = bench.plan_round(
        ["polycom_debug_swiglu", "polycom_debug_moe_polynorm"], lambda n, g: calls.append((n, g)) or _fake_log(5)
    )
    assert calls == [("polycom_debug_swiglu", True), ("polycom_debug_moe_polynorm", False)]
    assert all("capture_error" not in r for r in runs)
    with pytest.raises(RuntimeError, match="boom"):  # a failure with capture already off is the run's own
        bench.plan_round(["polycom_debug_moe_polynorm"], lambda n, g: (_ for _ in ()).throw(RuntimeError("boom")))
