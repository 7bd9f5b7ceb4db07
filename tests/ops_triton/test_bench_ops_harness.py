"""`polycom bench ops` harness on CPU: clear refusal without CUDA, CPU smoke run, refusal to time a wrong kernel,
the engine importable without the source checkout's benchmarks/ folder.

(Speed numbers need a GPU; here only the harness logic is tested: rows, statistics, traffic model.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polycom.bench import op_cases, timing
from polycom.bench.ops import min_bytes
from polycom.cli import main as polycom_main

REPO = Path(__file__).resolve().parents[2]


def test_engine_imports_and_runs_without_the_benchmarks_folder(tmp_path):
    """An installed wheel has no benchmarks/ folder: the engine must live in the package. A fresh process
    outside the checkout, with only src/ on the path, runs a tiny CPU case and loads nothing from benchmarks/."""
    code = (
        "import sys\n"
        "from polycom.cli import main\n"
        "argv = ['bench', 'ops', '--device', 'cpu', '--quick', '--shapes', '4x32', '--ops', 'polynorm',"
        " '--providers', 'eager', '--modes', 'fwd', '--no-write']\n"
        "assert main(argv) == 0\n"
        f"bench_dir = {str(REPO / 'benchmarks')!r}\n"
        "assert not [p for p in sys.path if p.startswith(bench_dir)], sys.path\n"
        "loaded = [m for m in list(sys.modules.values()) if (getattr(m, '__file__', None) or '').startswith(bench_dir)]\n"
        "assert not loaded, loaded\n"
        "print('bench engine', sys.modules['polycom.bench.ops'].__file__)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "polycom/bench/ops.py" in result.stdout and "4x32 bf16 polynorm eager" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_exits_with_clear_message(capsys, tmp_path):
    code = polycom_main(["bench", "ops", "--quick", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "needs a CUDA GPU" in err and "nothing was measured" in err
    assert not (tmp_path / "ops.jsonl").exists()


def test_bad_arguments_are_user_errors(capsys):
    assert polycom_main(["bench", "ops", "--device", "cpu", "--shapes", "12by5"]) == 2
    assert "TOKENSxHIDDEN" in capsys.readouterr().err
    assert polycom_main(["bench", "ops", "--device", "cpu", "--ops", "softmax"]) == 2
    assert "unknown op softmax" in capsys.readouterr().err


def test_quantiles_and_traffic_model():
    q = timing.quantiles([5.0, 1.0, 2.0, 3.0, 4.0])
    assert q == {"median_ms": 3.0, "p20_ms": 1.8, "p80_ms": 4.2}
    s = 8 * 16 * 2  # bf16 bytes of one (8, 16) tensor
    assert min_bytes("polynorm", "fwd", 8, 16, torch.bfloat16) == 2 * s
    assert min_bytes("polynorm", "bwd", 8, 16, torch.bfloat16) == 3 * s
    assert min_bytes("polynorm_gated", "fwdbwd", 8, 16, torch.bfloat16) == (3 + 5) * s
    assert min_bytes("swiglu", "fwd", 8, 16, torch.bfloat16) == 3 * s


def test_cpu_smoke_run_appends_rows_and_summarizes(tmp_path, capsys):
    argv = ["bench", "ops", "--device", "cpu", "--shapes", "6x40", "--dtypes", "fp32", "bf16"]
    argv += ["--ops", "polynorm_gated", "relu2", "--providers", "polycom", "eager", "ckpt", "--out", str(tmp_path)]
    argv += ["--commit", "0123abcd"]
    assert polycom_main(argv) == 0
    rows = [json.loads(line) for line in (tmp_path / "ops.jsonl").read_text().splitlines()]
    # polynorm_gated x 3 providers + relu2 x eager, x 2 dtypes, x 3 modes
    assert len(rows) == (3 + 1) * 2 * 3
    for r in rows:
        assert r["check"] == "ok", r
        assert r["git_commit"] == "0123abcd"
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        for key in ("card", "torch", "triton", "git_commit", "date", "copy_GBps", "frac_copy", "GBps"):
            assert r[key] not in (None, ""), key
    csv_lines = (tmp_path / "ops.csv").read_text().splitlines()
    assert csv_lines[0].startswith("date,card,") and len(csv_lines) == len(rows) + 1
    capsys.readouterr()
    assert polycom_main(["bench", "ops", "--summarize", str(tmp_path / "ops.jsonl")]) == 0
    summary = capsys.readouterr().out
    assert "| polynorm_gated | polycom |" in summary and "| relu2 | eager |" in summary


def test_a_wrong_kernel_is_checked_and_never_timed(tmp_path, monkeypatch):
    case = op_cases.OP_CASES["polynorm"]
    right = case.polycom
    wrong = dataclasses.replace(case, polycom=lambda ins, w, b: right(ins, w, b) * 1.01)
    monkeypatch.setitem(op_cases.OP_CASES, "polynorm", wrong)
    argv = ["bench", "ops", "--device", "cpu", "--shapes", "4x32", "--dtypes", "fp32", "--ops", "polynorm"]
    argv += ["--providers", "polycom", "--out", str(tmp_path)]
    assert polycom_main(argv) == 1
    rows = [json.loads(line) for line in (tmp_path / "ops.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in rows} == {"fwd", "bwd", "fwdbwd"}
    for r in rows:
        assert r["check"] == "FAILED" and "y err" in r["check_detail"]
        assert "median_ms" not in r and "GBps" not in r


@pytest.mark.slow
def test_static_compile_for_sm90_has_no_spills():
    """Compiles the kernels for sm_90 without a GPU (fresh process without TRITON_INTERPRET) and checks the
    cubin resource usage: no local memory (spills) for the configurations of a narrow and a wide shape."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "polycom", "bench", "ops", "--static", "--shapes", "64x1000", "32x20000"]
    cmd += ["--dtypes", "bf16", "--ops", "polynorm_gated", "polyrelu", "--tiling", "variant=2", "--tiling", "variant=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "registers" in line]
    assert len(lines) == 2 * 2 * 2 * 2  # variants x shapes x ops x (fwd, bwd)
    assert all("local 0 B, stack 0 B" in line for line in lines), result.stdout
    v2 = [line for line in lines if " v2 " in line]
    assert any("split" in line for line in v2) and any("split" not in line for line in v2)
    assert all("pipelined no" not in line and "waves" in line for line in v2), result.stdout
    assert any("looped" in line for line in lines) and any("single" in line for line in lines)
    assert "| kernel | shape |" in result.stdout  # the Markdown table of docs/kernels.md


def test_cpu_quick_selects_tiny_shapes_without_compile():
    """On CPU the kernels run in the Triton interpreter: --quick must not select the GPU shapes (8192x8192
    would look hung) nor torch.compile (an inductor C++ build per case)."""
    from polycom.bench.ops import make_config

    cpu = make_config(quick=True, device="cpu")
    assert cpu.shapes and all(m * n <= 2**15 for m, n in cpu.shapes), cpu.shapes
    assert "compile" not in cpu.providers and {"polycom", "eager"} <= set(cpu.providers)
    gpu = make_config(quick=True, device="cuda")
    assert (8192, 8192) in gpu.shapes and "compile" in gpu.providers
    assert make_config(device="cpu").shapes == cpu.shapes  # tiny on CPU with or without --quick
