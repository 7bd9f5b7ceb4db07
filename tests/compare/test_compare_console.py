"""`polycom compare`'s console summary: ± std and p-values for several seeds, whole paths at 80 columns."""

from __future__ import annotations

from pathlib import Path

from polycom.cli.compare import _print_summary


def _stat(values: list[float]) -> dict:
    import statistics

    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def _results(seeds: int) -> dict:
    base, poly = [3.0, 3.2][:seeds], [2.5, 2.6][:seeds]
    entry = lambda finals, diff, p: {  # noqa: E731
        "num_parameters": 1000,
        "initial_val_loss": _stat([5.5] * seeds),
        "final_val_loss": _stat(finals),
        "val_loss_drop_pct": _stat([40.0] * seeds),
        "vs_baseline": {"baseline": "swiglu", "val_loss_diff": diff, "p_value": p},
    }
    return {
        "wall_s": 12.0,
        "seeds": seeds,
        "activations": ["swiglu", "polynorm"],
        "results": {"swiglu": entry(base, 0.0, None), "polynorm": entry(poly, -0.55, 0.0123 if seeds > 1 else None)},
    }


def test_two_seeds_show_std_and_p_value(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _print_summary(_results(2), Path("runs/x"))
    out = capsys.readouterr().out
    assert "3.100 ± 0.141" in out and "2.550 ± 0.071" in out  # stdev([3.0, 3.2]), stdev([2.5, 2.6])
    assert "0.0123" in out and "Welch" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_one_seed_has_no_std_or_p_column(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    _print_summary(_results(1), Path("runs/x"))
    out = capsys.readouterr().out
    assert "±" not in out and "Welch" not in out and "3.000" in out


def test_long_output_paths_are_never_split(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out_dir = Path("runs") / ("a-very-long-comparison-folder-name-" * 3) / "compare-20261129-153000"
    _print_summary(_results(2), out_dir)
    lines = capsys.readouterr().out.splitlines()
    for name in ("report.md", "loss.png", "results.json"):
        assert any(line.endswith(str(out_dir / name)) for line in lines), name
