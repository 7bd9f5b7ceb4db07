"""Paired statistics, convergence speed and validation noise of a multi-seed comparison, against
formulas written here; and one tiny multi-seed comparison end to end (fixed validation set)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from polycom.compare import CompareConfig, run_compare
from polycom.compare.convergence import convergence_table, mean_loss_area, tokens_to_reach
from polycom.compare.statistics import all_pairs, bootstrap_ci, holm_adjust, paired_difference
from polycom.data import embedded_corpus_text
from polycom.errors import UserError


def t_test_p(diffs):
    """Two-sided paired t-test p from the t distribution's CDF (regularised incomplete beta), by hand."""
    from scipy.special import betainc

    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    dof = n - 1
    return float(betainc(dof / 2, 0.5, dof / (dof + t * t)))


def test_paired_difference_matches_the_t_formula():
    a = [2.01, 2.05, 1.98, 2.03, 2.00]
    b = [2.04, 2.06, 2.02, 2.05, 2.01]
    row = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    assert row["diffs"] == pytest.approx(diffs) and row["mean"] == pytest.approx(sum(diffs) / 5)
    assert row["p_value"] == pytest.approx(t_test_p(diffs), rel=1e-9)
    lo, hi = row["ci95"]
    assert min(diffs) <= lo <= row["mean"] <= hi <= max(diffs)
    assert bootstrap_ci(diffs) == bootstrap_ci(diffs)  # seeded: reproducible
    assert paired_difference([1.0], [2.0])["p_value"] is None  # one seed: not testable


def test_holm_adjustment_by_hand():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04, monotone max) -> in input order
    got = holm_adjust([0.04, 0.01, None, 0.02])
    assert got[2] is None
    assert got[0] == pytest.approx(0.04) and got[1] == pytest.approx(0.03) and got[3] == pytest.approx(0.04)
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_all_pairs_tests_every_pair_with_holm():
    rng = np.random.default_rng(0)
    base = rng.normal(2.0, 0.02, size=6)
    values = {
        "a": list(base),
        "b": list(base + 0.05 + rng.normal(0, 0.002, 6)),
        "c": list(base + np.array([0.01, -0.01, 0.01, -0.01, 0.005, -0.005])),
    }
    rows = all_pairs(values)
    assert [(r["a"], r["b"]) for r in rows] == [("a", "b"), ("a", "c"), ("b", "c")]
    p = [r["p_value"] for r in rows]
    assert [r["p_holm"] for r in rows] == pytest.approx(holm_adjust(p))
    ab = rows[0]
    assert ab["significant"] and ab["mean"] < 0  # a is clearly lower than b
    assert not rows[1]["significant"]


def test_tokens_to_reach_and_area_by_hand():
    curve = [(0, 5.0), (100, 3.0), (200, 2.0), (300, 1.5)]
    assert tokens_to_reach(curve, 2.5) == pytest.approx(150.0)  # halfway between 3.0 and 2.0
    assert tokens_to_reach(curve, 3.0) == pytest.approx(100.0)
    assert tokens_to_reach(curve, 1.0) is None
    assert mean_loss_area(curve) == pytest.approx((100 * 4.0 + 100 * 2.5 + 100 * 1.75) / 300)
    table = convergence_table({"base": [curve], "fast": [[(0, 5.0), (100, 2.0), (200, 1.6), (300, 1.2)]]}, "base")
    assert table["arms"]["base"]["speedup"] == [1.0]
    # fast reaches base's final 1.5 between 200 (1.6) and 300 (1.2): 200 + 100 * 0.1 / 0.4 = 225 -> 300 / 225
    assert table["arms"]["fast"]["tokens_to_baseline_final"] == [pytest.approx(225.0)]
    assert table["arms"]["fast"]["speedup"] == [pytest.approx(300 / 225)]


TINY = [
    "--model.d_model=32",
    "--model.n_layers=1",
    "--model.n_heads=2",
    "--model.max_seq_len=32",
    "--train.batch_size=4",
    "--train.threads=1",
    "--train.eval_batches=3",
    "--train.eval_interval=4",
    "--train.eval_seed=0",
    "--train.eval_dense_from=6",
    "--train.eval_dense_interval=1",
    "--train.log_interval=2",
    "--optim.lr=1e-2",
]


@pytest.mark.slow  # trains 6 tiny models: ~20-40 s
def test_multi_seed_comparison_reports_pairs_convergence_and_noise(tmp_path):
    text = tmp_path / "plays.txt"
    text.write_text(embedded_corpus_text()[:60_000])
    cfg = CompareConfig(
        out=str(tmp_path / "out"),
        activations=["swiglu", "polynorm:order=2"],
        seeds=3,
        steps=8,
        data=str(text),
        overrides=TINY,
    )
    results = run_compare(cfg, show_progress=False)
    out = Path(cfg.out)
    assert (out / "runs" / "polynorm-order=2-s2" / "metrics.jsonl").is_file()
    paired = results["paired"]
    finals = {a: results["results"][a]["final_val_loss"]["values"] for a in results["activations"]}
    (row,) = paired["pairs"]
    diffs = [x - y for x, y in zip(finals["swiglu"], finals["polynorm:order=2"])]
    assert row["diffs"] == pytest.approx(diffs) and row["p_value"] == pytest.approx(t_test_p(diffs), rel=1e-9)
    # dense evaluation: steps 4 (interval), 6, 7, 8 (dense from 6)
    steps = [s for s, _ in results["results"]["swiglu"]["curves"][0]["val"]]
    assert steps == [0, 4, 6, 7, 8]
    noise = paired["validation_noise"]
    assert noise["windows"] == 3 * 4
    for arm in results["activations"]:
        assert noise["arms"][arm]["recomputed_final_val_loss"] == pytest.approx(finals[arm], abs=1e-5)
    # the validation set is the same for every seed: seed 2's model on seed 0's windows gives its logged loss
    _check_fixed_validation_set(out, finals["swiglu"][2])
    report = (out / "report.md").read_text()
    for heading in ("Paired differences", "Convergence speed", "Validation noise vs seed noise"):
        assert heading in report


def _check_fixed_validation_set(out: Path, logged: float) -> None:
    from polycom.data.loader import eval_batches
    from polycom.data.shards import TokenShards
    from polycom.train.checkpoint import load_run

    run = load_run(out / "runs" / "swiglu-s2")
    shards = TokenShards(out / "data")
    batches = eval_batches(shards.val, 32, 4, 3, seed=0)
    with torch.no_grad():
        losses = [float(F.cross_entropy(run.model(x).logits.flatten(0, 1), y.flatten())) for x, y in batches]
    assert sum(losses) / len(losses) == pytest.approx(logged, abs=1e-5)


@pytest.mark.slow  # trains one tiny model for 4 steps
def test_held_out_sets_are_evaluated_and_reported(tmp_path):
    from polycom.compare.paired_report import add_paired_analysis, render_paired_analysis
    from polycom.data.prepare import PrepareConfig
    from polycom.data.resolve import resolve_prepared_data
    from polycom.train.config import load_config
    from polycom.train.metrics import read_metrics
    from polycom.train.trainer import train

    text = tmp_path / "plays.txt"
    text.write_text(embedded_corpus_text()[:40_000])
    data = resolve_prepared_data(PrepareConfig(source=str(text), tokenizer="byte"), folder=tmp_path / "data").folder
    other_text = tmp_path / "other.txt"
    other_text.write_text(embedded_corpus_text()[-40_000:])
    other = resolve_prepared_data(PrepareConfig(source=str(other_text), tokenizer="byte"), folder=tmp_path / "o").folder
    overrides = [o for o in TINY if "dense" not in o] + [
        "--train.steps=4",
        f'--data.path="{data}"',
        f'--data.held_out=["same={data}", "other={other}"]',
    ]
    run = tmp_path / "out" / "runs" / "swiglu-s0"
    train(load_config(overrides=overrides), run)
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 4]
    for r in evals:  # "same" is the main validation set (eval_seed 0 = the held-out sets' seed)
        assert r["val_loss_sets"]["same"] == pytest.approx(r["val_loss"], abs=1e-6)
        assert r["val_loss_sets"]["other"] != pytest.approx(r["val_loss"], abs=1e-6)
    results = {"activations": ["swiglu"], "seeds": 1}
    add_paired_analysis(results, tmp_path / "out")
    assert results["held_out"]["other"]["swiglu"] == [evals[-1]["val_loss_sets"]["other"]]
    assert "## Held-out sets" in "\n".join(render_paired_analysis(results))
    with pytest.raises(UserError, match="NAME=FOLDER"):
        load_config(overrides=['--data.held_out=["nameonly"]'])
