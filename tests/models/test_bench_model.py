"""`polycom bench model` on CPU: writes complete rows, prints the table, rejects bad input clearly."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from polycom.bench.model import CSV_FIELDS
from polycom.bench.rows import append_rows
from polycom.cli import main

# eager closed form (no C++ build per test); the compiled default is tested on its own below
TINY = [
    "bench",
    "model",
    "--device",
    "cpu",
    "--preset",
    "tiny",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--no-cpu-compile",
]
FAST = ["--steps", "1", "--warmup", "0", "--model.n_layers=1"]


def test_cpu_run_appends_rows_with_metadata(tmp_path, capsys):
    out = tmp_path / "results" / "bench.jsonl"
    out.parent.mkdir()
    out.write_text('{"old": 1}\n')
    rc = main([*TINY, *FAST, "--activations", "polynorm", "--out", str(out)])
    assert rc == 0
    lines = out.read_text().splitlines()
    assert json.loads(lines[0]) == {"old": 1}  # appended, not overwritten
    rows = [json.loads(line) for line in lines[1:]]
    # baseline first; every activation fused, plus the unfused (eager) SwiGLU reference
    assert [(r["activation"], r["fused_mlp"]) for r in rows] == [
        ("swiglu", True),
        ("polynorm", True),
        ("swiglu", False),
    ]
    for r in rows:
        assert r["card"].startswith("CPU") and r["date"] and r["torch"] == torch.__version__
        assert r["git_commit"] and r["preset"] == "tiny" and r["overrides"] == {"n_layers": 1}
        assert r["step_ms"] > 0 and r["tokens_per_s"] == pytest.approx(2 * 16 / (r["step_ms"] / 1e3))
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # CPU: n/a
        assert r["cpu_compile"] is False
    assert rows[0]["step_vs_swiglu"] == 1.0 and rows[2]["step_vs_swiglu_eager"] == 1.0
    assert rows[1]["params_vs_swiglu"] == pytest.approx(1.0, abs=0.01)
    assert rows[1]["step_vs_swiglu"] == pytest.approx(rows[1]["step_ms"] / rows[0]["step_ms"])
    assert rows[1]["step_vs_swiglu_eager"] == pytest.approx(rows[1]["step_ms"] / rows[2]["step_ms"])
    assert all(r["mlp_ms"] > 0 and r["mlp_tokens"] == 32 and r["saved_mib"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "| polynorm |" in printed and "MFU: n/a (CPU run)" in printed
    with out.with_suffix(".csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == CSV_FIELDS and [r["activation"] for r in table] == ["swiglu", "polynorm", "swiglu"]
    assert json.loads(table[1]["overrides"]) == {"n_layers": 1} and table[1]["step_ms"] == str(rows[1]["step_ms"])


def test_cpu_runs_compile_the_closed_form_by_default_and_record_it(tmp_path, monkeypatch):
    from polycom.ops import cpu_compile

    monkeypatch.setattr(cpu_compile, "_disabled_reason", None)
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: True)
    monkeypatch.setattr(cpu_compile, "BACKEND", "aot_eager")  # Dynamo traces the function whole; no C++ build
    monkeypatch.setattr(cpu_compile, "_variants", [])
    cpu_compile._compiled_version.cache_clear()
    out = tmp_path / "r.jsonl"
    assert main([*TINY[:-1], *FAST, "--activations", "polyrelu", "--mlp-paths", "fused", "--out", str(out)]) == 0
    cpu_compile._compiled_version.cache_clear()
    assert {"poly_relu_forward", "poly_relu_backward", "swiglu_forward"} <= {name for name, _ in cpu_compile._variants}
    assert all(json.loads(line)["cpu_compile"] is True for line in out.read_text().splitlines())
    monkeypatch.setattr(cpu_compile, "_compiler_found", lambda: False)  # no compiler: eager, and recorded so
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert main([*TINY[:-1], *FAST, "--activations", "swiglu", "--out", str(out)]) == 0
    assert json.loads(out.read_text().splitlines()[-1])["cpu_compile"] is False


def test_peak_override_gives_mfu_from_formula(tmp_path, capsys):
    rc = main([*TINY, *FAST, "--activations", "swiglu", "--peak-tflops", "0.5", "--no-save"])
    assert rc == 0
    assert "n/a (CPU run)" not in capsys.readouterr().out
    out = tmp_path / "r.jsonl"
    main([*TINY, *FAST, "--activations", "gelu", "--peak-tflops", "0.5", "--out", str(out), "--commit", "abc1234"])
    for r in map(json.loads, out.read_text().splitlines()):
        assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 0.5e12)
        assert r["git_commit"] == "abc1234"  # --commit: a tree copied without .git (a lent GPU machine)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--activations", "swish9"], "unknown activation 'swish9'"),
        (["--model.n_layerz=1"], "unknown key model.n_layerz; valid keys"),
        (["--model.n_layers"], "must look like --section.key=value"),
        (["--model.moe.top_kk=1"], "unknown key model.moe.top_kk"),
        (["--train.steps=3"], "--model.* overrides only"),
        (["--preset", "huge"], "unknown model preset"),
        (["--steps", "0"], "steps must be >= 1"),
    ],
)
def test_bad_input_exits_2_with_message(extra, message, capsys, tmp_path):
    rc = main([*TINY, *FAST, *extra, "--out", str(tmp_path / "x.jsonl")])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_requested_without_gpu(capsys):
    assert main(["bench", "model", "--device", "cuda", "--no-save"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_append_rows_is_atomic_and_keeps_existing(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}')  # no trailing newline
    append_rows(path, [{"b": 2}])
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl"]  # no temp file left, no CSV without columns
    append_rows(path, [{"b": 3, "c": {"d": 1}, "x": float("inf")}], csv_fields=["b", "c"])
    assert json.loads(path.read_text().splitlines()[-1]) == {"b": 3, "c": {"d": 1}, "x": None}  # strict JSON
    assert path.with_suffix(".csv").read_text() == 'b,c\n3,"{""d"": 1}"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.jsonl"]


def test_moe_preset_with_checkpointing_and_grouped_mm(tmp_path):
    out = tmp_path / "moe.jsonl"
    args = ["bench", "model", "--device", "cpu", "--preset", "moe-tiny", "--batch-size", "2", "--seq-len", "16"]
    args += [*FAST, "--activations", "polynorm", "--model.moe.grouped_mm", "true", "--dtype", "bf16"]
    assert main([*args, "--activation-checkpointing", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["activation"] for r in rows] == ["swiglu", "polynorm", "swiglu"]
    assert all(r["activation_checkpointing"] and r["dtype"] == "bf16" for r in rows)
    assert rows[0]["hidden_size"] == 64 and rows[1]["hidden_size"] == 96  # expert widths, parameter matched
    assert rows[1]["active_params"] < rows[1]["params"]
    assert rows[0]["overrides"] == {"n_layers": 1, "moe": {"grouped_mm": True}}


def test_saved_bytes_of_the_mlp_block_are_exact():
    """MLP block (d 64, 32 tokens, fp32): fused PolyNorm keeps x (d) + h (1.5 x 192) + r + 1 = 4 fp32 stats
    per token (r inverse RMS and the row scale);
    eager SwiGLU keeps x, gate, up, silu(gate) and the product (d + 4 x 192); fused SwiGLU x, gate, up."""
    from polycom.bench.model import BenchSettings, run_benchmark

    settings = BenchSettings(preset="tiny", activations=("polynorm", "polyrelu"), batch_size=2, seq_len=16, steps=1,
                             warmup=0, dtype="fp32", device="cpu", overrides=["--model.n_layers=1"], mlp_d_model=64)  # fmt: skip
    rows = {(r["activation"], r["fused_mlp"]): r for r in run_benchmark(settings)}
    d, h, t, mib = 64, 192, 32, 4 / 2**20
    assert rows[("swiglu", False)]["mlp_saved_mib"] == pytest.approx(t * (d + 4 * h) * mib)
    assert rows[("swiglu", True)]["mlp_saved_mib"] == pytest.approx(t * (d + 2 * h) * mib)
    assert rows[("polynorm", True)]["mlp_saved_mib"] == pytest.approx(t * (d + 3 * h // 2 + 4) * mib)
    assert rows[("polyrelu", True)]["mlp_saved_mib"] == pytest.approx(t * (d + 3 * h // 2) * mib)
    for name in ("polynorm", "polyrelu"):  # the cost-parity targets: <= 0.6x eager SwiGLU, <= fused SwiGLU
        assert rows[(name, True)]["mlp_saved_vs_swiglu_eager"] <= 0.6
        assert rows[(name, True)]["mlp_saved_vs_swiglu"] <= 1.0
